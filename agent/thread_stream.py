"""Blocking producers (eSpeak's synth callback, boto3's streaming body) as
async iterators: a worker thread produces, the event loop yields as it comes.

The producer gets `deliver(chunk) -> bool` (False once nobody listens) and a
`stop` event that is set when the consumer leaves early — a barge-in — so it
can abort instead of finishing a prompt nobody will hear. An exception in the
producer is raised to the consumer.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import Executor

Deliver = Callable[[bytes], bool]
Producer = Callable[[Deliver, threading.Event], None]

_DONE = object()


async def stream_from_thread(executor: Executor, produce: Producer) -> AsyncGenerator[bytes, None]:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue()
    stop = threading.Event()

    def put(item: object) -> bool:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening
            stop.set()
            return False
        return not stop.is_set()

    def run() -> None:
        try:
            if not stop.is_set():
                produce(put, stop)
        except BaseException as exc:
            put(exc)
        finally:
            put(_DONE)

    future = loop.run_in_executor(executor, run)
    try:
        while True:
            item = await queue.get()
            if item is _DONE:
                break
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, bytes)
            yield item
        await future
    finally:
        stop.set()  # the consumer left early (barge-in): the producer stops
