"""Turn detection: when the caller starts and stops talking, from one VAD
verdict per frame. SpeechStarted is what triggers barge-in, so it must come
fast; SpeechEnded marks the end of the caller's turn.

Theory of operation
-------------------
`process(voiced, now_ms)` takes the verdict for one frame and the media time
at the END of that frame; the frame began at `now_ms - frame_ms`. A *run* is
a stretch of voiced frames; its `onset_ms` is the start of its first voiced
frame, its `last_voiced_ms` the end of its latest voiced frame.

    state     frame     condition                                   → state     event
    SILENCE   voiced    (a run begins: onset_ms = now - frame_ms)   → ONSET
    ONSET     voiced    voiced time in the run ≥ start_ms, and a
                        periodic frame in the run (see `voicing`)   → SPEECH    SpeechStarted
    ONSET     voiced    now - onset_ms > start_window_ms            → ONSET     (run restarts here)
    ONSET     unvoiced  gap > onset_gap_ms or window over           → SILENCE   (blip dropped)
    SPEECH    unvoiced                                              → TRAILING
    TRAILING  voiced    (a pause inside the turn)                   → SPEECH
    TRAILING  unvoiced  now - last_voiced_ms ≥ end_silence_ms       → SILENCE   SpeechEnded

Every other (state, frame) pair keeps the state and emits nothing. A voiced
frame that completes start_ms at once (start_ms ≤ frame_ms) goes SILENCE →
SPEECH in one step, as does end_silence_ms ≤ frame_ms SPEECH → SILENCE.

Events strictly alternate, SpeechStarted then SpeechEnded: a consumer that
reacted to SpeechStarted (cut the agent off) always hears how it ended. A run
shorter than min_turn_ms (onset to last voiced frame) is noise, not a turn —
a cough or a line pop that got past start_ms: its SpeechEnded carries
`too_short=True` so the consumer can resume instead of awaiting a transcript.

Voicing: a detector built with `voicing` (media/vad.py's
`VoiceActivity.periodic`: is the frame just fed periodic at a speaking
pitch?) also needs one periodic frame in the run before SpeechStarted. It
asks for each voiced frame of the run until one is, so the question is
asked at onsets only. Hiss, breath, coughs and line pops pass the energy
and webrtcvad gates with no periodic frame; speech reaches its first vowel
within the run. Frames before that vowel (an /h/, an /s/) still count
toward start_ms. Without `voicing`, every run counts as periodic: give
such a detector start_ms = 60, or it fires on two-frame clicks (TurnConfig).

Time is only what the caller passes in; there is no clock and no deadline
apart from frames, which on a Media Stream keep coming every 20 ms.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum


@dataclass(frozen=True, slots=True)
class TurnConfig:
    """Timings in milliseconds of media. Defaults are for 20 ms Twilio frames.

    start_ms = 40: two voiced frames. Barge-in must reach Twilio's `clear`
    within 120 ms of the caller's onset (p95). Without voicing (below), one
    or two frames fired on clicks, pops and crackles, hence 60 ms until
    media/vad.py's `periodic` was asked: a run now also needs a periodic
    frame, which those never have. Measured on bench `bargein`
    (BENCHMARKS.md), with voicing: start_ms 60 → 40 takes the media
    p50 56 → 36 ms, max 167 → 147 ms, with no false barge-in on its noise
    fixtures either way; 20 ms would take p50 to 30 ms but a single periodic
    frame (a squeak, a TV's syllable) would then be a turn. DTMF tones are
    periodic and start a turn at any of these values (40 ms tones included),
    as a key pressed over a prompt should.
    start_window_ms = 100: those 40 ms must come within five frames.
    onset_gap_ms = 20: one unvoiced frame is tolerated inside an onset
    (webrtcvad flickers on plosives and soft starts); two end the run.
    end_silence_ms = 700: pauses inside a phone sentence run to 500–600 ms
    (hesitations, reading a number); ending sooner splits turns. Pipecat
    uses 800 ms, livekit 500 ms plus a model.
    min_turn_ms = 120: the shortest words ("no", "yes", "one") voice for
    150 ms or more; coughs, breaths and pops that pass start_ms are shorter.
    """

    start_ms: int = 40
    end_silence_ms: int = 700
    frame_ms: int = 20
    start_window_ms: int = 100
    min_turn_ms: int = 120
    onset_gap_ms: int = 20

    def __post_init__(self) -> None:
        if self.frame_ms <= 0 or self.start_ms <= 0 or self.end_silence_ms <= 0:
            raise ValueError(f"frame_ms, start_ms and end_silence_ms must be positive: {self}")
        if self.start_window_ms < self.start_ms:
            raise ValueError(f"start_window_ms must be at least start_ms: {self}")
        if self.min_turn_ms < 0 or self.onset_gap_ms < 0:
            raise ValueError(f"min_turn_ms and onset_gap_ms cannot be negative: {self}")


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """The caller started talking: detected at `at_ms`, voicing began at `onset_ms`."""

    at_ms: int
    onset_ms: int


@dataclass(frozen=True, slots=True)
class SpeechEnded:
    """The turn that began at `onset_ms` ended; its last voiced frame ended at
    `last_voiced_ms`, and end_silence_ms of silence later, at `at_ms`, we knew.
    `too_short`: the run lasted less than min_turn_ms, noise rather than a turn.
    """

    at_ms: int
    onset_ms: int
    last_voiced_ms: int
    too_short: bool = False

    @property
    def duration_ms(self) -> int:
        return self.last_voiced_ms - self.onset_ms


TurnEvent = SpeechStarted | SpeechEnded


class TurnState(Enum):
    SILENCE = "silence"
    ONSET = "onset"  # voiced frames seen, not yet enough to call it speech
    SPEECH = "speech"
    TRAILING = "trailing"  # in a turn, currently silent


_IN_SPEECH = frozenset({TurnState.SPEECH, TurnState.TRAILING})


class TurnDetector:
    """Per-call turn state machine over per-frame VAD verdicts (see module doc)."""

    __slots__ = (
        "_last_voiced_ms", "_now_ms", "_onset_ms", "_periodic", "_voiced_ms", "_voicing", "config", "state",
    )

    config: TurnConfig
    state: TurnState
    _onset_ms: int  # start of the run's first voiced frame
    _voiced_ms: int  # voiced time in the run, while in ONSET
    _last_voiced_ms: int  # end of the run's latest voiced frame
    _now_ms: int | None  # end of the last frame processed
    _periodic: bool  # a periodic frame in the run, while in ONSET
    _voicing: Callable[[], bool] | None

    def __init__(self, config: TurnConfig = TurnConfig(), voicing: Callable[[], bool] | None = None) -> None:
        self.config = config
        self._voicing = voicing
        self.reset()

    def reset(self) -> None:
        """Forget the current run, whatever its state, without emitting an event;
        time may start over (e.g. a new stream on the same detector)."""
        self.state = TurnState.SILENCE
        self._onset_ms = 0
        self._voiced_ms = 0
        self._last_voiced_ms = 0
        self._now_ms = None
        self._periodic = False

    @property
    def in_speech(self) -> bool:
        """True from SpeechStarted until SpeechEnded (ONSET is not yet speech)."""
        return self.state in _IN_SPEECH

    def process(self, voiced: bool, now_ms: int) -> TurnEvent | None:
        """Feed the VAD verdict of the frame that ends at `now_ms` (media time)."""
        if self._now_ms is not None and now_ms <= self._now_ms:
            raise ValueError(f"now_ms must increase: {now_ms} after {self._now_ms}")
        self._now_ms = now_ms
        state = self.state
        config = self.config

        if state is TurnState.SPEECH or state is TurnState.TRAILING:
            if voiced:
                self._last_voiced_ms = now_ms
                self.state = TurnState.SPEECH
                return None
            self.state = TurnState.TRAILING
            if now_ms - self._last_voiced_ms < config.end_silence_ms:
                return None
            self.state = TurnState.SILENCE
            return SpeechEnded(
                at_ms=now_ms,
                onset_ms=self._onset_ms,
                last_voiced_ms=self._last_voiced_ms,
                too_short=self._last_voiced_ms - self._onset_ms < config.min_turn_ms,
            )

        if not voiced:
            if state is TurnState.ONSET and (
                now_ms - self._last_voiced_ms > config.onset_gap_ms
                or now_ms - self._onset_ms >= config.start_window_ms
            ):
                self.state = TurnState.SILENCE
            return None

        # a voiced frame in SILENCE or ONSET
        if state is TurnState.SILENCE or now_ms - self._onset_ms > config.start_window_ms:
            self.state = TurnState.ONSET
            self._onset_ms = now_ms - config.frame_ms
            self._voiced_ms = 0
            self._periodic = self._voicing is None
        self._voiced_ms += config.frame_ms
        self._last_voiced_ms = now_ms
        if not self._periodic:
            assert self._voicing is not None
            self._periodic = self._voicing()
        if self._voiced_ms < config.start_ms or not self._periodic:
            return None
        self.state = TurnState.SPEECH
        return SpeechStarted(at_ms=now_ms, onset_ms=self._onset_ms)
