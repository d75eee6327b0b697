"""The socket side of a call session: reading Twilio's messages, sending ours,
and every way the stream's socket ends.

Theory of operation
-------------------
`serve` runs in the session's reader task and is the only code that reads the
socket. Each message is parsed once by the sans-I/O `StreamConnection` and
handed to the session's handler for its kind (`on_media` is the per-frame
path: it runs inline, no task or queue hop). Whatever the connection queued
for Twilio goes out after each message, in one `send_all`; synthesis tasks
flush too, and `flush` holds a lock so each batch (media then its mark) stays
in order.

The reader stops at `stop`, when the peer goes, when a part of the session
sets `CallState.close_with` (checked before each message), or when it is cut:
a timer cancels the reader task and `serve` turns the cancellation into the
close recorded in `_cut`. Two timers cut it:

- no usable `start` within CALLSTREAM_START_TIMEOUT_S → 1008 (Twilio sends
  `connected` and `start` as soon as the socket opens);
- Twilio said the call is over (`end_from_twilio`, a status callback) and the
  stream's `stop` did not follow within TWILIO_END_GRACE_S → 1000.

A message budget (CALLSTREAM_MAX_MESSAGES_PER_S, agent/rate_limit.py) drops
what is over the rate and closes with 1008 past a second's worth; a replay in
lockstep (agent/lockstep.py) is exempt, and its sync messages are answered
here once the session has settled all work for the audio so far.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from agent.lockstep import is_sync_message, synced_message
from agent.metrics import CallMetrics
from agent.rate_limit import MessageBudget
from agent.session_state import CallState, MediaSocket
from twiml.messages import Dtmf, Mark, Media, Start, Stop
from twiml.stream import StreamConnection

TWILIO_END_GRACE_S = 1.0  # a stream Twilio says is over may still be delivering its `stop`


class SessionSocket:
    """Reads, sends and closes one Media Streams socket for a `CallSession`."""

    def __init__(
        self,
        state: CallState,
        socket: MediaSocket,
        conn: StreamConnection,
        metrics: CallMetrics,
        *,
        max_messages_per_s: int,
        start_timeout_s: float,
    ) -> None:
        self._state = state
        self.socket = socket
        self._conn = conn
        self._metrics = metrics
        self._start_timeout_s = start_timeout_s
        self._budget = MessageBudget(max_messages_per_s, time.monotonic()) if max_messages_per_s > 0 else None
        self._send_lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None
        self._reading = False
        self._cut: tuple[int, str] | None = None  # why the reader was cancelled: the close it ends with
        self._end_timer: asyncio.TimerHandle | None = None
        self._start_timer: asyncio.TimerHandle | None = None
        self._lockstep = False

    # --- reading ------------------------------------------------------------------------
    async def serve(
        self,
        on_media: Callable[[Media], None],
        on_start: Callable[[Start], Awaitable[None]],
        on_dtmf: Callable[[Dtmf], None],
        on_mark: Callable[[Mark], None],
        settle: Callable[[], Awaitable[None]],
    ) -> None:
        """Read until `stop`, the peer goes, or the stream is closed or cut;
        then close the socket as decided (a `stop` leaves it to the app)."""
        state = self._state
        self._reader = asyncio.current_task()
        self._start_timer = asyncio.get_running_loop().call_later(self._start_timeout_s, self._start_timed_out)
        try:
            self._reading = True
            await self._read_loop(on_media, on_start, on_dtmf, on_mark, settle)
        except asyncio.CancelledError:
            if self._cut is None:
                raise
            if self._reader is not None:
                self._reader.uncancel()
            state.close_with = self._cut
        finally:
            self._reading = False
        if state.close_with is not None:
            await self.close(*state.close_with)

    async def _read_loop(
        self,
        on_media: Callable[[Media], None],
        on_start: Callable[[Start], Awaitable[None]],
        on_dtmf: Callable[[Dtmf], None],
        on_mark: Callable[[Mark], None],
        settle: Callable[[], Awaitable[None]],
    ) -> None:
        conn = self._conn
        state = self._state
        receive = self.socket.receive
        while not state.closing and state.close_with is None:
            raw = await receive()
            if raw is None:
                return
            budget = self._budget
            if budget is not None and not budget.take() and self._rate_limited(budget):
                continue
            if self._lockstep and is_sync_message(raw):
                await self._answer_sync(raw, settle)
                continue
            message = conn.receive_text(raw)
            if type(message) is Media:
                on_media(message)
            elif message is None:
                self._on_rejected()
            elif isinstance(message, Start):
                await on_start(message)
            elif isinstance(message, Dtmf):
                on_dtmf(message)
            elif isinstance(message, Mark):
                on_mark(message)
            elif isinstance(message, Stop):
                state.end_reason = state.outcome or "stop"
                return
            if conn.has_data_to_send:
                await self.flush()

    def started(self, lockstep: bool) -> None:
        """`start` arrived: no more start timeout. A lockstep replay waits for
        our `synced` answer before it sends more, so our own pace bounds its
        rate: no message budget."""
        if self._start_timer is not None:
            self._start_timer.cancel()
            self._start_timer = None
        self._lockstep = lockstep
        if lockstep:
            self._budget = None

    def _on_rejected(self) -> None:
        conn = self._conn
        log = self._state.log
        if conn.unusable is not None:
            # Twilio sends one start per stream: without a usable one there is no call
            log.error("stream cannot be used (%s): closing", conn.unusable)
            self._state.end_reason = "unsupported_format"
            self._state.close_with = (1003, "unsupported media format")
            return
        error = conn.last_error
        kind = error.kind if error is not None else "unknown"
        count = conn.errors[kind]
        # log the first few of a kind, then every 100th: a broken peer must not flood the log
        if count <= 3 or count % 100 == 0:
            log.warning("rejected Twilio message (%s, %d so far): %s", kind, count, error)

    def _rate_limited(self, budget: MessageBudget) -> bool:
        """The message budget ran dry (agent/rate_limit.py): refill it from the
        clock; True if this message is dropped. Dropped messages are counted
        as `rate_limited`; more than a second's worth dropped closes the
        socket with 1008. Lockstep replays are exempt (see `started`)."""
        if budget.take_at(time.monotonic()):
            return False
        errors = self._conn.errors
        errors["rate_limited"] += 1
        dropped = errors["rate_limited"]
        log = self._state.log
        if dropped == 1:
            log.warning("more than %d messages/s from Twilio's side: dropping messages over the limit", budget.per_s)
        if dropped > budget.per_s:
            log.error("%d messages dropped over the rate limit: closing the socket (1008)", dropped)
            self._state.end_reason = "rate_limited"
            self._state.close_with = (1008, "message rate limit exceeded")
        return True

    async def _answer_sync(self, raw: str | bytes, settle: Callable[[], Awaitable[None]]) -> None:
        """Replay lockstep: settle all work for the audio so far, then answer (agent/lockstep.py)."""
        await settle()
        await self.flush(extra=synced_message(raw))

    # --- sending and closing ------------------------------------------------------------
    async def flush(self, extra: str | None = None) -> None:
        """Send what the connection queued. The reader and synthesis tasks both
        flush; the lock keeps each batch (media then its mark) in order."""
        async with self._send_lock:
            frames = self._conn.data_to_send()
            if extra is not None:
                frames.append(extra)
            if self._state.closing:
                return  # we closed the socket: nothing more goes to Twilio
            if frames:
                await self.socket.send_all(frames)
            self._metrics.messages_out += len(frames)

    async def close(self, code: int, reason: str) -> None:
        state = self._state
        if state.closing:
            return
        state.closing = True
        try:
            await self.socket.close(code, reason)
        except Exception as exc:  # already gone: nothing more to do
            state.log.debug("closing the socket: %r", exc)

    # --- cutting the reader -------------------------------------------------------------
    def end_from_twilio(self, status: str) -> None:
        """Twilio reported the call over (a status callback) while this stream
        is still open. Its `stop` may be on the way: give it a moment, then
        stop reading rather than wait on a socket that may never speak again."""
        if self._reading and not self._state.closing and self._end_timer is None:
            loop = asyncio.get_running_loop()
            self._end_timer = loop.call_later(TWILIO_END_GRACE_S, self._cut_reader, status)

    def _cut_reader(self, status: str) -> None:
        self._end_timer = None
        if not self._reading or self._state.closing or self._reader is None:
            return
        self._state.log.warning("Twilio says the call is %s but its stream is still open: ending it", status)
        self._state.end_reason = f"status:{status}"
        self._cut = (1000, "call ended")
        self._reader.cancel()

    def _start_timed_out(self) -> None:
        """No usable `start` within CALLSTREAM_START_TIMEOUT_S: Twilio sends
        `connected` and `start` as soon as the socket opens, so this peer is
        not a Twilio stream we can serve. Close with 1008 (policy violation)."""
        self._start_timer = None
        if self._conn.start is not None or not self._reading or self._state.closing or self._reader is None:
            return
        self._conn.errors["start_timeout"] += 1
        self._state.log.warning(
            "no start message within %g s (%d messages rejected): closing the socket (1008)",
            self._start_timeout_s, sum(self._conn.errors.values()) - 1,
        )
        self._state.end_reason = "start_timeout"
        self._cut = (1008, "no start message")
        self._reader.cancel()

    def cancel_timers(self) -> None:
        """The call is over: no timer may cut a reader that has gone."""
        if self._end_timer is not None:
            self._end_timer.cancel()
        if self._start_timer is not None:
            self._start_timer.cancel()
