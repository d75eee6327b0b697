"""Sample-rate conversion: windowed-sinc polyphase interpolation with numpy.

Used off the per-frame path: fixture WAVs of any rate → 8 kHz, eSpeak's
22 050 Hz → 8 kHz, and telephone 8 kHz → 16 kHz for the offline recognizer,
whose acoustic model is 16 kHz. `Resampler` is streaming: feed chunks, get
the converted chunks, with filter state carried across calls so chunk edges
leave no clicks; `resample` converts a whole signal in one go.
"""

from __future__ import annotations

from math import gcd

import numpy as np
import numpy.typing as npt

Samples = npt.NDArray[np.int16]


def _phase_table(up: int, down: int, half_taps: int) -> tuple[npt.NDArray[np.float64], int]:
    """Filter weights for each of the `up` output phases.

    Output sample j sits at input time t = j * down / up. With base = floor(t)
    and phase = (j * down) mod up, its value is sum over k in
    [base - half + 1, base + half] of x[k] * h(t - k), h a Kaiser-windowed
    sinc whose cutoff is the lower of the two Nyquist rates.
    """
    cutoff = min(1.0, up / down)  # fraction of the input Nyquist rate kept
    half = int(np.ceil(half_taps / cutoff))
    offsets = np.arange(-half + 1, half + 1)  # k - base
    frac = np.arange(up)[:, None] / up  # t - base for each phase
    x = frac - offsets[None, :]  # t - k
    window = np.kaiser(2 * half + 1, 8.0)
    # evaluate the window continuously at x by linear interpolation
    w = np.interp(x, np.arange(-half, half + 1), window, left=0.0, right=0.0)
    h = cutoff * np.sinc(cutoff * x) * w
    # Normalise every phase to unit DC gain: the truncated, windowed kernels
    # sum to slightly different values per phase (0.996 to 1.0 for 8k → 16k),
    # which would ripple a steady signal at the output rate's Nyquist frequency.
    h /= h.sum(axis=1, keepdims=True)
    return h, half


class Resampler:
    """Streaming sample-rate converter for mono int16 audio."""

    def __init__(self, src_rate: int, dst_rate: int, half_taps: int = 16) -> None:
        if src_rate <= 0 or dst_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {src_rate} → {dst_rate}")
        g = gcd(src_rate, dst_rate)
        self.src_rate = src_rate
        self.dst_rate = dst_rate
        self._up = dst_rate // g
        self._down = src_rate // g
        self._table, self._half = _phase_table(self._up, self._down, half_taps)
        # input history: the signal is treated as zero before the first sample
        self._history = np.zeros(self._half, dtype=np.float64)
        self._history_start = -self._half  # input index of _history[0]
        self._next_out = 0  # index of the next output sample

    def process(self, samples: Samples) -> Samples:
        """Convert the next chunk; output lags by the filter's half width."""
        return self._run(np.asarray(samples, dtype=np.float64), final=False)

    def flush(self) -> Samples:
        """Emit what is still held back (as if silence followed)."""
        return self._run(np.zeros(2 * self._half, dtype=np.float64), final=True)

    def _run(self, chunk: npt.NDArray[np.float64], *, final: bool) -> Samples:
        if self.src_rate == self.dst_rate and not final:
            return np.asarray(chunk, dtype=np.int16)
        buf = np.concatenate([self._history, chunk])
        buf_end = self._history_start + len(buf)  # one past the last input index
        # output j is computable when base + half <= buf_end - 1
        last_input = buf_end - 1 - self._half
        if last_input < 0:
            n_out = 0
        else:
            n_out = max(0, (last_input * self._up) // self._down + 1 - self._next_out)
        if final:  # never emit past the end of the real signal
            real_end = buf_end - len(chunk)
            limit = (real_end * self._up + self._down - 1) // self._down
            n_out = max(0, min(n_out, limit - self._next_out))
        out = np.empty(0, dtype=np.float64)
        if n_out:
            j = np.arange(self._next_out, self._next_out + n_out)
            base = (j * self._down) // self._up
            phase = (j * self._down) % self._up
            idx = (base - self._history_start)[:, None] + np.arange(-self._half + 1, self._half + 1)
            out = np.einsum("ij,ij->i", buf[idx], self._table[phase])
            self._next_out += n_out
        # keep what future outputs still need
        next_base = (self._next_out * self._down) // self._up
        keep_from = max(next_base - self._half + 1, self._history_start)
        self._history = buf[keep_from - self._history_start :]
        self._history_start = keep_from
        return np.clip(np.round(out), -32768, 32767).astype(np.int16)


def resample(samples: Samples, src_rate: int, dst_rate: int) -> Samples:
    """Convert a whole mono int16 signal from `src_rate` to `dst_rate`."""
    if src_rate == dst_rate:
        return np.asarray(samples, dtype=np.int16).copy()
    r = Resampler(src_rate, dst_rate)
    return np.concatenate([r.process(samples), r.flush()])
