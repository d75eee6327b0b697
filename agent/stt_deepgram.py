"""Deepgram streaming speech to text (`CALLSTREAM_STT=deepgram`), with deepgram-sdk v7.

One Deepgram socket per call, opened in the background when the call starts:
`open_stream` returns at once and `feed` only appends the caller's mu-law
frame to a buffer (sent as received — Deepgram takes `encoding=mulaw`,
`sample_rate=8000`), so the per-frame path never waits on the network. The
stream's one task connects, sends the buffered audio every `send_every_ms`
and the control messages in the order the session made its calls, and turns
what Deepgram says into the port's events:

    Results, interim          → Transcript(is_final=False)
    Results, is_final         → Transcript(is_final=True)   (the session joins a turn's finals)
    Results, from_finalize    → Transcript(is_final=True, end_of_turn=True)  answers end_turn
    Results, speech_final     → …end_of_turn=True when no end_turn is waiting: Deepgram's
                                endpointing closed the turn before our turn detector did
    UtteranceEnd              → an empty end_of_turn final when finals are still unclosed
    SpeechStarted             → SpeechStartedHint(barge_in=True)
    401/403/400, unreachable  → SttFailure(retryable=False)  (the session falls back to sphinx)

Turns. The session's turn detector calls `end_turn` when the caller stops; we
send `Finalize` ("forces the server to immediately process any unprocessed
audio data and return the final transcription results", developers.deepgram.com
/docs/finalize) and answer with the `from_finalize` result. Its answer "is not
guaranteed if there is no significant amount of audio data to process", so a
turn not answered `finalize_timeout_s` after the Finalize went out is answered
empty. When Deepgram's own endpointing already closed the turn and no speech
started since, `end_turn` is answered at once, without a Finalize.

Keyterms. `set_phrases` becomes the stream's keyterms: at connect time in the
`keyterm` query parameters, and mid-stream with a `Configure` message ("Each
keyterms array replaces the whole list", /docs/configure; Nova-3 only). Deepgram
answers each Configure with exactly one ConfigureSuccess or ConfigureFailure,
and allows one pending at a time, so Configures go out one after another. A
model without mid-stream keyterms answers CONFIGURE_KEYTERMS_NOT_SUPPORTED: we
log it once and keep the connect-time keyterms (a bias, not a grammar).

Drops. Audio is kept from the end of the last final result (what Deepgram has
not yet finalized), at most `max_buffer_ms`. When the socket drops, the task
reconnects with exponential backoff and sends that audio again before the live
audio, so no caller words are lost; after `give_up_after_s` without a socket,
or on 401/403, the stream fails for good (SttFailure, retryable=False) and
answers its waiting turns empty.

Lockstep (`flush`): every audio byte fed so far is sent, then an empty
`Configure` (it keeps the keyterms) whose answer comes back after everything
Deepgram had to say about the audio before it — exact with the local fake
server, a bounded best effort (`flush_timeout_s`) with the real service.

Idle: `KeepAlive` after `keepalive_s` without audio (Deepgram closes a socket
after ~10 s without audio or KeepAlive). `aclose` sends `CloseStream`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from agent.ports import SpeechStartedHint, SttEvent, SttFailure, Transcript

log = logging.getLogger(__name__)

BYTES_PER_MS = 8  # 8 kHz mu-law
DEFAULT_MODEL = "nova-3"


class DeepgramAuthError(Exception):
    """Deepgram refused the API key (HTTP 401/403 on the upgrade)."""


class DeepgramRequestError(Exception):
    """Deepgram refused the stream's parameters (HTTP 400: the model, say)."""


@dataclass(frozen=True, slots=True)
class DeepgramOptions:
    model: str = DEFAULT_MODEL
    endpointing_ms: int = 300  # Deepgram's speech_final after this much silence
    utterance_end_ms: int = 1000  # UtteranceEnd after this much silence past the last word
    smart_format: bool = True
    send_every_ms: int = 100  # audio per WebSocket message (Deepgram suggests 20–100 ms)
    keepalive_s: float = 4.0  # "every 3–5 s" when no audio flows
    finalize_timeout_s: float = 1.5
    connect_timeout_s: float = 5.0
    backoff_s: float = 0.1  # first reconnect delay, doubling up to max_backoff_s
    max_backoff_s: float = 2.0
    give_up_after_s: float = 10.0  # without a socket: fail (the session falls back)
    max_buffer_ms: int = 5000  # unfinalized audio kept for sending again after a drop
    flush_timeout_s: float = 5.0
    close_timeout_s: float = 2.0


