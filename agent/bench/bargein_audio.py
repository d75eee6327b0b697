"""Caller audio for `callstream bench bargein`: speech clips with their true
onset, and noise-only fixtures that must not cut the agent off.

Speech is eSpeak NG (the voices the fixture calls use), words and short
requests a caller says over a prompt, at three levels of active speech on a
-62 dBFS line-noise floor (fixtures/make_calls.py's floor). Ground truth for
the onset comes from the clip itself: the start of the first 5 ms window
whose level is within 20 dB of the clip's loudest 5 ms, i.e. where the word
becomes audible, before any detector has had a say. That is earlier than
`callstream replay`'s -35 dBFS frame threshold, so latencies here are, if
anything, on the long side.

Noise-only fixtures (line hiss, mains hum, clicks, cough-like and breath-like
bursts), each at several levels: any `clear` they cause is a false barge-in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from media import mulaw

RATE = 8000
FLOOR_RMS = 25.0  # -62 dBFS, as fixtures/make_calls.py: never digital silence
WINDOW = 40  # 5 ms
WORDS = ("agent", "billing", "support", "operator", "yes", "no", "hello",
         "I need help with my bill", "stop", "representative please")
VOICES = ("en-us+m1", "en-us+m3", "en-us+f2", "en-us+f5")
SPEECH_LEVELS_DBFS = (-20.0, -26.0, -32.0)  # RMS of the voiced part
RATE_WPM = 165

Pcm = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Clip:
    name: str
    audio: bytes  # 8 kHz mu-law, the caller's track from where the clip starts
    onset_ms: float | None  # true speech onset in the clip (audible); None for noise
    voiced_onset_ms: float | None = None  # where it is within 20 dB of its peak (the vowel, mostly)


def _dbfs(rms: float) -> float:
    return 20 * float(np.log10(max(rms, 1e-9) / 32768.0))


def _rms_windows(x: Pcm) -> Pcm:
    n = len(x) // WINDOW * WINDOW
    w = x[:n].reshape(-1, WINDOW)
    return np.asarray(np.sqrt(np.mean(w * w, axis=1)))


def true_onset_ms(x: Pcm, below_peak_db: float = 35.0) -> float:
    """Start of the first 5 ms window of the clean clip within `below_peak_db`
    of its loudest one, and audibly (3 dB) over the line floor."""
    levels = _rms_windows(x)
    threshold = max(levels.max() * 10 ** (-below_peak_db / 20), FLOOR_RMS * 1.41)
    return float(np.argmax(levels >= threshold)) * WINDOW * 1000 / RATE


def floor(n: int, seed: int) -> Pcm:
    return np.random.default_rng(seed).normal(0.0, FLOOR_RMS, n)


def _encode(x: Pcm) -> bytes:
    return mulaw.encode(np.clip(np.round(x), -32768, 32767).astype(np.int16))


def _at_level(x: Pcm, level_dbfs: float) -> Pcm:
    levels = _rms_windows(x)
    voiced = levels[levels >= levels.max() * 0.1]
    active = float(np.sqrt(np.mean(voiced * voiced))) if len(voiced) else 1.0
    return x * (32768 * 10 ** (level_dbfs / 20) / active)


def speech_clips(tail_ms: int = 400) -> list[Clip]:
    """Every word in every voice at every level (the trials cycle through them)."""
    from agent.tts_espeak import synthesize_8k

    clips = []
    seed = 0
    for level in SPEECH_LEVELS_DBFS:
        for i, word in enumerate(WORDS):
            voice = VOICES[(i + int(-level)) % len(VOICES)]
            speech = _at_level(synthesize_8k(word, voice, RATE_WPM).astype(np.float64), level)
            seed += 1
            lead = (seed * 7) % 20 * RATE // 1000  # 0-19 ms: the onset's phase in its frame
            onset = lead * 1000 / RATE + true_onset_ms(speech)
            voiced = lead * 1000 / RATE + true_onset_ms(speech, below_peak_db=20.0)
            x = np.concatenate([np.zeros(lead), speech, np.zeros(tail_ms * RATE // 1000)])
            x = x + floor(len(x), seed)
            clips.append(Clip(f"{word!r} {voice} {level:g}dBFS", _encode(x), onset, voiced))
    return clips


def _burst_envelope(n: int, attack: int, decay: int) -> Pcm:
    t = np.arange(n, dtype=np.float64)
    return np.asarray(np.minimum(1.0, t / max(1, attack)) * np.exp(-np.maximum(0.0, t - attack) / max(1, decay)))


def _lowpass(x: Pcm, a: float) -> Pcm:
    y = np.empty_like(x)
    acc = 0.0
    for i, v in enumerate(x):
        acc += a * (v - acc)
        y[i] = acc
    return y


def _scaled(x: Pcm, level_dbfs: float) -> Pcm:
    rms = float(np.sqrt(np.mean(x * x))) or 1.0
    return x * (32768 * 10 ** (level_dbfs / 20) / rms)


def noise_clip(kind: str, level_dbfs: float, seed: int, ms: int = 4000) -> Clip:
    """`ms` of one noise over the line floor. Levels are RMS over the sound
    (a burst's own duration, a click's peak for clicks)."""
    n = ms * RATE // 1000
    rng = np.random.default_rng(1000 + seed)
    x = floor(n, seed)
    t = np.arange(n) / RATE
    if kind == "hiss":
        x += _scaled(rng.normal(0.0, 1.0, n), level_dbfs)
    elif kind == "hum":  # 60 Hz mains and its harmonics (what leaks through the phone band)
        hum = sum(np.sin(2 * np.pi * 60 * k * t + rng.uniform(0, 6.3)) / k for k in range(1, 11))
        x += _scaled(np.asarray(hum, dtype=np.float64), level_dbfs)
    elif kind == "clicks":  # line pops: 1-2 ms decaying impulses every 150-400 ms
        peak = 32768 * 10 ** (level_dbfs / 20)
        at = int(rng.integers(400, 1200))
        while at < n - 40:
            width = int(rng.integers(8, 17))
            x[at : at + width] += peak * rng.choice([-1.0, 1.0]) * np.exp(-np.arange(width) / 3)
            at += int(rng.integers(1200, 3200))
    elif kind in ("cough", "breath"):
        length, attack, decay, gap, smooth = (
            (2400, 60, 600, 9600, 0.35) if kind == "cough" else (4000, 1600, 1200, 8000, 0.9)
        )  # cough: 300 ms, 8 ms attack, ~75 ms decay; breath: 500 ms, slow swell, brighter
        at = int(rng.integers(1600, 4000))
        while at + length < n:
            burst = _lowpass(rng.normal(0.0, 1.0, length), smooth) * _burst_envelope(length, attack, decay)
            x[at : at + length] += _scaled(burst, level_dbfs)
            at += length + gap + int(rng.integers(0, 2400))
    else:
        raise ValueError(f"unknown noise kind {kind!r}")
    return Clip(f"{kind} {level_dbfs:g}dBFS seed {seed}", _encode(x), None)


NOISES: tuple[tuple[str, tuple[float, ...]], ...] = (
    ("hiss", (-50.0, -40.0, -30.0)),
    ("hum", (-30.0, -20.0)),
    ("clicks", (-20.0, -10.0)),
    ("cough", (-35.0, -25.0)),
    ("breath", (-45.0, -35.0)),
)


def noise_clips(seeds: int = 2) -> list[Clip]:
    return [noise_clip(kind, level, seed) for kind, levels in NOISES for level in levels for seed in range(seeds)]


def floor_frames(seconds: int = 20, seed: int = 99) -> bytes:
    """Line floor the caller's track carries when nobody speaks (cycled)."""
    return _encode(floor(seconds * RATE, seed))


def dbfs_of(audio: bytes) -> float:
    x = mulaw.decode_array(audio).astype(np.float64)
    return _dbfs(float(np.sqrt(np.mean(x * x))))
