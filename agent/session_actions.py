"""Acting on the dialog: what the session does with the dialog engine's actions.

Theory of operation
-------------------
Every event of the call (a turn, a key, a prompt played out, a deadline)
goes to `dialog`, which hands it to the pure `DialogEngine` with the session
clock and carries out the actions it returns, in order: speak (`Say`, through
the agent's voice), listen (`Listen`: phrases for the recognizer, whether the
state is sensitive), record a transition or a slot (feed events; the state is
saved so a later stream of the call can resume it), or hand the call on.

Handing the call on (transfer, conference, voicemail, hang-up, and the
drain's `hand_over`) is a REST update of the live call; Twilio then stops
this stream. If Twilio refuses it for good, agent/handoff.py keeps the TwiML
for the webhook that follows the stream and the stream is closed. The state
is saved first: Twilio's callbacks about the new TwiML may resume the call.

The agent's voice is an `AgentVoice` chosen by CALLSTREAM_SPEECH
(`make_speaker`): `Speaker` streams our synthesis over this (bidirectional)
stream; `TwimlSpeaker` has Twilio render `<Say>` while this (one-way) stream
only listens. In twiml mode Twilio's callbacks about a prompt reach us
through `answer_twilio`, and a hand-on made while answering one is the
answer itself rather than a REST update.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from agent import dialog_types as d
from agent.archive_callbacks import recording_callback_url
from agent.call_control import SerialCallControl
from agent.dialog import DialogEngine, Phase
from agent.events import ActionEvent, CallUpdateFailedEvent, TransitionEvent
from agent.handoff import hand_on
from agent.ports import CallControl, CallControlError
from agent.session_end import CallJournal
from agent.session_listen import Listener
from agent.session_state import CallState, SessionDeps
from agent.speaker import AgentVoice, Speaker
from agent.speaker_twiml import CallbackUrls, TwimlSpeaker
from media.recording import CallRecording
from twiml import documents
from twiml.numbers import mask_number
from twiml.stream import StreamConnection

STATE_TTL_S = 6 * 3600


class CallActions:
    """Runs the call's dialog engine and performs what it asks."""

    def __init__(
        self,
        state: CallState,
        deps: SessionDeps,
        journal: CallJournal,
        listener: Listener,
        close: Callable[[int, str], Awaitable[None]],
    ) -> None:
        self._state = state
        self._deps = deps
        self._journal = journal
        self._listener = listener
        self._close = close
        self.engine: DialogEngine | None = None
        self._control: CallControl | None = deps.call_control
        self._handoff: str | None = None  # twiml mode: a hand-on that answers Twilio's callback
        self._call_parameters: dict[str, str] = {}  # From/To/CallSid as the stream started
        self._started_at_ms = 0

    # --- start ---------------------------------------------------------------------------
    def make_speaker(self, conn: StreamConnection, recording: CallRecording) -> AgentVoice:
        """The agent's voice for CALLSTREAM_SPEECH (stream or twiml)."""
        deps = self._deps
        state = self._state
        if deps.speech == "twiml":
            if self._control is not None:
                self._control = SerialCallControl(self._control)
            return TwimlSpeaker(
                state.call_sid,
                self._control if isinstance(self._control, SerialCallControl) else None,
                CallbackUrls(deps.base_url),
                state.tasks.spawn,
                clock=lambda: state.now_ms,
                on_update_failed=self._on_speech_update_failed,
                log=state.log,
            )
        return Speaker(
            conn,
            deps.tts,
            state.tasks.spawn,
            on_audio=self._listener.on_tts_audio,
            recording=recording,
            log=state.log,
            fallback=deps.tts_fallback,
        )

    async def restore(
        self, call_parameters: dict[str, str], started_at_ms: int, resume: bool
    ) -> bool:
        """Make the call's dialog engine: at its saved state for a resumed
        stream (`resume`), else from the flow's start. True if restored."""
        deps = self._deps
        state = self._state
        self._call_parameters = call_parameters
        self._started_at_ms = started_at_ms
        snapshot = None
        if resume:
            try:
                snapshot = await deps.store.load(state.call_sid)
            except Exception as exc:  # e.g. Redis away: the call goes on, from the start
                state.log.error("could not load the saved dialog state (%r)", exc)
            if snapshot is None:
                state.log.warning("no saved dialog state to resume: starting the flow over")
        if snapshot is not None:
            self.engine = DialogEngine.restore(deps.flow, state.call_sid, snapshot)
        else:
            self.engine = DialogEngine(deps.flow, state.call_sid)
        return snapshot is not None

    def begin(self, resume: str | None, transfer_status: str | None, restored: bool) -> None:
        """The dialog's first event: a transfer that ended, or the call (re)starting."""
        assert self.engine is not None
        log = self._state.log
        if transfer_status and restored and self.engine.phase is Phase.TRANSFERRING:
            log.info("transfer ended %s: resuming the dialog", transfer_status)
            self.dialog(d.TransferFailed(transfer_status))
        else:
            if transfer_status and restored:
                # the saved state is not a transfer (a duplicate dial-result, or
                # the call moved on): re-enter it rather than stay silent
                log.warning("transfer result %s but no transfer in progress: resuming", transfer_status)
            self.dialog(d.CallStarted(resume_state=resume))

    # --- the dialog ----------------------------------------------------------------------
    def dialog(self, event: d.Event) -> None:
        engine = self.engine
        if engine is None:
            return
        actions = engine.handle(event, self._state.now_ms)
        self._state.deadline = engine.next_deadline()
        for action in actions:
            self._carry_out(action)

    def _carry_out(self, action: d.Action) -> None:
        state = self._state
        journal = self._journal
        match action:
            case d.Say():
                assert state.speaker is not None
                self._listener.on_say(action)
                state.log.info("say %d in %s: %r", action.say_id, action.state, action.log_text)
                journal.publish(ActionEvent, action="say", detail={"say_id": action.say_id, "text": action.log_text})
                state.speaker.say(action)
            case d.Listen():
                self._listener.listen_for(action.phrases, action.sensitive)
            case d.Transition():
                state.log.info("%s → %s (%s)", action.from_state, action.to_state, action.intent)
                journal.publish(TransitionEvent, from_=action.from_state, to=action.to_state, intent=action.intent)
                state.tasks.spawn(self.save_state(), "save-state")
            case d.SlotFilled():
                state.log.info("slot %s = %s", action.name, action.log_value)
                journal.publish(ActionEvent, action="slot", detail={"name": action.name, "value": action.log_value})
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
        return recording_callback_url(self._deps.base_url, kind, self._state.call_sid, self._started_at_ms)

    # --- handing the call on -------------------------------------------------------------
    def _hand_on(self, outcome: str, twiml: str | None, detail: dict[str, object]) -> None:
        """Move the live call on (REST update); Twilio then stops this stream."""
        state = self._state
        state.outcome = outcome
        kind = outcome.split(":", 1)[0]
        self._journal.publish(ActionEvent, action=kind, detail=detail)
        speaker = state.speaker
        if isinstance(speaker, TwimlSpeaker):
            # the one-way fork outlives TwiML changes: stop it, or we would listen in
            twiml = documents.stream_stopped_first(twiml or documents.hangup())
            if speaker.is_answering:
                state.log.info("%s: answering Twilio's callback with it", kind)
                self._handoff = twiml
                return
        state.log.info("%s: updating the live call", kind)
        state.tasks.spawn(self._update_call(twiml), f"call-update-{kind}")

    async def _update_call(self, twiml: str | None) -> None:
        state = self._state
        await self.save_state()  # before Twilio moves the call: its callbacks may resume it
        kind = (state.outcome or "hangup").split(":", 1)[0]
        failed = await hand_on(self._control, self._deps.store, state.call_sid, twiml, kind=kind, log=state.log)
        if failed is None:
            return  # Twilio stops this stream
        error = failed.error
        if error is None:  # call control is off
            await self._close(1000, state.outcome or "done")
            return
        state.end_reason = failed.end_reason
        self._journal.publish(CallUpdateFailedEvent, action=kind, code=error.code, message=str(error), then=failed.then)
        await self._close(1000, "call update failed")

    def _on_speech_update_failed(self, what: str, exc: CallControlError) -> None:
        """twiml mode: a prompt or hold did not reach Twilio. The document stays
        pending and answers Twilio's next callback (the hold loop); a call that
        is over ends the stream."""
        state = self._state
        if exc.code == 21220:
            state.log.info("call already ended (Twilio 21220): nothing to say")
            state.end_reason = "caller_gone"
            self._journal.publish(CallUpdateFailedEvent, action=what, code=exc.code, message=str(exc), then="caller_gone")
            state.close_with = (1000, "call ended")  # the reader closes at its next message
            return
        state.log.error("could not update the call for a %s (%s): it waits for Twilio's next callback", what, exc)
        self._journal.publish(CallUpdateFailedEvent, action=what, code=exc.code, message=str(exc), then="next_callback")

    async def answer_twilio(self, say_id: int | None, digits: str) -> str | None:
        """twiml mode: Twilio finished prompt `say_id` (a key may have ended it)
        or, holding, heard `digits`; or just asks what next (both None/"").
        Returns the TwiML the call goes on with; None if this session cannot
        answer (stream mode, or over)."""
        state = self._state
        speaker = state.speaker
        if not isinstance(speaker, TwimlSpeaker) or state.closing:
            return None
        with speaker.answering():
            if say_id is not None:
                if speaker.said(say_id, state.now_ms, key_pressed=bool(digits)):
                    self._listener.on_prompts_finished()
                else:
                    state.log.debug("said %d: not the prompt playing (stale)", say_id)
            for digit in digits:
                self._listener.on_key(digit)
        handoff, self._handoff = self._handoff, None
        if handoff is not None:
            await self.save_state()  # before Twilio moves the call: its callbacks may resume it
            return handoff
        return speaker.document()

    async def save_state(self) -> None:
        if self.engine is None:
            return
        try:
            await self._deps.store.save(self._state.call_sid, self.engine.snapshot(), STATE_TTL_S)
        except Exception as exc:  # e.g. Redis away: the call goes on; a resume would start over
            self._state.log.error("could not save the dialog state (%r)", exc)

    # --- the server shuts down (agent/shutdown.py) ---------------------------------------------
    def resume_parameters(self) -> dict[str, str] | None:
        """Stream parameters that reconnect this call at its current dialog
        state; None when there is nothing to resume (not started, moving on, over)."""
        engine = self.engine
        state = self._state
        if engine is None or engine.state is None or state.closing or state.outcome is not None:
            return None
        return {**self._call_parameters, "resume_state": engine.state}

    def hand_over(self, twiml: str, resume_state: str) -> None:
        """Drain deadline: move the live call to `twiml` (a stream that resumes
        at `resume_state`, on an instance that is still serving)."""
        self._state.log.warning("server shutting down: handing the call over to resume at %s", resume_state)
        self._hand_on("moved", twiml, {"resume_state": resume_state})