def environment_for(url: str | None) -> Any:
    """The SDK's DeepgramClientEnvironment for DEEPGRAM_URL (http(s)://host or
    ws(s)://host; None is Deepgram's own)."""
    from deepgram.environment import DeepgramClientEnvironment

    if not url:
        return DeepgramClientEnvironment.PRODUCTION
    url = url.rstrip("/")
    scheme, _, rest = url.partition("://")
    secure = scheme in ("https", "wss")
    http = ("https://" if secure else "http://") + rest
    ws = ("wss://" if secure else "ws://") + rest
    return DeepgramClientEnvironment(base=http, production=ws, agent=ws, agent_rest=http)


def _describe(exc: BaseException) -> str:
    """For logs: the SDK's ApiError says only its status (its headers hold the key)."""
    status = _status_of(exc)
    return f"HTTP {status} on the upgrade" if status is not None else repr(exc)


def _status_of(exc: BaseException) -> int | None:
    from deepgram.core.api_error import ApiError

    if isinstance(exc, ApiError):
        return exc.status_code
    return None


class DeepgramSpeechToText:
    """`SpeechToText` over Deepgram's live API. One client for all calls."""

    name = "deepgram"

    def __init__(self, api_key: str, *, url: str | None = None, options: DeepgramOptions | None = None) -> None:
        from deepgram import AsyncDeepgramClient

        self.options = options or DeepgramOptions()
        self._client = AsyncDeepgramClient(api_key=api_key, environment=environment_for(url))

    def connect(self, keyterms: Sequence[str] = ()) -> Any:
        """The SDK's `listen.v1.connect(...)` context manager with our query."""
        o = self.options
        return self._client.listen.v1.connect(
            model=o.model,
            encoding="mulaw",
            sample_rate=8000,
            channels=1,
            interim_results=True,
            endpointing=o.endpointing_ms,
            utterance_end_ms=o.utterance_end_ms,
            vad_events=True,
            smart_format=o.smart_format,
            keyterm=list(keyterms) if keyterms and self.supports_keyterms else None,
        )

    @property
    def supports_keyterms(self) -> bool:
        return self.options.model.startswith("nova-3")  # "Only compatible with Nova-3"

    async def check(self) -> None:
        """Open and close one stream: raises DeepgramAuthError if the key is refused
        (other failures propagate as they are)."""
        try:
            async with asyncio.timeout(self.options.connect_timeout_s), self.connect() as socket:
                await socket.send_close_stream()
        except Exception as exc:
            if _status_of(exc) in (401, 403):
                raise DeepgramAuthError(f"Deepgram refused the API key ({_status_of(exc)})") from exc
            if _status_of(exc) == 400:
                raise DeepgramRequestError(f"Deepgram refused model {self.options.model!r} or the stream's options (400)") from exc
            raise

    async def open_stream(self, call_sid: str, on_event: Callable[[SttEvent], None]) -> DeepgramStream:
        return DeepgramStream(self, call_sid, on_event)


@dataclass
class _Turn:
    offset: int  # audio bytes fed when end_turn was called
    now_ms: int
    finalize_sent_at: float | None = None  # wall clock, for the timeout


