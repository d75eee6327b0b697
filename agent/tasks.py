"""Tasks a call session owns: nothing outlives the call, no failure goes unseen.

Like a TaskGroup, but one failing task does not cancel its siblings (a TTS
error must not end the call): each failure is logged with the call SID where
it happens, and `aclose()` cancels whatever is still running when the call ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any


class TaskSet:
    def __init__(self, log: logging.LoggerAdapter[logging.Logger] | logging.Logger) -> None:
        self._log = log
        self._tasks: set[asyncio.Task[None]] = set()
        self.failures = 0

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.failures += 1
            self._log.error("task %s failed: %r", task.get_name(), exc, exc_info=exc)

    @property
    def pending(self) -> list[asyncio.Task[None]]:
        return [t for t in self._tasks if not t.done()]

    async def wait_idle(self) -> None:
        """Wait until no task is running (tasks may spawn others meanwhile)."""
        while pending := self.pending:
            await asyncio.wait(pending)

    async def aclose(self, grace_s: float = 0.0) -> None:
        """Give running tasks `grace_s` to finish, then cancel the rest."""
        pending = self.pending
        if pending and grace_s > 0:
            await asyncio.wait(pending, timeout=grace_s)
        for task in self.pending:
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
