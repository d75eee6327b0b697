"""Synthetic telephone audio for tests: a noise floor with voiced-speech stand-ins."""

from __future__ import annotations

import numpy as np

from media import mulaw

RATE = 8000


def voiced(n: int, level_dbfs: float, f0: float = 130.0) -> np.ndarray:
    """A voiced-speech stand-in: harmonics of a wobbling f0 shaped by two formants."""
    t = np.arange(n) / RATE
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.03 * np.sin(2 * np.pi * 4 * t))) / RATE
    x = np.zeros(n)
    for k in range(1, int(3400 // f0)):
        fk = k * f0
        formants = (
            1 + 2 * np.exp(-(((fk - 700) / 200) ** 2)) + 1.5 * np.exp(-(((fk - 1200) / 250) ** 2))
        )
        x += formants / k * np.sin(k * phase)
    return x * 32768 * 10 ** (level_dbfs / 20) / np.sqrt(np.mean(x**2))


def noise(n: int, level_dbfs: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 32768 * 10 ** (level_dbfs / 20), n)


def pcm(x: np.ndarray) -> bytes:
    return np.clip(np.round(x), -32768, 32767).astype("<i2").tobytes()


def caller_audio(total_ms: int, bursts: list[tuple[int, int]], seed: int = 0) -> bytes:
    """Mu-law audio: a -60 dBFS noise floor with voiced bursts (onset_ms, length_ms)."""
    x = noise(total_ms * 8, -60.0, seed=seed)
    for onset_ms, speech_ms in bursts:
        a, b = onset_ms * 8, min(len(x), (onset_ms + speech_ms) * 8)
        ramp = np.arange(b - a)
        envelope = np.minimum(1.0, np.minimum(ramp / 120, (b - a - ramp) / 240))  # 15 ms attack, 30 ms release
        if b > a:
            x[a:b] += voiced(b - a, -22.0) * envelope
    return mulaw.encode(np.clip(np.round(x), -32768, 32767).astype(np.int16))
