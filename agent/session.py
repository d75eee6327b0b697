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

import logging
import time
from collections import deque

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
    LatencyEvent,
    TranscriptFinalEvent,
    TranscriptPartialEvent,
    TransitionEvent,
)
from agent.handoff import hand_on
from agent.lockstep import LOCKSTEP_PARAMETER
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
    CallControl,
    CallControlError,
    SpeechStartedHint,
    SpeechToText,
    SttEvent,
    SttFailure,
    SttStream,
    Transcript,
)
from agent.session_end import CallJournal, StreamOrigin, archive_call, call_record
from agent.session_socket import SessionSocket
from agent.session_state import CallState, CallStats, MediaSocket, SessionDeps
from agent.speaker import AgentVoice, Interrupted, Speaker
from agent.speaker_twiml import CallbackUrls, TwimlSpeaker
from media import mulaw
from media.frames import MULAW_SILENCE
from media.recording import CallRecording
from media.turns import SpeechEnded, SpeechStarted, TurnConfig, TurnDetector
from media.vad import VoiceActivity
from twiml import documents
from twiml.messages import Dtmf, Mark, Media, Start
from twiml.numbers import mask_number
from twiml.stream import StreamConnection

STATE_TTL_S = 6 * 3600

log = logging.getLogger("callstream.session")

__all__ = ["CallSession", "CallStats", "MediaSocket", "SessionDeps"]


def _silence(n: int) -> bytes:
    return bytes([MULAW_SILENCE]) * n


