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

`CallSession` is the façade the app, tests and benchmarks use; the work is
done by a few collaborators sharing one small `CallState`
(agent/session_state.py), each in its own module:

- `SessionSocket` (agent/session_socket.py): the read loop, sending, the
  lockstep answers, the rate limit and start timeout, closing;
- `Listener` (agent/session_listen.py): the per-frame path, turns, barge-in,
  keys and marks, speech recognition and its fallback;
- `CallActions` (agent/session_actions.py): the dialog engine and its
  actions — speaking, handing the call on, twiml-mode answers, saving state,
  the drain's hand-over;
- `CallJournal` and the archive record (agent/session_end.py).

The session itself wires them at construction, starts the call on `start`
and finishes it at the end.
"""

from __future__ import annotations

import logging
import time

from agent.events import CallEndedEvent, CallStartedEvent
from agent.lockstep import LOCKSTEP_PARAMETER
from agent.metrics import CALLS_ACTIVE, CALLS_TOTAL, CallMetrics
from agent.session_actions import CallActions
from agent.session_end import CallJournal, StreamOrigin, archive_call, call_record
from agent.session_listen import Listener
from agent.session_socket import SessionSocket
from agent.session_state import CallState, CallStats, MediaSocket, SessionDeps
from media.recording import CallRecording
from twiml.messages import Start
from twiml.numbers import mask_number
from twiml.stream import StreamConnection

__all__ = ["CallSession", "CallStats", "MediaSocket", "SessionDeps"]


class CallSession:
    def __init__(self, deps: SessionDeps, socket: MediaSocket) -> None:
        self._deps = deps
        self._socket = socket
        self._state = state = CallState()
        self._journal = CallJournal(state, deps.feed)
        self.conn = StreamConnection()
        self.stats = CallStats()
        self.metrics = CallMetrics()
        self.recording = CallRecording()
        self._origin = StreamOrigin(started_at_ms=int(time.time() * 1000))
        self._io = SessionSocket(
            state, socket, self.conn, self.metrics,
            max_messages_per_s=deps.max_messages_per_s, start_timeout_s=deps.start_timeout_s,
        )
        self._listener = Listener(
            state, self.conn, self._journal, self.stats, self.metrics, self.recording, self._io.flush,
            vad_aggressiveness=deps.vad_aggressiveness,
            end_silence_ms=deps.end_silence_ms,
            stt_fallback=deps.stt_fallback,
        )
        self._actions = CallActions(state, deps, self._journal, self._listener, self._io.close)
        self._listener.dialog = self._actions.dialog
        # the per-frame path, as the reader and the benchmarks call it (no extra hop)
        self._on_media = self._listener.on_media

    # --- what the app, tests and benchmarks read -----------------------------------------
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

    # --- the call ------------------------------------------------------------------------
    async def run(self) -> None:
        """Serve the stream until `stop`, the socket closes, the call is handed
        on, or Twilio says the call is over (`end_from_twilio`)."""
        listener = self._listener
        try:
            await self._io.serve(self._on_media, self._on_start, listener.on_dtmf, listener.on_mark, listener.settle)
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

    async def answer_twilio(self, say_id: int | None, digits: str) -> str | None:
        """twiml mode: Twilio finished prompt `say_id` (a key may have ended it)
        or, holding, heard `digits`; or just asks what next (both None/"").
        Returns the TwiML the call goes on with; None if this session cannot
        answer (stream mode, or over)."""
        return await self._actions.answer_twilio(say_id, digits)

    def resume_parameters(self) -> dict[str, str] | None:
        """Stream parameters that reconnect this call at its current dialog
        state; None when there is nothing to resume (not started, moving on, over)."""
        return self._actions.resume_parameters()

    def hand_over(self, twiml: str, state: str) -> None:
        """Drain deadline (agent/shutdown.py): move the live call to `twiml` (a
        stream that resumes at `state`, on an instance that is still serving)."""
        self._actions.hand_over(twiml, state)

    # --- start ---------------------------------------------------------------------------
    async def _on_start(self, start: Start) -> None:
        deps = self._deps
        state = self._state
        state.name(start.call_sid)
        params = dict(start.custom_parameters)
        lockstep = params.get(LOCKSTEP_PARAMETER) == "1"
        self._io.started(lockstep)
        state.speaker = self._actions.make_speaker(self.conn, self.recording)
        resume = params.get("resume_state") or None
        transfer_status = params.get("transfer_status") or None
        self._origin = origin = StreamOrigin(
            stream_sid=start.stream_sid,
            account_sid=start.account_sid,
            from_=mask_number(params.get("From", "")),
            to=mask_number(params.get("To", "")),
            started_at_ms=int(time.time() * 1000),
            continuation=bool(resume or transfer_status),
        )
        CALLS_ACTIVE.inc()
        restored = await self._actions.restore(
            {k: params[k] for k in ("From", "To", "CallSid") if k in params},
            origin.started_at_ms,
            resume=origin.continuation,
        )
        if deps.stt is not None:
            await self._listener.open_stt(deps.stt)
        state.log.info(
            "call started: stream %s from %s to %s%s%s",
            start.stream_sid,
            origin.from_,
            origin.to,
            f", resuming at {resume}" if resume else "",
            " (replay lockstep)" if lockstep else "",
        )
        self._journal.publish(
            CallStartedEvent, stream_sid=start.stream_sid, from_=origin.from_, to=origin.to, flow=deps.flow.name
        )
        self._actions.begin(resume, transfer_status, restored)

    # --- the end ------------------------------------------------------------------------------
    async def _finish(self) -> None:
        state = self._state
        state.closing = True
        self._io.cancel_timers()
        if state.speaker is not None:
            state.speaker.close()
        await self._listener.close_stt()
        await state.tasks.aclose(grace_s=5.0)
        errors = self.conn.errors
        if state.call_sid != "-":
            engine = self._actions.engine
            path = tuple(engine.path) if engine is not None else ()
            state.log.info(
                "call ended (%s): path %s, %d frames, %d malformed messages",
                state.end_reason, " → ".join(path), self.metrics.frames_in, sum(errors.values()),
            )
            ended = self._journal.event(CallEndedEvent, reason=state.end_reason, path=path, duration_ms=state.now_ms)
            self.metrics.flush(errors)
            CALLS_ACTIVE.dec()
            CALLS_TOTAL.labels(state.end_reason.split(":", 1)[0]).inc()
            # queued for the archive before call.ended goes out: whoever acts on
            # call.ended (replay, ops) may stop the server at once
            record = call_record(
                state, self._origin, self._deps.flow.name, engine, self._journal,
                self.stats, errors, self.recording,
            )
            await archive_call(self._deps.archive, record, state.log)
            self._journal.publish_event(ended)
        else:
            self.metrics.flush(errors)  # start_timeout, rate_limited… before any start
            if errors:
                state.log.info(
                    "stream closed before a start (%s): %s",
                    state.end_reason, ", ".join(f"{k} {n}" for k, n in sorted(errors.items())),
                )

