"""Per-frame voice activity: webrtcvad's verdict gated by frame energy, against
a fixed floor and against the line's own noise floor.

webrtcvad adapts to the noise it hears, and while it adapts it calls noise
speech: after digital silence, -50 dBFS white noise is "speech" in nearly every
20 ms frame for two to five seconds (aggressiveness 2); 60 Hz mains hum with
its harmonics is "speech" for as long as it lasts. So a frame counts as speech
only when webrtcvad says so AND its mean-square level is

- above `energy_floor_dbfs` (-45): the level faint noise and a far-off voice
  stay under, and
- `margin_db` (6 dB) above the line's noise floor, tracked per call. The
  floor settles near the quieter frames of a steady noise, whose 20 ms frames
  stay within ±1-2 dB of each other (hiss, hum); 6 dB is clear of that and
  still hears a voice 8 dB over -30 dBFS hiss or hum (tests/test_media_vad.py).
  A voice less than 6 dB over the line's noise is not speech here.

The noise floor (inline in `is_speech`):

- warm-up, the first `warmup_ms` (200 ms) of the call: the floor follows the
  level (half-way to each frame) and no frame is speech. Line hiss and hum are
  there from the first packet of a call; this is where they are measured.
  The cost: a caller already talking then is taken for the floor until a
  pause pulls it down (BENCHMARKS.md has the figures).
- then, a frame quieter than the floor pulls it a quarter of the way down
  (in mean square: a lost packet's digital-silence frame lowers it 1.25 dB,
  not to nothing); a louder one lets it rise `floor_rise_db_per_s` (10 dB/s),
  never above the frame itself. Speech has dips between syllables that keep
  the floor at the line's noise (a perfectly steady tone 8 dB over the noise
  is absorbed after ~0.2 s); a line that gets steadily noisier mid-call is
  absorbed at 10 dB/s. Until then such a step passes `is_speech` (its first
  60 ms look exactly like a vowel's onset to webrtcvad and to energy); what
  keeps it from starting a turn is voicing, below.
- never below `_MIN_FLOOR_DBFS` (-90 dBFS), so it can rise again after digital
  silence.

Voicing (`periodic`): coughs, breaths, a new hiss mid-call pass both gates,
loud and abrupt as speech onsets are; they are not periodic at a speaking
pitch, and every word has a vowel that is. media/turns.py asks `periodic`
for the frames of an onset and starts a turn only once one is (agent/session.py
wires `TurnDetector(voicing=vad.periodic)`).

Cost (20 ms frames at 8 kHz, one core of the dev machine): webrtcvad ≈ 1.4 µs,
the energy of a frame ≈ 1.5 µs (numpy float64 dot product; the cheapest of the
options measured, see `_energy`), the floor update a few float operations.
webrtcvad runs first on every frame, so its adaptive noise model sees the same
stream it would without the gate; the energy is now computed on every frame
(the floor needs it).
"""

from __future__ import annotations

import math

import numpy as np
import webrtcvad

FULL_SCALE = 32768.0
"""0 dBFS: a square wave at ±32768 (a full-scale sine measures -3 dBFS)."""

WEBRTCVAD_RATES = (8000, 16000, 32000, 48000)
WEBRTCVAD_FRAME_MS = (10, 20, 30)

_I16 = np.dtype("<i2")
_F64 = np.dtype(np.float64)

PITCH_HZ = (80, 400)  # the voice pitches `periodic` looks for
PERIODIC_THRESHOLD = 0.6  # see `periodic`

_MIN_FLOOR_DBFS = -90.0
_WARMUP_STEP = 0.5  # during warm-up the floor goes half-way to each frame's level
_FALL_STEP = 0.25  # a frame below the floor pulls it a quarter of the way down


