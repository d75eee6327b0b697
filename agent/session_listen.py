"""Hearing the caller: the per-frame path, turns, barge-in, keys, and what the
recognizer makes of the audio.

Theory of operation
-------------------
`on_media` is the session's per-frame path, run inline by the reader for
every inbound frame (agent/session_socket.py): advance the session clock to
the end of the frame (`CallState.now_ms`, the media timeline), count it,
record it (silence while the dialog listens for something sensitive), decode
mu-law, run VAD and the turn detector, feed the recognizer, pump the agent's
voice, and tick the dialog when its deadline has come. It allocates and calls
nothing more than that; everything else here runs on a turn, a key, a mark
or a recognizer event.

A turn the detector opens (`SpeechStarted`) cuts the agent off if its prompt
allows barge-in — as does a key, or the recognizer's own speech-started hint
(Deepgram's `SpeechStarted`), whichever comes first. A turn it closes asks
the recognizer for its final (`end_turn`); the finals of a turn are joined and
handed to the dialog as `CallerSpeechFinal`. The recognizer may close a turn
before our detector hears its end: see `_on_turn_final`.

A recognizer that fails for good is replaced by the fallback one (sphinx)
for the rest of the call, rather than the call going on deaf.

The dialog is reached through `dialog`, set by the session once its actions
side exists (agent/session_actions.py); the actions side tells us what the
dialog listens for (`listen_for`) and when the agent starts a prompt (`on_say`).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable

from agent import dialog_types as d
from agent.events import (
    ActionEvent,
    BargeInEvent,
    LatencyEvent,
    TranscriptFinalEvent,
    TranscriptPartialEvent,
)
from agent.metrics import BARGEIN_MS, RESPONSE_MS, STT_FINAL_MS, TTS_FIRST_AUDIO_MS, CallMetrics
from agent.ports import SpeechStartedHint, SpeechToText, SttEvent, SttFailure, SttStream, Transcript
from agent.session_end import CallJournal
from agent.session_state import CallState, CallStats
from agent.speaker import Interrupted
from media import mulaw
from media.frames import MULAW_SILENCE
from media.recording import CallRecording
from media.turns import SpeechEnded, SpeechStarted, TurnConfig, TurnDetector
from media.vad import VoiceActivity
from twiml.messages import Dtmf, Mark, Media
from twiml.stream import StreamConnection


def _silence(n: int) -> bytes:
    return bytes([MULAW_SILENCE]) * n


def _no_dialog(event: d.Event) -> None:
    """Before the session connects the dialog (never once a call runs)."""


class Listener:
    """The caller's side of one call: audio in, turns, barge-in, keys, recognition."""

    def __init__(
        self,
        state: CallState,
        conn: StreamConnection,
        journal: CallJournal,
        stats: CallStats,
        metrics: CallMetrics,
        recording: CallRecording,
        flush: Callable[[], Awaitable[None]],
        *,
        vad_aggressiveness: int,
        end_silence_ms: int,
        stt_fallback: SpeechToText | None,
    ) -> None:
        self._state = state
        self._conn = conn
        self._journal = journal
        self._stats = stats
        self._metrics = metrics
        self._recording = recording
        self._flush = flush
        self._stt_fallback = stt_fallback
        self.dialog: Callable[[d.Event], None] = _no_dialog
        self.stt: SttStream | None = None
        self._vad = VoiceActivity(aggressiveness=vad_aggressiveness)
        self._turns = TurnDetector(TurnConfig(end_silence_ms=end_silence_ms), voicing=self._vad.periodic)
        self._sensitive = False
        self._phrases: tuple[str, ...] = ()
        self._on_fallback_stt = False
        self._say_requested: dict[int, float] = {}
        self._speaking_since_ms = 0  # media time the agent's current speech began
        self._early_turns = 0  # turns the recognizer closed before our detector did
        self._open_turns: deque[tuple[bool, float]] = deque()  # ended turns awaiting a final: (too short?, when)
        self._turn_text: list[str] = []
        self._final_seen_at: float | None = None

    # --- the per-frame path ----------------------------------------------------------
    def on_media(self, media: Media) -> None:
        state = self._state
        now = media.timestamp + 20
        if now > state.now_ms:
            state.now_ms = now
        else:
            now = state.now_ms
        metrics = self._metrics
        metrics.frames_in += 1
        # lateness against the media timeline (CallMetrics): cheap, sampled
        handled = time.monotonic() - media.timestamp / 1000
        if handled < metrics.anchor_s:
            metrics.anchor_s = handled
        if metrics.frames_in % CallMetrics.LATENESS_SAMPLE_EVERY == 0:
            metrics.lateness_s.append(handled - metrics.anchor_s)
        if metrics.frames_in % CallMetrics.FLUSH_EVERY_FRAMES == 0:
            metrics.flush(self._conn.errors)
        # a sensitive state (card or account digits) is not recorded: silence instead
        self._recording.caller(media.timestamp, media.payload if not self._sensitive else _silence(len(media.payload)))
        pcm = mulaw.decode(media.payload)
        turn = self._turns.process(self._vad.is_speech(pcm), now)
        if self.stt is not None:
            self.stt.feed(media.payload, pcm, now)
        if turn is not None:
            self._on_turn(turn, now)
        speaker = state.speaker
        if speaker is not None and speaker.speaking:
            speaker.pump(now)
            if speaker.has_finished:
                self.on_prompts_finished()
        deadline = state.deadline
        if deadline is not None and now >= deadline:
            self.dialog(d.Tick())

    def _on_turn(self, turn: SpeechStarted | SpeechEnded, now: int) -> None:
        if isinstance(turn, SpeechStarted):
            speaker = self._state.speaker
            if speaker is not None and speaker.speaking and speaker.barge_in_allowed:
                self._barge_in(now - turn.onset_ms, now)
            self.dialog(d.CallerSpeechStarted())
        else:
            self._open_turns.append((turn.too_short, time.perf_counter()))
            if self.stt is not None:
                self.stt.end_turn(now)
            else:  # no recognizer (benchmarks): the turn ends with nothing understood
                self._on_turn_final("", 0.0, turn.onset_ms, now)

    def _barge_in(self, latency_ms: int, now: int) -> None:
        speaker = self._state.speaker
        assert speaker is not None
        interrupted = speaker.interrupt(now)
        self._stats.bargeins.append(latency_ms)
        BARGEIN_MS.observe(latency_ms)
        for cut in interrupted:
            self._state.log.info(
                "barge-in after %d ms of speech: say %d cut, caller heard %d of %d ms",
                latency_ms, cut.say.say_id, cut.heard_ms, cut.total_ms,
            )
            self._journal.publish(BargeInEvent, latency_ms=latency_ms, say_id=cut.say.say_id, heard_ms=cut.heard_ms)
            self._publish_agent_turn(cut)
        for cut in interrupted:
            self.dialog(d.PromptInterrupted(cut.say.say_id, cut.heard_ms))

    # --- DTMF and marks ---------------------------------------------------------------
    def on_dtmf(self, dtmf: Dtmf) -> None:
        self.on_key(dtmf.digit)

    def on_key(self, digit: str) -> None:
        state = self._state
        speaker = state.speaker
        if speaker is not None and speaker.speaking and speaker.barge_in_allowed:
            self._barge_in(0, state.now_ms)
        state.log.info("DTMF %s", "*" if self._sensitive else digit)
        self._journal.publish(ActionEvent, action="dtmf", detail={"digit": "*" if self._sensitive else digit})
        self.dialog(d.DtmfPressed(digit))

    def on_mark(self, mark: Mark) -> None:
        speaker = self._state.speaker
        if speaker is None or not speaker.on_mark(mark.name):
            self._state.log.warning("mark %r is not one we sent", mark.name)
            return
        self.on_prompts_finished()

    # --- the agent's prompts, as the caller hears them ------------------------------------
    def on_say(self, say: d.Say) -> None:
        """The dialog asked for a prompt: time it (first audio, barge-in hints)."""
        speaker = self._state.speaker
        if speaker is not None and not speaker.speaking:
            self._speaking_since_ms = self._state.now_ms
        self._say_requested[say.say_id] = time.perf_counter()

    def on_prompts_finished(self) -> None:
        state = self._state
        assert state.speaker is not None
        for done in state.speaker.take_finished():
            self._journal.publish(
                TranscriptFinalEvent,
                speaker="agent",
                text=done.say.log_text,
                end_ms=state.now_ms,
                start_ms=max(0, state.now_ms - done.total_ms),
                heard_ms=done.total_ms,
            )
            self.dialog(d.PromptFinished(done.say.say_id))

    async def on_tts_audio(self, say: d.Say, first: bool) -> None:
        """Synthesis produced audio: send what pacing allows now rather than at
        the next inbound frame (this is the turn's response latency)."""
        state = self._state
        if state.closing or state.speaker is None:
            return
        state.speaker.pump(state.now_ms)
        if first:
            requested = self._say_requested.pop(say.say_id, None)
            if requested is not None:
                TTS_FIRST_AUDIO_MS.observe((time.perf_counter() - requested) * 1000)
        if first and self._final_seen_at is not None:
            response_ms = (time.perf_counter() - self._final_seen_at) * 1000
            self._stats.response_ms.append(response_ms)
            RESPONSE_MS.observe(response_ms)
            self._journal.publish(LatencyEvent, name="response", ms=round(response_ms, 2))
            self._final_seen_at = None
        if self._conn.has_data_to_send:
            await self._flush()

    def _publish_agent_turn(self, cut: Interrupted) -> None:
        now_ms = self._state.now_ms
        self._journal.publish(
            TranscriptFinalEvent,
            speaker="agent",
            text=cut.heard_text,
            start_ms=max(0, now_ms - cut.heard_ms),
            end_ms=now_ms,
            interrupted=True,
            heard_ms=cut.heard_ms,
        )

    # --- speech recognition ------------------------------------------------------------
    async def open_stt(self, stt: SpeechToText) -> None:
        """Start recognizing this call; without it the call goes on with DTMF only."""
        try:
            self.stt = await stt.open_stream(self._state.call_sid, self._on_stt_event)
        except Exception:
            self._state.log.exception("speech recognition unavailable: the call goes on with DTMF only")

    def listen_for(self, phrases: tuple[str, ...], sensitive: bool) -> None:
        """What the dialog now listens for; a sensitive state is redacted and not recorded."""
        self._sensitive = sensitive
        self._phrases = phrases
        if self.stt is not None:
            self.stt.set_phrases(phrases)

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
        log = self._state.log
        if event.retryable:
            log.warning("speech recognition interrupted (%s): it retries", event.reason)
            return
        fallback = self._stt_fallback
        if fallback is None or self._on_fallback_stt or self._state.closing:
            log.error("speech recognition failed (%s): caller speech is not understood", event.reason)
            return
        log.error("speech recognition failed (%s): falling back to %s", event.reason, fallback.name)
        self._on_fallback_stt = True
        self._state.tasks.spawn(self._switch_stt(fallback), "stt-fallback")

    async def _switch_stt(self, fallback: SpeechToText) -> None:
        failed, self.stt = self.stt, None
        if failed is not None:
            await failed.aclose()
        stream = await fallback.open_stream(self._state.call_sid, self._on_stt_event)
        if self._state.closing:
            await stream.aclose()
            return
        stream.set_phrases(self._phrases)
        self.stt = stream

    def _on_turn_final(self, text: str, confidence: float, start_ms: int, end_ms: int) -> None:
        """A caller turn is over: hand it to the dialog. A sound too short to be
        speech that nothing was recognised in is not a turn (no attempt spent).

        The recognizer may close a turn before our detector hears its end
        (Deepgram's endpointing is quicker than end_silence_ms): that turn goes
        to the dialog at once, and the final answering our detector's end_turn
        for the same speech, empty, is not a second turn."""
        log = self._state.log
        if not self._open_turns:
            if not text:
                return  # the provider closed a turn our detector never opened
            if self._turns.in_speech:
                self._early_turns += 1
        too_short = False
        if self._open_turns:
            too_short, asked = self._open_turns.popleft()
            if self.stt is not None:
                STT_FINAL_MS.observe((time.perf_counter() - asked) * 1000)
            if self._early_turns:
                self._early_turns -= 1
                if not text:
                    log.debug("turn already closed by the recognizer")
                    return
        if too_short and not text:
            log.debug("a sound too short to be speech: ignored")
            self.dialog(d.CallerSpeechAbandoned())
            return
        log.info("caller said %r (confidence %.2f)", self._redact(text), confidence)
        self._journal.publish(
            TranscriptFinalEvent,
            speaker="caller",
            text=self._redact(text),
            start_ms=start_ms,
            end_ms=end_ms,
            confidence=round(confidence, 3),
        )
        self._final_seen_at = time.perf_counter()
        self.dialog(d.CallerSpeechFinal(text, confidence))

    def _redact(self, text: str) -> str:
        return "***" if self._sensitive and text else text

    # --- settling and closing ----------------------------------------------------------
    async def settle(self) -> None:
        """Finish all work for the audio so far (a lockstep sync, agent/lockstep.py)."""
        state = self._state
        while True:
            if self.stt is not None:
                await self.stt.flush()
            if not state.tasks.pending:
                break
            await state.tasks.wait_idle()
        speaker = state.speaker
        if speaker is not None and speaker.speaking:
            speaker.pump(state.now_ms)
            self.on_prompts_finished()

    async def close_stt(self) -> None:
        if self.stt is not None:
            try:
                await self.stt.aclose()
            except Exception:
                self._state.log.exception("closing speech recognition")
