"""Redis that stops answering mid-call (the process is frozen: the TCP
connection stays open and nothing comes back — worse than a refusal).

The media path never waits on Redis: frames keep being processed while a
state save hangs; the save fails after the bounded command timeout
(agent/redis_conn.py), logged with the call SID; the call ends normally on
`stop` and its end is published locally. Redis refused outright is
tests/test_two_instances.py; unreachable at start-up, tests/test_redis_refusal.py.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import pytest
from server import running_server

from agent.events import CallEndedEvent
from agent.settings import load_settings
from agent.wiring import build_shared_state
from twiml.messages import Dtmf, Media, encode_inbound

SILENCE = b"\xff" * 160


async def until(check, timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not check():
            await asyncio.sleep(0.01)


def save_failures(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "could not save the dialog state" in r.getMessage()]


@pytest.mark.redis
async def test_a_frozen_redis_mid_call_never_holds_up_the_media_path(own_redis, caplog):
    settings = load_settings({}, env_file=None).with_overrides(redis_url=own_redis.url, redis_prefix="t:")
    store, feed = await build_shared_state(settings)
    try:
        async with running_server(store=store, feed=feed) as server, server.call(lockstep=False) as call:
            ws, sid = call.ws, call.stream_sid
            [session] = server.services.sessions

            async def listen() -> None:  # the agent talks: read it, as Twilio would
                async for _ in ws:
                    pass

            listening = asyncio.create_task(listen())

            async def frames(n: int) -> None:
                for _ in range(n):
                    call.seq += 1
                    call.chunk += 1
                    await ws.send(encode_inbound(Media(call.seq, sid, "inbound", call.chunk, call.now_ms, SILENCE)))
                    call.now_ms += 20

            await frames(100)
            await until(lambda: session.metrics.frames_in == 100)
            own_redis.proc.send_signal(signal.SIGSTOP)  # Redis hangs
            call.seq += 1
            await ws.send(encode_inbound(Dtmf(call.seq, sid, "inbound_track", "1")))  # menu → billing: a save
            await frames(50)
            await until(lambda: session.metrics.frames_in == 150)
            assert session._actions.engine.path[-1] == "billing"
            assert not save_failures(caplog)  # the save is still waiting on Redis; the frames were not
            await until(lambda: save_failures(caplog))  # the bounded timeout
            await frames(50)
            await call.stop()
            await until(lambda: server.of_type(call.call_sid, CallEndedEvent))
            await asyncio.wait_for(listening, 10)  # the server closed the socket
        [ended] = server.of_type(call.call_sid, CallEndedEvent)
        assert ended.reason == "stop"
        failures = save_failures(caplog)
        assert failures and all(r.call_sid == call.call_sid for r in failures)
    finally:
        if own_redis.proc is not None:
            own_redis.proc.send_signal(signal.SIGCONT)
        await feed.aclose()
        await store.aclose()