def _energy(pcm16: bytes) -> float:
    """Sum of squared samples of little-endian int16 PCM (exact below 2**53).

    Measured per 160-sample frame: float64 dot 1.5 µs, float32 1.6, int64 1.6,
    `math.hypot(*memoryview.cast("h"))` 3.3, `sum(map(mul, a, a))` 7.4;
    `audioop.rms` 0.2 µs but it is deprecated in 3.11 (warns on import) and
    removed in 3.13.
    """
    x = np.frombuffer(pcm16, dtype=_I16).astype(_F64)
    return float(x.dot(x))


def frame_dbfs(pcm16: bytes) -> float:
    """RMS level of 16-bit little-endian PCM in dBFS; -inf for digital silence."""
    n = len(pcm16) // 2
    energy = _energy(pcm16)
    if energy == 0.0:
        return -math.inf
    return 10.0 * math.log10(energy / n / (FULL_SCALE * FULL_SCALE))


class VoiceActivity:
    """Is this frame speech? webrtcvad AND mean square above `energy_floor_dbfs`
    AND `margin_db` above the call's noise floor (see the module doc).

    `aggressiveness` is webrtcvad's mode, 0 (lenient) to 3 (strict). Frames
    are 10, 20 or 30 ms of 16-bit little-endian mono PCM at `sample_rate`.
    Stateful (webrtcvad and the noise floor adapt to what they hear): one
    instance per call, fed every frame in order.
    """

    __slots__ = (
        "_floor", "_frames", "_last", "_margin", "_max_lag", "_min_lag", "_min_mean_square",
        "_prev", "_vad", "_warmup_left", "aggressiveness", "energy_floor_dbfs", "margin_db",
        "sample_rate",
    )

    def __init__(
        self,
        aggressiveness: int = 2,
        energy_floor_dbfs: float = -45.0,
        sample_rate: int = 8000,
        *,
        margin_db: float = 6.0,
        warmup_ms: int = 200,
        floor_rise_db_per_s: float = 10.0,
    ) -> None:
        if aggressiveness not in (0, 1, 2, 3):
            raise ValueError(f"aggressiveness must be 0, 1, 2 or 3, got {aggressiveness}")
        if sample_rate not in WEBRTCVAD_RATES:
            raise ValueError(f"webrtcvad takes {WEBRTCVAD_RATES} Hz, got {sample_rate}")
        if margin_db < 0 or warmup_ms < 0 or floor_rise_db_per_s < 0:
            raise ValueError(
                f"margin_db, warmup_ms and floor_rise_db_per_s cannot be negative: "
                f"{margin_db}, {warmup_ms}, {floor_rise_db_per_s}"
            )
        self.aggressiveness = aggressiveness
        self.energy_floor_dbfs = energy_floor_dbfs
        self.margin_db = margin_db
        self.sample_rate = sample_rate
        self._vad = webrtcvad.Vad(aggressiveness)
        self._min_mean_square = _mean_square(energy_floor_dbfs)
        self._margin = 10.0 ** (margin_db / 10.0)
        self._floor = _mean_square(_MIN_FLOOR_DBFS)
        self._warmup_left = sample_rate * warmup_ms // 1000  # samples
        # pitch periods, in samples, that `periodic` looks for: 400 Hz down to 80 Hz
        self._min_lag = sample_rate // PITCH_HZ[1]
        self._max_lag = sample_rate // PITCH_HZ[0]
        self._prev = b""  # the frame before the latest one
        self._last = b""  # the latest frame
        # frame length in bytes → (samples, the floor's rise factor per frame);
        # the dict also validates the length with no extra cost
        self._frames: dict[int, tuple[int, float]] = {}
        for ms in WEBRTCVAD_FRAME_MS:
            samples = sample_rate * ms // 1000
            self._frames[2 * samples] = (samples, 10.0 ** (floor_rise_db_per_s * ms / 1000 / 10.0))

    @property
    def noise_floor_dbfs(self) -> float:
        """The call's noise floor as tracked so far (RMS, dBFS)."""
        return 10.0 * math.log10(self._floor / (FULL_SCALE * FULL_SCALE))

    def is_speech(self, pcm16_frame: bytes) -> bool:
        frame = self._frames.get(len(pcm16_frame))
        if frame is None:
            raise ValueError(
                f"a frame is 10, 20 or 30 ms of 16-bit PCM at {self.sample_rate} Hz "
                f"({sorted(self._frames)} bytes), got {len(pcm16_frame)} bytes"
            )
        samples, rise = frame
        self._prev = self._last
        self._last = pcm16_frame
        voiced = self._vad.is_speech(pcm16_frame, self.sample_rate)
        level = _energy(pcm16_frame) / samples  # mean square
        floor = self._floor
        if self._warmup_left > 0:
            self._warmup_left -= samples
            self._floor = max(_MIN_FLOOR, floor + _WARMUP_STEP * (level - floor))
            return False
        if level < floor:
            self._floor = max(_MIN_FLOOR, floor + _FALL_STEP * (level - floor))
        else:
            self._floor = min(floor * rise, level)
        return bool(voiced) and level > self._min_mean_square and level > floor * self._margin

    def periodic(self) -> bool:
        """Is the latest frame fed to `is_speech` voiced, i.e. periodic at a
        speaking pitch? The largest Pearson correlation of the frame with the
        audio 2.5 to 12.5 ms before it (400 to 80 Hz; it reaches into the frame
        before) is over `PERIODIC_THRESHOLD` (0.6). 10 ms frames at 8 kHz look
        back 79 samples at most (pitch down to 101 Hz).

        Vowels and voiced consonants are; hiss, breath, coughs, clicks, 60 Hz
        hum and digital silence are not. Measured on bench `bargein`'s audio
        (agent/bench/bargein_audio.py): over the 3028 frames of its noise
        fixtures (6 seeds) that pass `is_speech`, the largest value is 0.54 (a
        cough); for each of its 30 eSpeak clips, the best of the first five
        frames passing `is_speech` is at least 0.66. Those voices are
        synthetic, hence more periodic than callers: the threshold is the
        first thing to check on recorded calls.

        Computed on demand: media/turns.py asks for the voiced frames of an
        onset until one is periodic. ≈ 15-50 µs a call (numpy; the lower on an
        idle core), asked on 1.3 % of the frames of bench `bargein`'s speech
        calls and 5 % of its noise calls.
        """
        prev, last = self._prev, self._last
        if len(prev) != len(last) or not last:
            return False  # the first frame of the call: nothing before it
        n = len(last) // 2
        lo, hi = self._min_lag, min(self._max_lag, n - 1)
        y = np.frombuffer(prev + last, dtype=_I16).astype(_F64)
        # Pearson correlation of the frame with each earlier window of its
        # length: both without their mean (a cough's low rumble, or a click
        # shifting a window's mean, would otherwise correlate at every lag)
        x = y[n:]
        seg = x - float(x.sum()) / n
        e0 = float(seg.dot(seg))
        if e0 == 0.0:
            return False
        # window k is y[a : a+n], a = n-hi+k, the lag hi-k, for k in 0 .. hi-lo;
        # c[k] = seg · window (seg's mean is 0, so the window's mean drops out),
        # e[k] = the window's energy about its mean, from running sums
        c = np.correlate(y[n - hi : 2 * n - lo], seg, mode="valid")
        sums = np.cumsum(y)
        squares = np.cumsum(y * y)
        first, end = slice(n - hi - 1, n - lo), slice(2 * n - hi - 1, 2 * n - lo)  # a-1 and a+n-1
        total = sums[end] - sums[first]
        e = squares[end] - squares[first] - total * total / n
        return bool((c / np.sqrt(e0 * np.maximum(e, 1.0))).max() > PERIODIC_THRESHOLD)


def _mean_square(dbfs: float) -> float:
    return float((FULL_SCALE * 10.0 ** (dbfs / 20.0)) ** 2)


_MIN_FLOOR = _mean_square(_MIN_FLOOR_DBFS)
