"""Graceful shutdown: SIGTERM drains the server instead of dropping calls.

Issue 5: "SIGTERM stops taking new calls (readyz fails), lets calls in
progress finish up to a deadline, flushes the archive queue."

1. The first SIGTERM (or Ctrl-C) starts the drain: `GET /readyz` answers 503
   so the load balancer stops sending work here, and `POST /twilio/voice`
   answers 503 so Twilio takes the number's fallback URL (another instance).
   Streams of calls already in progress (a resume after a failed transfer)
   are still accepted: those are calls in progress, not new ones.
2. Calls in progress go on until they end or CALLSTREAM_DRAIN_S passes. At
   the deadline each call still here is handed over: its dialog state is
   saved and the live call is updated with TwiML that reconnects it to the
   public URL, resuming at the state it was in (on another instance when the
   store is Redis; see README "Shutting down").
3. Then uvicorn shuts down as usual: the lifespan's end closes the services,
   and the embedded archive worker stores everything enqueued before it stops.

A second signal skips the drain (uvicorn's own immediate shutdown).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from types import FrameType

import uvicorn

log = logging.getLogger("callstream.shutdown")

HAND_OVER_GRACE_S = 5.0  # for Twilio to take the hand-over and stop the streams


class Drain:
    """The server's drain: started once, by a signal (or a test)."""

    def __init__(self, deadline_s: float) -> None:
        self.deadline_s = deadline_s
        self.started = False

    async def run(
        self,
        calls: Callable[[], Collection[object]],
        hand_over: Callable[[], Awaitable[int]],
        poll_s: float = 0.1,
    ) -> None:
        """Wait for `calls()` to empty, up to the deadline; then `hand_over()`
        what is left and give those streams a few seconds to end."""
        self.started = True
        log.info("draining: not taking new calls; %d in progress, deadline %.0f s", len(calls()), self.deadline_s)
        end = time.monotonic() + self.deadline_s
        while calls() and time.monotonic() < end:
            await asyncio.sleep(poll_s)
        if calls():
            moved = await hand_over()
            log.warning("drain deadline: handed %d call(s) over to reconnect elsewhere", moved)
            end = time.monotonic() + HAND_OVER_GRACE_S
            while calls() and time.monotonic() < end:
                await asyncio.sleep(poll_s)
        log.info("drained: %d call(s) still open are closed by the shutdown", len(calls()))


class GracefulServer(uvicorn.Server):
    """uvicorn.Server whose first SIGTERM/SIGINT drains (`drain_app`) before exiting."""

    def __init__(self, config: uvicorn.Config, drain_app: Callable[[], Awaitable[None]]) -> None:
        super().__init__(config)
        self._drain_app = drain_app
        self._draining = False
        self._drain_task: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining or not self.started:
            super().handle_exit(sig, frame)  # a second signal, or not serving yet: stop now
            return
        # a signal handler interrupts the loop's thread: schedule, don't run, the drain
        self._draining = True
        asyncio.get_running_loop().call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        self._drain_task = asyncio.get_running_loop().create_task(self._drain_then_exit(), name="drain")

    async def _drain_then_exit(self) -> None:
        try:
            await self._drain_app()
        except Exception:
            log.exception("draining failed: shutting down now")
        self.should_exit = True