class DeepgramStream:
    """One call's Deepgram socket (see the module docstring)."""

    def __init__(self, owner: DeepgramSpeechToText, call_sid: str, on_event: Callable[[SttEvent], None]) -> None:
        self.call_sid = call_sid
        self._owner = owner
        self._o = owner.options
        self._on_event = on_event
        self._loop = asyncio.get_running_loop()
        # audio: absolute byte offsets since the first frame fed
        self._audio = bytearray()  # bytes from _base to _fed
        self._base = 0
        self._fed = 0
        self._sent = 0  # sent on the current socket (absolute)
        self._keep_from = 0  # Deepgram has finalized everything before this
        self._origin = 0  # absolute offset of the current socket's first byte
        self._first_ms: int | None = None
        self._unsignalled = 0
        self._send_every = max(1, self._o.send_every_ms * BYTES_PER_MS)
        # the session's calls, in order with the audio
        self._phrases: tuple[str, ...] = ()
        self._ops: deque[tuple[str, int, Any]] = deque()  # (kind, offset, arg) not yet sent
        self._turns: deque[_Turn] = deque()  # end_turn calls not yet answered
        self._configure_waiter: asyncio.Future[None] | None = None
        self._keyterm_configure = owner.supports_keyterms
        # what Deepgram told us
        self._provider_closed = False  # speech_final closed a turn; no speech since
        self._unclosed_text = False  # finals emitted since the last end_of_turn
        self._last_conf = 0.0
        # life
        self._wake = asyncio.Event()
        self._closing = False
        self._closed = False
        self._failed = False
        self._last_send = time.monotonic()
        self._task = asyncio.create_task(self._run(), name=f"deepgram-stt {call_sid}")

    # --- the session's side: cheap, synchronous --------------------------------------

    def set_phrases(self, phrases: Sequence[str]) -> None:
        phrases = tuple(phrases)
        if phrases == self._phrases:
            return
        self._phrases = phrases
        if self._keyterm_configure:
            self._push("keyterms", phrases)

    def feed(self, mulaw: bytes, pcm16: bytes, now_ms: int) -> None:
        if self._closing or self._failed:
            return
        if self._first_ms is None:  # now_ms is the end of this frame
            self._first_ms = now_ms - len(mulaw) // BYTES_PER_MS
        self._audio += mulaw
        self._fed += len(mulaw)
        self._unsignalled += len(mulaw)
        if self._unsignalled >= self._send_every:
            self._unsignalled = 0
            self._wake.set()

    def end_turn(self, now_ms: int) -> None:
        if self._failed or self._closing:
            self._emit(Transcript("", True, 0.0, now_ms, now_ms, end_of_turn=True))
            return
        if self._provider_closed and not self._turns:
            # Deepgram's endpointing already closed this turn and heard no speech since
            self._provider_closed = False
            self._emit(Transcript("", True, 0.0, now_ms, now_ms, end_of_turn=True))
            return
        turn = _Turn(self._fed, now_ms)
        self._turns.append(turn)
        self._push("finalize", turn)

    async def flush(self) -> None:
        if self._closed or self._failed or self._task.done():
            return
        barrier: asyncio.Future[None] = self._loop.create_future()
        self._push("barrier", barrier)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._o.flush_timeout_s):
                await asyncio.wait({barrier, self._task}, return_when=asyncio.FIRST_COMPLETED)

    async def aclose(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._wake.set()
        try:
            async with asyncio.timeout(self._o.close_timeout_s):
                await asyncio.shield(self._task)
        except (TimeoutError, asyncio.CancelledError):
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._closed = True
        self._resolve_ops()

    def _push(self, kind: str, arg: Any) -> None:
        self._ops.append((kind, self._fed, arg))
        self._wake.set()

    # --- events -------------------------------------------------------------------------

    def _emit(self, event: SttEvent) -> None:
        if self._closed:
            return
        try:
            self._on_event(event)
        except Exception:
            log.exception("deepgram: on_event callback failed (call %s)", self.call_sid)

    def _media_ms(self, seconds: float) -> int:
        """Deepgram's time on the current socket → the call's media timeline."""
        return (self._first_ms or 0) + (self._origin + round(seconds * 8000)) // BYTES_PER_MS

    def _on_message(self, message: Any) -> None:
        kind = getattr(message, "type", None)
        if kind == "Results":
            self._on_results(message)
        elif kind == "SpeechStarted":
            self._provider_closed = False
            self._emit(SpeechStartedHint(at_ms=self._media_ms(float(message.timestamp)), barge_in=True))
        elif kind == "UtteranceEnd":
            # "use UtteranceEnd to end the turn when speech_final never came" (noise)
            if self._unclosed_text and not self._turns:
                self._close_turn("", self._last_conf, self._media_ms(float(message.last_word_end)))
        elif kind in ("ConfigureSuccess", "ConfigureFailure", "Error"):
            self._on_configure_answer(message)
        elif kind == "Metadata":
            pass

    def _on_results(self, message: Any) -> None:
        alternatives = message.channel.alternatives
        text = alternatives[0].transcript.strip() if alternatives else ""
        confidence = float(alternatives[0].confidence) if alternatives else 0.0
        start_s, duration = float(message.start), float(message.duration)
        start_ms, end_ms = self._media_ms(start_s), self._media_ms(start_s + duration)
        if text:
            self._provider_closed = False
        if not message.is_final:
            if text:
                self._emit(Transcript(text, False, confidence, start_ms, end_ms))
            return
        self._keep_from = max(self._keep_from, self._origin + round((start_s + duration) * 8000))
        if message.from_finalize and self._turns:
            self._turns.popleft()
            self._close_turn(text, confidence, end_ms, start_ms)
            return
        if message.speech_final and not self._turns:
            if text or self._unclosed_text:
                self._close_turn(text, confidence, end_ms, start_ms)
                self._provider_closed = True
            return
        if text:
            self._unclosed_text = True
            self._last_conf = confidence
            self._emit(Transcript(text, True, confidence, start_ms, end_ms))

    def _close_turn(self, text: str, confidence: float, end_ms: int, start_ms: int | None = None) -> None:
        self._unclosed_text = False
        self._emit(Transcript(text, True, confidence, end_ms if start_ms is None else start_ms, end_ms, end_of_turn=True))

    def _on_configure_answer(self, message: Any) -> None:
        if message.type == "ConfigureFailure" and message.code == "CONFIGURE_KEYTERMS_NOT_SUPPORTED":
            if self._keyterm_configure:
                log.warning(
                    "deepgram: model %s cannot change keyterms mid-call; keeping those of the call's start (call %s)",
                    self._o.model, self.call_sid,
                )
            self._keyterm_configure = False
        elif message.type == "Error":
            log.warning("deepgram error (call %s): %s", self.call_sid, getattr(message, "description", message))
        waiter, self._configure_waiter = self._configure_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _expire_turns(self) -> None:
        """Answer turns whose Finalize went unanswered (Deepgram does not always answer)."""
        now = time.monotonic()
        while self._turns and self._turns[0].finalize_sent_at is not None:
            turn = self._turns[0]
            assert turn.finalize_sent_at is not None
            if now - turn.finalize_sent_at < self._o.finalize_timeout_s:
                return
            self._turns.popleft()
            log.info("deepgram: no answer to Finalize in %.1f s: the turn ends empty (call %s)",
                     self._o.finalize_timeout_s, self.call_sid)
            self._close_turn("", 0.0, turn.now_ms)

    def _fail(self, reason: str) -> None:
        """Give up for good: report it and answer what the session waits for."""
        if self._failed:
            return
        self._failed = True
        log.error("deepgram: %s (call %s)", reason, self.call_sid)
        self._emit(SttFailure(reason=f"deepgram: {reason}", retryable=False))
        while self._turns:
            turn = self._turns.popleft()
            self._close_turn("", 0.0, turn.now_ms)
        self._resolve_ops()

    def _resolve_ops(self) -> None:
        for kind, _, arg in self._ops:
            if kind == "barrier" and not arg.done():
                arg.set_result(None)
        self._ops.clear()
        if self._configure_waiter is not None and not self._configure_waiter.done():
            self._configure_waiter.set_result(None)

    # --- the socket ------------------------------------------------------------------------

    async def _run(self) -> None:
        delay = self._o.backoff_s
        down_since: float | None = None
        while not self._closing:
            try:
                async with contextlib.AsyncExitStack() as stack:
                    async with asyncio.timeout(self._o.connect_timeout_s):
                        socket = await stack.enter_async_context(self._owner.connect(self._phrases))
                    delay, down_since = self._o.backoff_s, None
                    await self._serve(socket)
                    return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                status = _status_of(exc)
                if status in (401, 403):
                    self._fail(f"Deepgram refused DEEPGRAM_API_KEY ({status})")
                    return
                if status == 400:  # our parameters: trying again will not help
                    self._fail(f"Deepgram refused the stream's parameters (400; DEEPGRAM_MODEL={self._o.model})")
                    return
                if self._closing:
                    return
                now = time.monotonic()
                if down_since is None:
                    down_since = now
                    log.warning("deepgram: socket lost (%s): reconnecting (call %s)", _describe(exc), self.call_sid)
                    self._emit(SttFailure(reason=f"deepgram: {_describe(exc)}", retryable=True))
                if now - down_since >= self._o.give_up_after_s:
                    self._fail(f"no socket for {self._o.give_up_after_s:.0f} s ({_describe(exc)})")
                    return
            self._on_disconnect()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._o.max_backoff_s)

    def _on_disconnect(self) -> None:
        """Send again, on the next socket, what Deepgram has not finalized."""
        self._sent = max(self._base, self._keep_from)
        waiter, self._configure_waiter = self._configure_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        # Finalizes already sent go out again after the audio before them
        resend = [("finalize", t.offset, t) for t in self._turns if t.finalize_sent_at is not None]
        for turn in self._turns:
            turn.finalize_sent_at = None
        self._ops = deque(sorted([*resend, *self._ops], key=lambda op: op[1]))
        self._trim()

    async def _serve(self, socket: Any) -> None:
        self._origin = self._sent
        receiver = asyncio.create_task(self._receive(socket), name=f"deepgram-recv {self.call_sid}")
        receiver.add_done_callback(lambda _t: self._wake.set())
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._timeout()):
                        await self._wake.wait()
                self._wake.clear()
                if receiver.done():
                    receiver.result()  # raises what broke the socket
                    raise ConnectionError("Deepgram closed the socket")
                self._expire_turns()
                await self._send_due(socket, receiver)
                if self._closing:
                    await self._send_audio(socket, self._fed)
                    await socket.send_close_stream()
                    with contextlib.suppress(TimeoutError, Exception):
                        async with asyncio.timeout(self._o.close_timeout_s):
                            await receiver
                    return
                if time.monotonic() - self._last_send >= self._o.keepalive_s:
                    await socket.send_keep_alive()
                    self._last_send = time.monotonic()
        finally:
            receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await receiver

    def _timeout(self) -> float:
        due = self._o.keepalive_s - (time.monotonic() - self._last_send)
        for turn in self._turns:
            if turn.finalize_sent_at is not None:
                due = min(due, self._o.finalize_timeout_s - (time.monotonic() - turn.finalize_sent_at))
                break
        return max(0.001, due)

    async def _receive(self, socket: Any) -> None:
        async for message in socket:
            if not isinstance(message, bytes | dict):
                self._on_message(message)
            self._wake.set()  # answers may unblock the sender (turns, Configure)

    async def _send_due(self, socket: Any, receiver: asyncio.Task[None]) -> None:
        """Audio and control messages in the session's order."""
        while self._ops:
            kind, offset, arg = self._ops[0]
            await self._send_audio(socket, offset)
            if kind in ("keyterms", "barrier") and self._configure_waiter is not None:
                # one Configure pending at a time: wait for its answer first
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._o.flush_timeout_s):
                        await asyncio.wait({self._configure_waiter, receiver}, return_when=asyncio.FIRST_COMPLETED)
                if receiver.done():
                    return
                self._configure_waiter = None
            self._ops.popleft()
            if kind == "finalize":
                await socket.send_finalize()
                arg.finalize_sent_at = time.monotonic()
            elif kind in ("keyterms", "barrier"):
                self._configure_waiter = self._loop.create_future()
                if kind == "barrier":
                    self._configure_waiter.add_done_callback(_resolver(arg))
                await socket.send_configure(self._configure(arg if kind == "keyterms" else None))
        await self._send_audio(socket, self._fed)

    @staticmethod
    def _configure(keyterms: tuple[str, ...] | None) -> Any:
        from deepgram.listen.v1.types.listen_v1configure import ListenV1Configure

        if keyterms is None:
            return ListenV1Configure(type="Configure")
        return ListenV1Configure(type="Configure", keyterms=list(keyterms))

    async def _send_audio(self, socket: Any, upto: int) -> None:
        while self._sent < upto:
            start = self._sent - self._base
            chunk = bytes(self._audio[start : start + min(upto - self._sent, max(self._send_every, 1600))])
            await socket.send_media(chunk)
            self._sent += len(chunk)
            self._last_send = time.monotonic()
        self._trim()

    def _trim(self) -> None:
        """Forget audio Deepgram has finalized and sent; bound the rest to max_buffer_ms."""
        keep = min(self._sent, self._keep_from)
        floor = self._fed - self._o.max_buffer_ms * BYTES_PER_MS
        if keep < floor:
            if self._sent < floor:
                log.warning("deepgram: more than %d ms of audio unsent: the oldest is dropped (call %s)",
                            self._o.max_buffer_ms, self.call_sid)
                self._sent = floor
            keep = floor
        if keep - self._base >= 16000:  # trim in 2 s steps, not per frame
            del self._audio[: keep - self._base]
            self._base = keep


def _resolver(barrier: asyncio.Future[None]) -> Callable[[asyncio.Future[None]], None]:
    def resolve(_answered: asyncio.Future[None]) -> None:
        if not barrier.done():
            barrier.set_result(None)

    return resolve