class CallSession:
    def __init__(self, deps: SessionDeps, socket: MediaSocket) -> None:
        self._deps = deps
        self._socket = socket
        self._state = state = CallState()
        self._journal = CallJournal(state, deps.feed)
        self.conn = StreamConnection()
        self.stats = CallStats()
        self.metrics = CallMetrics()
        self._io = SessionSocket(
            state, socket, self.conn, self.metrics,
            max_messages_per_s=deps.max_messages_per_s, start_timeout_s=deps.start_timeout_s,
        )
        self.recording = CallRecording()
        self._origin = StreamOrigin(started_at_ms=int(time.time() * 1000))
        self._say_requested: dict[int, float] = {}
        self._vad = VoiceActivity(aggressiveness=deps.vad_aggressiveness)
        self._turns = TurnDetector(TurnConfig(end_silence_ms=deps.end_silence_ms))
        self._control: CallControl | None = deps.call_control
        self._handoff: str | None = None  # twiml mode: a hand-on that answers Twilio's callback
        self._engine: DialogEngine | None = None
        self._stt: SttStream | None = None
        self._phrases: tuple[str, ...] = ()
        self._on_fallback_stt = False
        self._early_turns = 0  # turns the recognizer closed before our detector did
        self._speaking_since_ms = 0  # media time the agent's current speech began
        self._sensitive = False
        self._call_parameters: dict[str, str] = {}  # From/To/CallSid as the stream started
        self._open_turns: deque[tuple[bool, float]] = deque()  # ended turns awaiting a final: (too short?, when)
        self._turn_text: list[str] = []
        self._final_seen_at: float | None = None

    # --- what tests, benchmarks and the app read -------------------------------------
    @property
    def call_sid(self) -> str:
        return self._state.call_sid

    @property
    def log(self) -> logging.LoggerAdapter[logging.Logger]:
        return self._state.log

    @property
    def now_ms(self) -> int:
        """The session clock: the end of the latest inbound frame (media timeline)."""
        return self._state.now_ms

    @property
    def end_reason(self) -> str:
        return self._state.end_reason

    @property
    def outcome(self) -> str | None:
        """Where the call was handed on (transfer:…, conference:…, voicemail, hangup, moved)."""
        return self._state.outcome

    @property
    def stream_sid(self) -> str:
        return self._origin.stream_sid

    # --- the reader ------------------------------------------------------------
    async def run(self) -> None:
        """Serve the stream until `stop`, the socket closes, the call is handed
        on, or Twilio says the call is over (`end_from_twilio`)."""
        try:
            await self._io.serve(self._on_media, self._on_start, self._on_dtmf, self._on_mark, self._settle)
        except Exception:
            self._state.end_reason = "error"
            self._state.log.exception("call session failed")
            await self._io.close(1011, "internal error")
        finally:
            await self._finish()

    def end_from_twilio(self, status: str) -> None:
        """Twilio reported the call over (a status callback) while this stream
        is still open. Its `stop` may be on the way: give it a moment, then
        stop reading rather than wait on a socket that may never speak again."""
        self._io.end_from_twilio(status)

    # --- start ------------------------------------------------------------------
    async def _on_start(self, start: Start) -> None:
        deps = self._deps
        self._state.name(start.call_sid)
        params = dict(start.custom_parameters)
        lockstep = params.get(LOCKSTEP_PARAMETER) == "1"
        self._io.started(lockstep)
        self._state.speaker = self._make_speaker()
        resume = params.get("resume_state") or None
        transfer_status = params.get("transfer_status") or None
        self._origin = StreamOrigin(
            stream_sid=start.stream_sid,
            account_sid=start.account_sid,
            from_=mask_number(params.get("From", "")),
            to=mask_number(params.get("To", "")),
            started_at_ms=int(time.time() * 1000),
            continuation=bool(resume or transfer_status),
        )
        self._call_parameters = {k: params[k] for k in ("From", "To", "CallSid") if k in params}
        CALLS_ACTIVE.inc()
        snapshot = None
        if resume or transfer_status:
            try:
                snapshot = await deps.store.load(start.call_sid)
            except Exception as exc:  # e.g. Redis away: the call goes on, from the start
                self._state.log.error("could not load the saved dialog state (%r)", exc)
            if snapshot is None:
                self._state.log.warning("no saved dialog state to resume: starting the flow over")
        if snapshot is not None:
            self._engine = DialogEngine.restore(deps.flow, start.call_sid, snapshot)
        else:
            self._engine = DialogEngine(deps.flow, start.call_sid)
        if deps.stt is not None:
            try:
                self._stt = await deps.stt.open_stream(start.call_sid, self._on_stt_event)
            except Exception:
                self._state.log.exception("speech recognition unavailable: the call goes on with DTMF only")
        self._state.log.info(
            "call started: stream %s from %s to %s%s%s",
            start.stream_sid,
            mask_number(params.get("From", "")),
            mask_number(params.get("To", "")),
            f", resuming at {resume}" if resume else "",
            " (replay lockstep)" if lockstep else "",
        )
        self._journal.publish(
            CallStartedEvent,
            stream_sid=start.stream_sid,
            from_=mask_number(params.get("From", "")),
            to=mask_number(params.get("To", "")),
            flow=deps.flow.name,
        )
        if transfer_status and snapshot is not None and self._engine.phase is Phase.TRANSFERRING:
            self._state.log.info("transfer ended %s: resuming the dialog", transfer_status)
            self._dialog(d.TransferFailed(transfer_status))
        else:
            if transfer_status and snapshot is not None:
                # the saved state is not a transfer (a duplicate dial-result, or
                # the call moved on): re-enter it rather than stay silent
                self._state.log.warning("transfer result %s but no transfer in progress: resuming", transfer_status)
            self._dialog(d.CallStarted(resume_state=resume))

    def _make_speaker(self) -> AgentVoice:
        deps = self._deps
        if deps.speech == "twiml":
            if self._control is not None:
                self._control = SerialCallControl(self._control)
            return TwimlSpeaker(
                self._state.call_sid,
                self._control if isinstance(self._control, SerialCallControl) else None,
                CallbackUrls(deps.base_url),
                self._state.tasks.spawn,
                clock=lambda: self._state.now_ms,
                on_update_failed=self._on_speech_update_failed,
                log=self._state.log,
            )
        return Speaker(
            self.conn,
            deps.tts,
            self._state.tasks.spawn,
            on_audio=self._on_tts_audio,
            recording=self.recording,
            log=self._state.log,
            fallback=deps.tts_fallback,
        )

    # --- the per-frame path ----------------------------------------------------------
    def _on_media(self, media: Media) -> None:
        state = self._state
        now = media.timestamp + 20
        if now > state.now_ms:
            state.now_ms = now
        else:
            now = state.now_ms
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
        speaker = state.speaker
        if speaker is not None and speaker.speaking:
            speaker.pump(now)
            if speaker.has_finished:
                self._on_prompts_finished()
        deadline = state.deadline
        if deadline is not None and now >= deadline:
            self._dialog(d.Tick())

    def _on_turn(self, turn: SpeechStarted | SpeechEnded, now: int) -> None:
        if isinstance(turn, SpeechStarted):
            speaker = self._state.speaker
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
        assert self._state.speaker is not None
        interrupted = self._state.speaker.interrupt(now)
        self.stats.bargeins.append(latency_ms)
        BARGEIN_MS.observe(latency_ms)
        for cut in interrupted:
            self._state.log.info(
                "barge-in after %d ms of speech: say %d cut, caller heard %d of %d ms",
                latency_ms, cut.say.say_id, cut.heard_ms, cut.total_ms,
            )
            self._journal.publish(BargeInEvent, latency_ms=latency_ms, say_id=cut.say.say_id, heard_ms=cut.heard_ms)
            self._publish_agent_turn(cut)
        for cut in interrupted:
            self._dialog(d.PromptInterrupted(cut.say.say_id, cut.heard_ms))

    # --- DTMF and marks ---------------------------------------------------------------
    def _on_dtmf(self, dtmf: Dtmf) -> None:
        self._on_key(dtmf.digit)

    def _on_key(self, digit: str) -> None:
        speaker = self._state.speaker
        if speaker is not None and speaker.speaking and speaker.barge_in_allowed:
            self._barge_in(0, self._state.now_ms)
        self._state.log.info("DTMF %s", "*" if self._sensitive else digit)
        self._journal.publish(ActionEvent, action="dtmf", detail={"digit": "*" if self._sensitive else digit})
        self._dialog(d.DtmfPressed(digit))

    def _on_mark(self, mark: Mark) -> None:
        if self._state.speaker is None or not self._state.speaker.on_mark(mark.name):
            self._state.log.warning("mark %r is not one we sent", mark.name)
            return
        self._on_prompts_finished()

    def _on_prompts_finished(self) -> None:
        assert self._state.speaker is not None
        for done in self._state.speaker.take_finished():
            self._journal.publish(
                TranscriptFinalEvent,
                speaker="agent",
                text=done.say.log_text,
                end_ms=self._state.now_ms,
                start_ms=max(0, self._state.now_ms - done.total_ms),
                heard_ms=done.total_ms,
            )
            self._dialog(d.PromptFinished(done.say.say_id))

    async def _on_tts_audio(self, say: d.Say, first: bool) -> None:
        """Synthesis produced audio: send what pacing allows now rather than at
        the next inbound frame (this is the turn's response latency)."""
        if self._state.closing or self._state.speaker is None:
            return
        self._state.speaker.pump(self._state.now_ms)
        if first:
            requested = self._say_requested.pop(say.say_id, None)
            if requested is not None:
                TTS_FIRST_AUDIO_MS.observe((time.perf_counter() - requested) * 1000)
        if first and self._final_seen_at is not None:
            response_ms = (time.perf_counter() - self._final_seen_at) * 1000
            self.stats.response_ms.append(response_ms)
            RESPONSE_MS.observe(response_ms)
            self._journal.publish(LatencyEvent, name="response", ms=round(response_ms, 2))
            self._final_seen_at = None
        if self.conn.has_data_to_send:
            await self._io.flush()

    def _publish_agent_turn(self, cut: Interrupted) -> None:
        self._journal.publish(
            TranscriptFinalEvent,
            speaker="agent",
            text=cut.heard_text,
            start_ms=max(0, self._state.now_ms - cut.heard_ms),
            end_ms=self._state.now_ms,
            interrupted=True,
            heard_ms=cut.heard_ms,
        )

    # --- speech recognition ------------------------------------------------------------
    def _on_stt_event(self, event: SttEvent) -> None:
        if self._state.closing:
            return
        if isinstance(event, Transcript):
            if not event.is_final:
                if event.text:
                    self._journal.publish(TranscriptPartialEvent, text=self._redact(event.text))
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
            speaker = self._state.speaker
            if (
                event.barge_in
                and speaker is not None
                and speaker.speaking
                and speaker.barge_in_allowed
                and event.at_ms >= self._speaking_since_ms
            ):
                self._state.log.info("barge-in on the recognizer's speech-started hint")
                self._barge_in(max(0, self._state.now_ms - event.at_ms), self._state.now_ms)
        elif isinstance(event, SttFailure):
            self._on_stt_failure(event)

    def _on_stt_failure(self, event: SttFailure) -> None:
        """A retryable failure is the provider's to recover from; for good, the
        call goes on with the fallback recognizer (sphinx) rather than deaf."""
        if event.retryable:
            self._state.log.warning("speech recognition interrupted (%s): it retries", event.reason)
            return
        fallback = self._deps.stt_fallback
        if fallback is None or self._on_fallback_stt or self._state.closing:
            self._state.log.error("speech recognition failed (%s): caller speech is not understood", event.reason)
            return
        self._state.log.error("speech recognition failed (%s): falling back to %s", event.reason, fallback.name)
        self._on_fallback_stt = True
        self._state.tasks.spawn(self._switch_stt(fallback), "stt-fallback")

    async def _switch_stt(self, fallback: SpeechToText) -> None:
        failed, self._stt = self._stt, None
        if failed is not None:
            await failed.aclose()
        stream = await fallback.open_stream(self._state.call_sid, self._on_stt_event)
        if self._state.closing:
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
                    self._state.log.debug("turn already closed by the recognizer")
                    return
        if too_short and not text:
            self._state.log.debug("a sound too short to be speech: ignored")
            self._dialog(d.CallerSpeechAbandoned())
            return
        self._state.log.info("caller said %r (confidence %.2f)", self._redact(text), confidence)
        self._journal.publish(
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
        actions = engine.handle(event, self._state.now_ms)
        self._state.deadline = engine.next_deadline()
        for action in actions:
            self._carry_out(action)

    def _carry_out(self, action: d.Action) -> None:
        match action:
            case d.Say():
                assert self._state.speaker is not None
                if not self._state.speaker.speaking:
                    self._speaking_since_ms = self._state.now_ms
                self._state.log.info("say %d in %s: %r", action.say_id, action.state, action.log_text)
                self._say_requested[action.say_id] = time.perf_counter()
                self._journal.publish(ActionEvent, action="say", detail={"say_id": action.say_id, "text": action.log_text})
                self._state.speaker.say(action)
            case d.Listen():
                self._sensitive = action.sensitive
                self._phrases = action.phrases
                if self._stt is not None:
                    self._stt.set_phrases(action.phrases)
            case d.Transition():
                self._state.log.info("%s → %s (%s)", action.from_state, action.to_state, action.intent)
                self._journal.publish(TransitionEvent, from_=action.from_state, to=action.to_state, intent=action.intent)
                self._state.tasks.spawn(self._save_state(), "save-state")
            case d.SlotFilled():
                self._state.log.info("slot %s = %s", action.name, action.log_value)
                self._journal.publish(ActionEvent, action="slot", detail={"name": action.name, "value": action.log_value})
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
        return recording_callback_url(self._deps.base_url, kind, self._state.call_sid, self._origin.started_at_ms)

    def _hand_on(self, outcome: str, twiml: str | None, detail: dict[str, object]) -> None:
        """Move the live call on (REST update); Twilio then stops this stream."""
        self._state.outcome = outcome
        kind = outcome.split(":", 1)[0]
        self._journal.publish(ActionEvent, action=kind, detail=detail)
        speaker = self._state.speaker
        if isinstance(speaker, TwimlSpeaker):
            # the one-way fork outlives TwiML changes: stop it, or we would listen in
            twiml = documents.stream_stopped_first(twiml or documents.hangup())
            if speaker.is_answering:
                self._state.log.info("%s: answering Twilio's callback with it", kind)
                self._handoff = twiml
                return
        self._state.log.info("%s: updating the live call", kind)
        self._state.tasks.spawn(self._update_call(twiml), f"call-update-{kind}")

    async def _update_call(self, twiml: str | None) -> None:
        await self._save_state()  # before Twilio moves the call: its callbacks may resume it
        kind = (self._state.outcome or "hangup").split(":", 1)[0]
        failed = await hand_on(self._control, self._deps.store, self._state.call_sid, twiml, kind=kind, log=self._state.log)
        if failed is None:
            return  # Twilio stops this stream
        error = failed.error
        if error is None:  # call control is off
            await self._io.close(1000, self._state.outcome or "done")
            return
        self._state.end_reason = failed.end_reason
        self._journal.publish(CallUpdateFailedEvent, action=kind, code=error.code, message=str(error), then=failed.then)
        await self._io.close(1000, "call update failed")

    def _on_speech_update_failed(self, what: str, exc: CallControlError) -> None:
        """twiml mode: a prompt or hold did not reach Twilio. The document stays
        pending and answers Twilio's next callback (the hold loop); a call that
        is over ends the stream."""
        if exc.code == 21220:
            self._state.log.info("call already ended (Twilio 21220): nothing to say")
            self._state.end_reason = "caller_gone"
            self._journal.publish(CallUpdateFailedEvent, action=what, code=exc.code, message=str(exc), then="caller_gone")
            self._state.close_with = (1000, "call ended")  # the reader closes at its next message
            return
        self._state.log.error("could not update the call for a %s (%s): it waits for Twilio's next callback", what, exc)
        self._journal.publish(CallUpdateFailedEvent, action=what, code=exc.code, message=str(exc), then="next_callback")

    async def answer_twilio(self, say_id: int | None, digits: str) -> str | None:
        """twiml mode: Twilio finished prompt `say_id` (a key may have ended it)
        or, holding, heard `digits`; or just asks what next (both None/"").
        Returns the TwiML the call goes on with; None if this session cannot
        answer (stream mode, or over)."""
        speaker = self._state.speaker
        if not isinstance(speaker, TwimlSpeaker) or self._state.closing:
            return None
        with speaker.answering():
            if say_id is not None:
                if speaker.said(say_id, self._state.now_ms, key_pressed=bool(digits)):
                    self._on_prompts_finished()
                else:
                    self._state.log.debug("said %d: not the prompt playing (stale)", say_id)
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
            await self._deps.store.save(self._state.call_sid, self._engine.snapshot(), STATE_TTL_S)
        except Exception as exc:  # e.g. Redis away: the call goes on; a resume would start over
            self._state.log.error("could not save the dialog state (%r)", exc)

    # --- replay lockstep -----------------------------------------------------------------
    async def _settle(self) -> None:
        """Finish all work for the audio so far (a lockstep sync, agent/lockstep.py)."""
        while True:
            if self._stt is not None:
                await self._stt.flush()
            if not self._state.tasks.pending:
                break
            await self._state.tasks.wait_idle()
        speaker = self._state.speaker
        if speaker is not None and speaker.speaking:
            speaker.pump(self._state.now_ms)
            self._on_prompts_finished()

    # --- the server shuts down (agent/shutdown.py) ---------------------------------------------
    def resume_parameters(self) -> dict[str, str] | None:
        """Stream parameters that reconnect this call at its current dialog
        state; None when there is nothing to resume (not started, moving on, over)."""
        engine = self._engine
        if engine is None or engine.state is None or self._state.closing or self._state.outcome is not None:
            return None
        return {**self._call_parameters, "resume_state": engine.state}

    def hand_over(self, twiml: str, state: str) -> None:
        """Drain deadline: move the live call to `twiml` (a stream that resumes
        at `state`, on an instance that is still serving)."""
        self._state.log.warning("server shutting down: handing the call over to resume at %s", state)
        self._hand_on("moved", twiml, {"resume_state": state})

    # --- the end ------------------------------------------------------------------------------
    async def _finish(self) -> None:
        state = self._state
        state.closing = True
        self._io.cancel_timers()
        if self._state.speaker is not None:
            self._state.speaker.close()
        if self._stt is not None:
            try:
                await self._stt.aclose()
            except Exception:
                self._state.log.exception("closing speech recognition")
        await self._state.tasks.aclose(grace_s=5.0)
        if self._state.call_sid != "-":
            path = tuple(self._engine.path) if self._engine is not None else ()
            self._state.log.info(
                "call ended (%s): path %s, %d frames, %d malformed messages",
                self._state.end_reason, " → ".join(path), self.metrics.frames_in, sum(self.conn.errors.values()),
            )
            ended = self._journal.event(CallEndedEvent, reason=self._state.end_reason, path=path, duration_ms=self._state.now_ms)
            self.metrics.flush(self.conn.errors)
            CALLS_ACTIVE.dec()
            CALLS_TOTAL.labels(self._state.end_reason.split(":", 1)[0]).inc()
            # queued for the archive before call.ended goes out: whoever acts on
            # call.ended (replay, ops) may stop the server at once
            record = call_record(
                state, self._origin, self._deps.flow.name, self._engine, self._journal,
                self.stats, self.conn.errors, self.recording,
            )
            await archive_call(self._deps.archive, record, state.log)
            self._journal.publish_event(ended)
        else:
            self.metrics.flush(self.conn.errors)  # start_timeout, rate_limited… before any start
            if self.conn.errors:
                self._state.log.info(
                    "stream closed before a start (%s): %s",
                    self._state.end_reason, ", ".join(f"{k} {n}" for k, n in sorted(self.conn.errors.items())),
                )
