"""CallSession: one Twilio Media Stream, from `start` to `stop`.

Theory of operation
-------------------
The socket reader is the only coroutine that touches the call's cores. Each
inbound message is parsed once by the sans-I/O `StreamConnection`; a media
frame then runs the synchronous per-frame path — mu-law decode, VAD, turn
detector, STT `feed`, barge-in check, outbound pacing, dialog deadline — with
no task, queue hop or lock. Slow work (synthesis, recognition, REST, store)
runs beside it in tasks the session owns; their results come back as
callbacks on the loop, and whatever they queue for Twilio goes out with the
next inbound frame (Twilio sends one every 20 ms).

The session clock is the media timeline: `now_ms` is the end of the latest
inbound frame by its Media Streams timestamp, so the same audio yields the
same decisions at any replay speed. Replay "lockstep" (a custom parameter
set by `callstream replay --speed max`, see agent/lockstep.py) makes that
exact by settling all work before answering each sync message.

The agent's voice is an `AgentVoice` chosen by CALLSTREAM_SPEECH: `Speaker`
streams our synthesis over this (bidirectional) stream; `TwimlSpeaker` has
Twilio render `<Say>` while this (one-way) stream only listens, and Twilio's
callbacks about it reach the session through `answer_twilio`.

Handing the call on (transfer, conference, voicemail, hang-up) is a REST
update; if Twilio refuses it for good, agent/handoff.py keeps it for the
webhook that follows the stream and the session closes the stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from agent import dialog_types as d
from agent.archive_callbacks import recording_callback_url
from agent.call_control import SerialCallControl
from agent.dialog import DialogEngine, Phase
from agent.events import (
    ActionEvent,
    BargeInEvent,
    CallEndedEvent,
    CallStartedEvent,
    CallUpdateFailedEvent,
    FeedEvent,
    LatencyEvent,
    TranscriptFinalEvent,
    TranscriptPartialEvent,
    TransitionEvent,
)
from agent.feed import Feed
from agent.flow import Flow
from agent.handoff import hand_on
from agent.lockstep import LOCKSTEP_PARAMETER, is_sync_message, synced_message
from agent.logs import call_logger
from agent.metrics import (
    BARGEIN_MS,
    CALLS_ACTIVE,
    CALLS_TOTAL,
    RESPONSE_MS,
    STT_FINAL_MS,
    TTS_FIRST_AUDIO_MS,
    CallMetrics,
)
from agent.ports import (
    ArchiveQueue,
    CallControl,
    CallControlError,
    CallRecord,
    CallStore,
    SpeechStartedHint,
    SpeechToText,
    SttEvent,
    SttFailure,
    SttStream,
    TextToSpeech,
    Transcript,
)
from agent.rate_limit import MessageBudget
from agent.speaker import AgentVoice, Interrupted, Speaker
from agent.speaker_twiml import CallbackUrls, TwimlSpeaker
from agent.tasks import TaskSet
from media import mulaw
from media.frames import MULAW_SILENCE
from media.recording import CallRecording
from media.turns import SpeechEnded, SpeechStarted, TurnConfig, TurnDetector
from media.vad import VoiceActivity
from twiml import documents
from twiml.messages import Dtmf, Mark, Media, Start, Stop
from twiml.numbers import mask_number
from twiml.stream import StreamConnection

STATE_TTL_S = 6 * 3600
TWILIO_END_GRACE_S = 1.0  # a stream Twilio says is over may still be delivering its `stop`

log = logging.getLogger("callstream.session")


def _silence(n: int) -> bytes:
    return bytes([MULAW_SILENCE]) * n


class MediaSocket(Protocol):
    """The WebSocket as the session needs it (Starlette or websockets adapt to it)."""

    async def receive(self) -> str | bytes | None:
        """The next message, or None once the peer has gone."""

    async def send(self, text: str) -> None: ...

    async def send_all(self, texts: list[str]) -> None:
        """Several messages in order (one write where the socket can)."""

    async def close(self, code: int = 1000, reason: str = "") -> None: ...


@dataclass(frozen=True)
class SessionDeps:
    flow: Flow
    tts: TextToSpeech
    stt: SpeechToText | None
    call_control: CallControl | None
    store: CallStore
    feed: Feed
    base_url: str  # https://host as Twilio reaches us (action URLs)
    end_silence_ms: int = 700
    vad_aggressiveness: int = 2
    archive: ArchiveQueue | None = None
    stt_fallback: SpeechToText | None = None  # takes over when `stt` fails for good
    tts_fallback: TextToSpeech | None = None  # speaks a prompt `tts` could not
    speech: str = "stream"  # CALLSTREAM_SPEECH: stream | twiml
    max_messages_per_s: int = 0  # CALLSTREAM_MAX_MESSAGES_PER_S (0: no limit)
    start_timeout_s: float = 10.0  # CALLSTREAM_START_TIMEOUT_S


@dataclass
class CallStats:
    bargeins: list[int] = field(default_factory=list)  # latency ms (media timeline)
    response_ms: list[float] = field(default_factory=list)  # STT final → first audio out (wall)


class CallSession:
    def __init__(self, deps: SessionDeps, socket: MediaSocket) -> None:
        self._deps = deps
        self._socket = socket
        self.conn = StreamConnection()
        self.call_sid = "-"
        self.log: logging.LoggerAdapter[logging.Logger] = call_logger("-", "callstream.session")
        self.stats = CallStats()
        self.metrics = CallMetrics()
        self.recording = CallRecording()
        self.stream_sid = ""
        self.account_sid = ""
        self._from = self._to = ""
        self._started_at_ms = int(time.time() * 1000)
        self._events: list[FeedEvent] = []
        self._say_requested: dict[int, float] = {}
        self.now_ms = 0
        self.outcome: str | None = None
        self.end_reason = "socket_closed"
        self._tasks = TaskSet(self.log)
        self._vad = VoiceActivity(aggressiveness=deps.vad_aggressiveness)
        self._turns = TurnDetector(TurnConfig(end_silence_ms=deps.end_silence_ms), voicing=self._vad.periodic)
        self._speaker: AgentVoice | None = None
        self._control: CallControl | None = deps.call_control
        self._handoff: str | None = None  # twiml mode: a hand-on that answers Twilio's callback
        self._reader: asyncio.Task[None] | None = None
        self._reading = False
        self._cut: tuple[int, str] | None = None  # why the reader was cancelled: the close it ends with
        self._end_timer: asyncio.TimerHandle | None = None
        self._start_timer: asyncio.TimerHandle | None = None
        self._budget = (
            MessageBudget(deps.max_messages_per_s, time.monotonic()) if deps.max_messages_per_s > 0 else None
        )
        self._engine: DialogEngine | None = None
        self._stt: SttStream | None = None
        self._phrases: tuple[str, ...] = ()
        self._on_fallback_stt = False
        self._early_turns = 0  # turns the recognizer closed before our detector did
        self._speaking_since_ms = 0  # media time the agent's current speech began
        self._deadline: int | None = None
        self._sensitive = False
        self._call_parameters: dict[str, str] = {}  # From/To/CallSid as the stream started
        self._continuation = False  # a resumed stream of the call (archived in its own sub-folder)
        self._lockstep = False
        self._open_turns: deque[tuple[bool, float]] = deque()  # ended turns awaiting a final: (too short?, when)
        self._turn_text: list[str] = []
        self._final_seen_at: float | None = None
        self._closing = False
        self._close_with: tuple[int, str] | None = None  # the reader closes with this
        self._send_lock = asyncio.Lock()

    # --- the reader ------------------------------------------------------------
    async def run(self) -> None:
        """Serve the stream until `stop`, the socket closes, the call is handed
        on, or Twilio says the call is over (`end_from_twilio`)."""
        self._reader = asyncio.current_task()
        self._start_timer = asyncio.get_running_loop().call_later(
            self._deps.start_timeout_s, self._start_timed_out
        )
        try:
            try:
                self._reading = True
                await self._read_loop()
            except asyncio.CancelledError:
                if self._cut is None:
                    raise
                if self._reader is not None:
                    self._reader.uncancel()
                self._close_with = self._cut
            finally:
                self._reading = False
            if self._close_with is not None:
                await self._close_socket(*self._close_with)
        except Exception:
            self.end_reason = "error"
            self.log.exception("call session failed")
            await self._close_socket(1011, "internal error")
        finally:
            await self._finish()

    async def _read_loop(self) -> None:
        conn = self.conn
        while not self._closing and self._close_with is None:
            raw = await self._socket.receive()
            if raw is None:
                return
            budget = self._budget
            if budget is not None and not budget.take() and self._rate_limited(budget):
                continue
            if self._lockstep and is_sync_message(raw):
                await self._answer_sync(raw)
                continue
            message = conn.receive_text(raw)
            if type(message) is Media:
                self._on_media(message)
            elif message is None:
                self._on_rejected()
            elif isinstance(message, Start):
                await self._on_start(message)
            elif isinstance(message, Dtmf):
                self._on_dtmf(message)
            elif isinstance(message, Mark):
                self._on_mark(message)
            elif isinstance(message, Stop):
                self.end_reason = self.outcome or "stop"
                return
            if conn.has_data_to_send:
                await self._flush()

    async def _flush(self, extra: str | None = None) -> None:
        """Send what the connection queued. The reader and synthesis tasks both
        flush; the lock keeps each batch (media then its mark) in order."""
        async with self._send_lock:
            frames = self.conn.data_to_send()
            if extra is not None:
                frames.append(extra)
            if self._closing:
                return  # we closed the socket: nothing more goes to Twilio
            if frames:
                await self._socket.send_all(frames)
            self.metrics.messages_out += len(frames)

    def end_from_twilio(self, status: str) -> None:
        """Twilio reported the call over (a status callback) while this stream
        is still open. Its `stop` may be on the way: give it a moment, then
        stop reading rather than wait on a socket that may never speak again."""
        if self._reading and not self._closing and self._end_timer is None:
            loop = asyncio.get_running_loop()
            self._end_timer = loop.call_later(TWILIO_END_GRACE_S, self._cut_reader, status)

    def _cut_reader(self, status: str) -> None:
        self._end_timer = None
        if not self._reading or self._closing or self._reader is None:
            return
        self.log.warning("Twilio says the call is %s but its stream is still open: ending it", status)
        self.end_reason = f"status:{status}"
        self._cut = (1000, "call ended")
        self._reader.cancel()

    def _start_timed_out(self) -> None:
        """No usable `start` within CALLSTREAM_START_TIMEOUT_S: Twilio sends
        `connected` and `start` as soon as the socket opens, so this peer is
        not a Twilio stream we can serve. Close with 1008 (policy violation)."""
        self._start_timer = None
        if self.conn.start is not None or not self._reading or self._closing or self._reader is None:
            return
        self.conn.errors["start_timeout"] += 1
        self.log.warning(
            "no start message within %g s (%d messages rejected): closing the socket (1008)",
            self._deps.start_timeout_s, sum(self.conn.errors.values()) - 1,
        )
        self.end_reason = "start_timeout"
        self._cut = (1008, "no start message")
        self._reader.cancel()

    def _rate_limited(self, budget: MessageBudget) -> bool:
        """The message budget ran dry (agent/rate_limit.py): refill it from the
        clock; True if this message is dropped. Dropped messages are counted
        as `rate_limited`; more than a second's worth dropped closes the
        socket with 1008. Lockstep replays are exempt (see `_on_start`)."""
        if budget.take_at(time.monotonic()):
            return False
        errors = self.conn.errors
        errors["rate_limited"] += 1
        dropped = errors["rate_limited"]
        if dropped == 1:
            self.log.warning(
                "more than %d messages/s from Twilio's side: dropping messages over the limit",
                budget.per_s,
            )
        if dropped > budget.per_s:
            self.log.error("%d messages dropped over the rate limit: closing the socket (1008)", dropped)
            self.end_reason = "rate_limited"
            self._close_with = (1008, "message rate limit exceeded")
        return True

    def _on_rejected(self) -> None:
        if self.conn.unusable is not None:
            # Twilio sends one start per stream: without a usable one there is no call
            self.log.error("stream cannot be used (%s): closing", self.conn.unusable)
            self.end_reason = "unsupported_format"
            self._close_with = (1003, "unsupported media format")
            return
        error = self.conn.last_error
        kind = error.kind if error is not None else "unknown"
        count = self.conn.errors[kind]
        # log the first few of a kind, then every 100th: a broken peer must not flood the log
        if count <= 3 or count % 100 == 0:
            self.log.warning("rejected Twilio message (%s, %d so far): %s", kind, count, error)

    # --- start ------------------------------------------------------------------
    async def _on_start(self, start: Start) -> None:
        deps = self._deps
        self.call_sid = start.call_sid
        self.log = call_logger(start.call_sid, "callstream.session")
        self._tasks = TaskSet(self.log)
        params = dict(start.custom_parameters)
        self._lockstep = params.get(LOCKSTEP_PARAMETER) == "1"
        if self._start_timer is not None:
            self._start_timer.cancel()
            self._start_timer = None
        if self._lockstep:
            # a lockstep replay waits for our `synced` answer before it sends
            # more, so our own pace bounds its rate: no message budget
            self._budget = None
        self._speaker = self._make_speaker()
        self.stream_sid, self.account_sid = start.stream_sid, start.account_sid
        self._from, self._to = mask_number(params.get("From", "")), mask_number(params.get("To", ""))
        self._call_parameters = {k: params[k] for k in ("From", "To", "CallSid") if k in params}
        self._started_at_ms = int(time.time() * 1000)
        CALLS_ACTIVE.inc()
        resume = params.get("resume_state") or None
        transfer_status = params.get("transfer_status") or None
        self._continuation = bool(resume or transfer_status)
        snapshot = None
        if resume or transfer_status:
            try:
                snapshot = await deps.store.load(start.call_sid)
            except Exception as exc:  # e.g. Redis away: the call goes on, from the start
                self.log.error("could not load the saved dialog state (%r)", exc)
            if snapshot is None:
                self.log.warning("no saved dialog state to resume: starting the flow over")
        if snapshot is not None:
            self._engine = DialogEngine.restore(deps.flow, start.call_sid, snapshot)
        else:
            self._engine = DialogEngine(deps.flow, start.call_sid)
        if deps.stt is not None:
            try:
                self._stt = await deps.stt.open_stream(start.call_sid, self._on_stt_event)
            except Exception:
                self.log.exception("speech recognition unavailable: the call goes on with DTMF only")
        self.log.info(
            "call started: stream %s from %s to %s%s%s",
            start.stream_sid,
            mask_number(params.get("From", "")),
            mask_number(params.get("To", "")),
            f", resuming at {resume}" if resume else "",
            " (replay lockstep)" if self._lockstep else "",
        )
        self._publish(
            CallStartedEvent,
            stream_sid=start.stream_sid,
            from_=mask_number(params.get("From", "")),
            to=mask_number(params.get("To", "")),
            flow=deps.flow.name,
        )
        if transfer_status and snapshot is not None and self._engine.phase is Phase.TRANSFERRING:
            self.log.info("transfer ended %s: resuming the dialog", transfer_status)
            self._dialog(d.TransferFailed(transfer_status))
        else:
            if transfer_status and snapshot is not None:
                # the saved state is not a transfer (a duplicate dial-result, or
                # the call moved on): re-enter it rather than stay silent
                self.log.warning("transfer result %s but no transfer in progress: resuming", transfer_status)
            self._dialog(d.CallStarted(resume_state=resume))

    def _make_speaker(self) -> AgentVoice:
        deps = self._deps
        if deps.speech == "twiml":
            if self._control is not None:
                self._control = SerialCallControl(self._control)
            return TwimlSpeaker(
                self.call_sid,
                self._control if isinstance(self._control, SerialCallControl) else None,
                CallbackUrls(deps.base_url),
                self._tasks.spawn,
                clock=lambda: self.now_ms,
                on_update_failed=self._on_speech_update_failed,
                log=self.log,
            )
        return Speaker(
            self.conn,
            deps.tts,
            self._tasks.spawn,
            on_audio=self._on_tts_audio,
            recording=self.recording,
            log=self.log,
            fallback=deps.tts_fallback,
        )

    # --- the per-frame path ----------------------------------------------------------
    def _on_media(self, media: Media) -> None:
        now = media.timestamp + 20
        if now > self.now_ms:
            self.now_ms = now
        else:
            now = self.now_ms
        metrics = self.metrics
        metrics.frames_in += 1
        # lateness against the media timeline (CallMetrics): cheap, sampled
        handled = time.monotonic() - media.timestamp / 1000
        if handled < metrics.anchor_s:
            metrics.anchor_s = handled
        if metrics.frames_in % CallMetrics.LATENESS_SAMPLE_EVERY == 0:
            metrics.lateness_s.append(handled - metrics.anchor_s)
        if metrics.frames_in % CallMetrics.FLUSH_EVERY_FRAMES == 0:
            metrics.flush(self.conn.errors)
        # a sensitive state (card or account digits) is not recorded: silence instead
        self.recording.caller(media.timestamp, media.payload if not self._sensitive else _silence(len(media.payload)))
        pcm = mulaw.decode(media.payload)
        turn = self._turns.process(self._vad.is_speech(pcm), now)
        if self._stt is not None:
            self._stt.feed(media.payload, pcm, now)
        if turn is not None:
            self._on_turn(turn, now)
        speaker = self._speaker
        if speaker is not None and speaker.speaking:
            speaker.pump(now)
            if speaker.has_finished:
                self._on_prompts_finished()
        if self._deadline is not None and now >= self._deadline:
            self._dialog(d.Tick())

    def _on_turn(self, turn: SpeechStarted | SpeechEnded, now: int) -> None:
        if isinstance(turn, SpeechStarted):
            speaker = self._speaker
            if speaker is not None and speaker.speaking and speaker.barge_in_allowed:
                self._barge_in(now - turn.onset_ms, now)
            self._dialog(d.CallerSpeechStarted())
        else:
            self._open_turns.append((turn.too_short, time.perf_counter()))
            if self._stt is not None:
                self._stt.end_turn(now)
            else:  # no recognizer (benchmarks): the turn ends with nothing understood
                self._on_turn_final("", 0.0, turn.onset_ms, now)

    def _barge_in(self, latency_ms: int, now: int) -> None:
        assert self._speaker is not None
        interrupted = self._speaker.interrupt(now)
        self.stats.bargeins.append(latency_ms)
        BARGEIN_MS.observe(latency_ms)
        for cut in interrupted:
            self.log.info(
                "barge-in after %d ms of speech: say %d cut, caller heard %d of %d ms",
                latency_ms, cut.say.say_id, cut.heard_ms, cut.total_ms,
            )
            self._publish(BargeInEvent, latency_ms=latency_ms, say_id=cut.say.say_id, heard_ms=cut.heard_ms)
            self._publish_agent_turn(cut)
        for cut in interrupted:
            self._dialog(d.PromptInterrupted(cut.say.say_id, cut.heard_ms))

    # --- DTMF and marks ---------------------------------------------------------------
    def _on_dtmf(self, dtmf: Dtmf) -> None:
        self._on_key(dtmf.digit)

    def _on_key(self, digit: str) -> None:
        speaker = self._speaker
        if speaker is not None and speaker.speaking and speaker.barge_in_allowed:
            self._barge_in(0, self.now_ms)
        self.log.info("DTMF %s", "*" if self._sensitive else digit)
        self._publish(ActionEvent, action="dtmf", detail={"digit": "*" if self._sensitive else digit})
        self._dialog(d.DtmfPressed(digit))

    def _on_mark(self, mark: Mark) -> None:
        if self._speaker is None or not self._speaker.on_mark(mark.name):
            self.log.warning("mark %r is not one we sent", mark.name)
            return
        self._on_prompts_finished()

    def _on_prompts_finished(self) -> None:
        assert self._speaker is not None
        for done in self._speaker.take_finished():
            self._publish(
                TranscriptFinalEvent,
                speaker="agent",
                text=done.say.log_text,
                end_ms=self.now_ms,
                start_ms=max(0, self.now_ms - done.total_ms),
                heard_ms=done.total_ms,
            )
            self._dialog(d.PromptFinished(done.say.say_id))

    async def _on_tts_audio(self, say: d.Say, first: bool) -> None:
        """Synthesis produced audio: send what pacing allows now rather than at
        the next inbound frame (this is the turn's response latency)."""
        if self._closing or self._speaker is None:
            return
        self._speaker.pump(self.now_ms)
        if first:
            requested = self._say_requested.pop(say.say_id, None)
            if requested is not None:
                TTS_FIRST_AUDIO_MS.observe((time.perf_counter() - requested) * 1000)
        if first and self._final_seen_at is not None:
            response_ms = (time.perf_counter() - self._final_seen_at) * 1000
            self.stats.response_ms.append(response_ms)
            RESPONSE_MS.observe(response_ms)
            self._publish(LatencyEvent, name="response", ms=round(response_ms, 2))
            self._final_seen_at = None
        if self.conn.has_data_to_send:
            await self._flush()

    def _publish_agent_turn(self, cut: Interrupted) -> None:
        self._publish(
            TranscriptFinalEvent,
            speaker="agent",
            text=cut.heard_text,
            start_ms=max(0, self.now_ms - cut.heard_ms),
            end_ms=self.now_ms,
            interrupted=True,
            heard_ms=cut.heard_ms,
        )

    # --- speech recognition ------------------------------------------------------------
    def _on_stt_event(self, event: SttEvent) -> None:
        if self._closing:
            return
        if isinstance(event, Transcript):
            if not event.is_final:
                if event.text:
                    self._publish(TranscriptPartialEvent, text=self._redact(event.text))
                return
            if event.text:
                self._turn_text.append(event.text)
            if event.end_of_turn:
                text = " ".join(self._turn_text)
                self._turn_text = []
                self._on_turn_final(text, event.confidence, event.start_ms, event.end_ms)
        elif isinstance(event, SpeechStartedHint):
            # a second opinion on barge-in (Deepgram's SpeechStarted); whichever
            # of it and our VAD comes first cuts the agent off, the other finds
            # nothing playing. A hint about speech that began before the agent
            # started talking is stale.
            speaker = self._speaker
            if (
                event.barge_in
                and speaker is not None
                and speaker.speaking
                and speaker.barge_in_allowed
                and event.at_ms >= self._speaking_since_ms
            ):
                self.log.info("barge-in on the recognizer's speech-started hint")
                self._barge_in(max(0, self.now_ms - event.at_ms), self.now_ms)
        elif isinstance(event, SttFailure):
            self._on_stt_failure(event)

    def _on_stt_failure(self, event: SttFailure) -> None:
        """A retryable failure is the provider's to recover from; for good, the
        call goes on with the fallback recognizer (sphinx) rather than deaf."""
        if event.retryable:
            self.log.warning("speech recognition interrupted (%s): it retries", event.reason)
            return
        fallback = self._deps.stt_fallback
        if fallback is None or self._on_fallback_stt or self._closing:
            self.log.error("speech recognition failed (%s): caller speech is not understood", event.reason)
            return
        self.log.error("speech recognition failed (%s): falling back to %s", event.reason, fallback.name)
        self._on_fallback_stt = True
        self._tasks.spawn(self._switch_stt(fallback), "stt-fallback")

    async def _switch_stt(self, fallback: SpeechToText) -> None:
        failed, self._stt = self._stt, None
        if failed is not None:
            await failed.aclose()
        stream = await fallback.open_stream(self.call_sid, self._on_stt_event)
        if self._closing:
            await stream.aclose()
            return
        stream.set_phrases(self._phrases)
        self._stt = stream

    def _on_turn_final(self, text: str, confidence: float, start_ms: int, end_ms: int) -> None:
        """A caller turn is over: hand it to the dialog. A sound too short to be
        speech that nothing was recognised in is not a turn (no attempt spent).

        The recognizer may close a turn before our detector hears its end
        (Deepgram's endpointing is quicker than end_silence_ms): that turn goes
        to the dialog at once, and the final answering our detector's end_turn
        for the same speech, empty, is not a second turn."""
        if not self._open_turns:
            if not text:
                return  # the provider closed a turn our detector never opened
            if self._turns.in_speech:
                self._early_turns += 1
        too_short = False
        if self._open_turns:
            too_short, asked = self._open_turns.popleft()
            if self._stt is not None:
                STT_FINAL_MS.observe((time.perf_counter() - asked) * 1000)
            if self._early_turns:
                self._early_turns -= 1
                if not text:
                    self.log.debug("turn already closed by the recognizer")
                    return
        if too_short and not text:
            self.log.debug("a sound too short to be speech: ignored")
            self._dialog(d.CallerSpeechAbandoned())
            return
        self.log.info("caller said %r (confidence %.2f)", self._redact(text), confidence)
        self._publish(
            TranscriptFinalEvent,
            speaker="caller",
            text=self._redact(text),
            start_ms=start_ms,
            end_ms=end_ms,
            confidence=round(confidence, 3),
        )
        self._final_seen_at = time.perf_counter()
        self._dialog(d.CallerSpeechFinal(text, confidence))

    def _redact(self, text: str) -> str:
        return "***" if self._sensitive and text else text

    # --- the dialog ----------------------------------------------------------------------
    def _dialog(self, event: d.Event) -> None:
        engine = self._engine
        if engine is None:
            return
        actions = engine.handle(event, self.now_ms)
        self._deadline = engine.next_deadline()
        for action in actions:
            self._carry_out(action)

    def _carry_out(self, action: d.Action) -> None:
        match action:
            case d.Say():
                assert self._speaker is not None
                if not self._speaker.speaking:
                    self._speaking_since_ms = self.now_ms
                self.log.info("say %d in %s: %r", action.say_id, action.state, action.log_text)
                self._say_requested[action.say_id] = time.perf_counter()
                self._publish(ActionEvent, action="say", detail={"say_id": action.say_id, "text": action.log_text})
                self._speaker.say(action)
            case d.Listen():
                self._sensitive = action.sensitive
                self._phrases = action.phrases
                if self._stt is not None:
                    self._stt.set_phrases(action.phrases)
            case d.Transition():
                self.log.info("%s → %s (%s)", action.from_state, action.to_state, action.intent)
                self._publish(TransitionEvent, from_=action.from_state, to=action.to_state, intent=action.intent)
                self._tasks.spawn(self._save_state(), "save-state")
            case d.SlotFilled():
                self.log.info("slot %s = %s", action.name, action.log_value)
                self._publish(ActionEvent, action="slot", detail={"name": action.name, "value": action.log_value})
            case d.Transfer():
                twiml = documents.dial(
                    action.to,
                    timeout_s=action.timeout_s,
                    record=action.record,
                    action_url=f"{self._deps.base_url}/twilio/dial-result",
                    recording_status_callback=self._recording_callback("transfer"),
                )
                self._hand_on(f"transfer:{action.to}", twiml, {"to": mask_number(action.to)})
            case d.Conference():
                twiml = documents.conference(
                    action.room, record=action.record, recording_status_callback=self._recording_callback("conference")
                )
                self._hand_on(f"conference:{action.room}", twiml, {"room": action.room})
            case d.Voicemail():
                # after the recording Twilio requests the action URL: resume the
                # agent at `next`, or hang up (a <Record> without action loops)
                base = self._deps.base_url
                resume = f"{base}/twilio/voice?resume_state={action.next}"
                twiml = documents.voicemail(
                    max_s=action.max_s,
                    action_url=resume if action.next else f"{base}/twilio/hangup",
                    recording_status_callback=self._recording_callback("voicemail"),
                )
                self._hand_on("voicemail", twiml, {"max_s": action.max_s})
            case d.HangUp():
                self._hand_on("hangup", None, {"reason": action.reason})

    def _recording_callback(self, kind: str) -> str | None:
        """Where Twilio reports a recording it made of this call (the archive fetches it)."""
        if self._deps.archive is None:
            return None
        return recording_callback_url(self._deps.base_url, kind, self.call_sid, self._started_at_ms)

    def _hand_on(self, outcome: str, twiml: str | None, detail: dict[str, object]) -> None:
        """Move the live call on (REST update); Twilio then stops this stream."""
        self.outcome = outcome
        kind = outcome.split(":", 1)[0]
        self._publish(ActionEvent, action=kind, detail=detail)
        speaker = self._speaker
        if isinstance(speaker, TwimlSpeaker):
            # the one-way fork outlives TwiML changes: stop it, or we would listen in
            twiml = documents.stream_stopped_first(twiml or documents.hangup())
            if speaker.is_answering:
                self.log.info("%s: answering Twilio's callback with it", kind)
                self._handoff = twiml
                return
        self.log.info("%s: updating the live call", kind)
        self._tasks.spawn(self._update_call(twiml), f"call-update-{kind}")

    async def _update_call(self, twiml: str | None) -> None:
        await self._save_state()  # before Twilio moves the call: its callbacks may resume it
        kind = (self.outcome or "hangup").split(":", 1)[0]
        failed = await hand_on(self._control, self._deps.store, self.call_sid, twiml, kind=kind, log=self.log)
        if failed is None:
            return  # Twilio stops this stream
        error = failed.error
        if error is None:  # call control is off
            await self._close_socket(1000, self.outcome or "done")
            return
        self.end_reason = failed.end_reason
        self._publish(CallUpdateFailedEvent, action=kind, code=error.code, message=str(error), then=failed.then)
        await self._close_socket(1000, "call update failed")

    def _on_speech_update_failed(self, what: str, exc: CallControlError) -> None:
        """twiml mode: a prompt or hold did not reach Twilio. The document stays
        pending and answers Twilio's next callback (the hold loop); a call that
        is over ends the stream."""
        if exc.code == 21220:
            self.log.info("call already ended (Twilio 21220): nothing to say")
            self.end_reason = "caller_gone"
            self._publish(CallUpdateFailedEvent, action=what, code=exc.code, message=str(exc), then="caller_gone")
            self._close_with = (1000, "call ended")  # the reader closes at its next message
            return
        self.log.error("could not update the call for a %s (%s): it waits for Twilio's next callback", what, exc)
        self._publish(CallUpdateFailedEvent, action=what, code=exc.code, message=str(exc), then="next_callback")

    async def answer_twilio(self, say_id: int | None, digits: str) -> str | None:
        """twiml mode: Twilio finished prompt `say_id` (a key may have ended it)
        or, holding, heard `digits`; or just asks what next (both None/"").
        Returns the TwiML the call goes on with; None if this session cannot
        answer (stream mode, or over)."""
        speaker = self._speaker
        if not isinstance(speaker, TwimlSpeaker) or self._closing:
            return None
        with speaker.answering():
            if say_id is not None:
                if speaker.said(say_id, self.now_ms, key_pressed=bool(digits)):
                    self._on_prompts_finished()
                else:
                    self.log.debug("said %d: not the prompt playing (stale)", say_id)
            for digit in digits:
                self._on_key(digit)
        handoff, self._handoff = self._handoff, None
        if handoff is not None:
            await self._save_state()  # before Twilio moves the call: its callbacks may resume it
            return handoff
        return speaker.document()

    async def _save_state(self) -> None:
        if self._engine is None:
            return
        try:
            await self._deps.store.save(self.call_sid, self._engine.snapshot(), STATE_TTL_S)
        except Exception as exc:  # e.g. Redis away: the call goes on; a resume would start over
            self.log.error("could not save the dialog state (%r)", exc)

    # --- replay lockstep -----------------------------------------------------------------
    async def _answer_sync(self, raw: str | bytes) -> None:
        """Settle all work for the audio so far, then answer (agent/lockstep.py)."""
        while True:
            if self._stt is not None:
                await self._stt.flush()
            if not self._tasks.pending:
                break
            await self._tasks.wait_idle()
        if self._speaker is not None and self._speaker.speaking:
            self._speaker.pump(self.now_ms)
            self._on_prompts_finished()
        await self._flush(extra=synced_message(raw))

    # --- the server shuts down (agent/shutdown.py) ---------------------------------------------
    def resume_parameters(self) -> dict[str, str] | None:
        """Stream parameters that reconnect this call at its current dialog
        state; None when there is nothing to resume (not started, moving on, over)."""
        engine = self._engine
        if engine is None or engine.state is None or self._closing or self.outcome is not None:
            return None
        return {**self._call_parameters, "resume_state": engine.state}

    def hand_over(self, twiml: str, state: str) -> None:
        """Drain deadline: move the live call to `twiml` (a stream that resumes
        at `state`, on an instance that is still serving)."""
        self.log.warning("server shutting down: handing the call over to resume at %s", state)
        self._hand_on("moved", twiml, {"resume_state": state})

    # --- the end ------------------------------------------------------------------------------
    async def _close_socket(self, code: int, reason: str) -> None:
        if self._closing:
            return
        self._closing = True
        try:
            await self._socket.close(code, reason)
        except Exception as exc:  # already gone: nothing more to do
            self.log.debug("closing the socket: %r", exc)

    async def _finish(self) -> None:
        self._closing = True
        if self._end_timer is not None:
            self._end_timer.cancel()
        if self._start_timer is not None:
            self._start_timer.cancel()
        if self._speaker is not None:
            self._speaker.close()
        if self._stt is not None:
            try:
                await self._stt.aclose()
            except Exception:
                self.log.exception("closing speech recognition")
        await self._tasks.aclose(grace_s=5.0)
        if self.call_sid != "-":
            path = tuple(self._engine.path) if self._engine is not None else ()
            self.log.info(
                "call ended (%s): path %s, %d frames, %d malformed messages",
                self.end_reason, " → ".join(path), self.metrics.frames_in, sum(self.conn.errors.values()),
            )
            ended = self._event(CallEndedEvent, reason=self.end_reason, path=path, duration_ms=self.now_ms)
            self.metrics.flush(self.conn.errors)
            CALLS_ACTIVE.dec()
            CALLS_TOTAL.labels(self.end_reason.split(":", 1)[0]).inc()
            # queued for the archive before call.ended goes out: whoever acts on
            # call.ended (replay, ops) may stop the server at once
            await self._archive(path)
            self._deps.feed.publish(ended)
        else:
            self.metrics.flush(self.conn.errors)  # start_timeout, rate_limited… before any start
            if self.conn.errors:
                self.log.info(
                    "stream closed before a start (%s): %s",
                    self.end_reason, ", ".join(f"{k} {n}" for k, n in sorted(self.conn.errors.items())),
                )

    async def _archive(self, path: tuple[str, ...]) -> None:
        """Hand the finished call to the archive queue (a worker stores it)."""
        archive = self._deps.archive
        if archive is None:
            return
        engine = self._engine
        slots = {}
        if engine is not None:
            hidden = engine.sensitive_slots
            slots = {k: "***" if k in hidden else v for k, v in engine.slots.items()}
        record = CallRecord(
            call_sid=self.call_sid,
            stream_sid=self.stream_sid,
            account_sid=self.account_sid,
            flow=self._deps.flow.name,
            from_=self._from,
            to=self._to,
            started_at_ms=self._started_at_ms,
            duration_ms=self.now_ms,
            end_reason=self.end_reason,
            outcome=self.outcome,
            path=path,
            slots=slots,
            events=tuple(self._events),
            bargein_ms=tuple(self.stats.bargeins),
            response_ms=tuple(self.stats.response_ms),
            malformed=dict(self.conn.errors),
            recording=self.recording,
            continuation=self._continuation,
        )
        try:
            await archive.enqueue(record)
        except Exception:
            self.log.exception("could not enqueue the call for the archive")

    def _event(self, kind: type[FeedEvent], **fields: object) -> FeedEvent:
        """A feed event of this call, kept for the archive's record."""
        event = kind(call_sid=self.call_sid, t=int(time.time() * 1000), **fields)
        self._events.append(event)
        return event

    def _publish(self, kind: type[FeedEvent], **fields: object) -> None:
        self._deps.feed.publish(self._event(kind, **fields))
