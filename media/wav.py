"""WAV files in and out: fixture calls (caller audio of any rate, width and
channel count) and call recordings (stereo 8 kHz, caller left, agent right).

The only module in `media` that touches files. Reading parses the RIFF chunks
itself rather than using the stdlib `wave` module, which before Python 3.12
rejects WAVE_FORMAT_EXTENSIBLE, the header most tools write for 24-bit and
multi-channel audio. Writing uses `wave` (16-bit PCM only).
"""

from __future__ import annotations

import io
import os
import struct
import wave
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from media import mulaw
from media.frames import SAMPLE_RATE
from media.resample import resample

Samples = npt.NDArray[np.int16]
StrPath = str | os.PathLike[str]

# format tags, from Microsoft's mmreg.h
WAVE_FORMAT_PCM = 0x0001
WAVE_FORMAT_IEEE_FLOAT = 0x0003
WAVE_FORMAT_ALAW = 0x0006
WAVE_FORMAT_MULAW = 0x0007
WAVE_FORMAT_EXTENSIBLE = 0xFFFE


class WavError(ValueError):
    """The file is not a WAV this module can read; the message says what to do."""


@dataclass(frozen=True, slots=True, eq=False)
class WavAudio:
    """Decoded audio: int16 `samples` of shape (n,) for mono or (n, channels)."""

    samples: Samples
    rate: int

    @property
    def channels(self) -> int:
        return 1 if self.samples.ndim == 1 else int(self.samples.shape[1])

    @property
    def duration_ms(self) -> int:
        return len(self.samples) * 1000 // self.rate


def read_wav(path: StrPath) -> WavAudio:
    """Read integer PCM (8, 16, 24 or 32-bit; any rate; any channel count) or
    G.711 mu-law WAV into int16 samples; wider samples keep their top 16 bits.

    Raises `WavError` for anything else (float, ADPCM, A-law, not RIFF/WAVE).
    """
    with open(path, "rb") as f:
        data = f.read()
    try:
        return _parse(data)
    except WavError as e:
        raise WavError(f"{os.fspath(path)}: {e}") from None


def _parse(data: bytes) -> WavAudio:
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise WavError("not a RIFF/WAVE file")
    fmt: bytes | None = None
    pcm: bytes | None = None
    pos = 12
    while pos + 8 <= len(data):
        chunk_id, size = struct.unpack_from("<4sI", data, pos)
        body = data[pos + 8 : pos + 8 + size]  # a streamed file may claim more than it holds
        if chunk_id == b"fmt " and fmt is None:
            fmt = body
        elif chunk_id == b"data" and pcm is None:
            pcm = body
        pos += 8 + size + (size & 1)  # chunks are word-aligned
    if fmt is None or len(fmt) < 16:
        raise WavError("no valid 'fmt ' chunk")
    if pcm is None:
        raise WavError("no 'data' chunk")

    tag, channels, rate, _byte_rate, block_align, bits = struct.unpack_from("<HHIIHH", fmt)
    if tag == WAVE_FORMAT_EXTENSIBLE:
        if len(fmt) < 26:
            raise WavError("WAVE_FORMAT_EXTENSIBLE header is truncated")
        (tag,) = struct.unpack_from("<H", fmt, 24)  # first two bytes of the SubFormat GUID
    if channels < 1 or rate < 1:
        raise WavError(f"bad header: {channels} channels at {rate} Hz")
    if tag == WAVE_FORMAT_IEEE_FLOAT:
        raise WavError(
            f"{bits}-bit float WAV is not supported: convert to integer PCM "
            "(e.g. `sox in.wav -b 16 out.wav`)"
        )
    width = block_align // channels  # container bytes per sample; `bits` may be fewer
    if tag == WAVE_FORMAT_MULAW and width == 1:
        return WavAudio(_shape(mulaw.decode_array(_whole_frames(pcm, block_align)), channels), rate)
    if tag != WAVE_FORMAT_PCM:
        raise WavError(
            f"compressed WAV (format tag 0x{tag:04x}) is not supported: convert to "
            "16-bit PCM (e.g. `sox in.wav -e signed-integer -b 16 out.wav`)"
        )
    if width not in (1, 2, 3, 4) or block_align != width * channels:
        raise WavError(f"unsupported PCM layout: {bits} bits, block align {block_align}")
    raw = _whole_frames(pcm, block_align)
    return WavAudio(_shape(_to_int16(raw, width), channels), rate)


def _whole_frames(pcm: bytes, block_align: int) -> bytes:
    return pcm[: len(pcm) - len(pcm) % block_align]


def _to_int16(raw: bytes, width: int) -> Samples:
    """Little-endian PCM samples of `width` bytes → int16 (their top 16 bits)."""
    if width == 1:  # 8-bit WAV is unsigned, centred on 128
        u8 = np.frombuffer(raw, dtype=np.uint8)
        return ((u8.astype(np.int16) - 128) << 8).astype(np.int16)
    if width == 2:
        return np.frombuffer(raw, dtype="<i2").astype(np.int16)
    if width == 3:  # the two high bytes of each 3-byte sample form its int16
        top = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3)[:, 1:]
        return np.ascontiguousarray(top).view("<i2").reshape(-1).astype(np.int16)
    return (np.frombuffer(raw, dtype="<i4") >> 16).astype(np.int16)


def _shape(flat: Samples, channels: int) -> Samples:
    return flat if channels == 1 else flat.reshape(-1, channels)


def to_mono(samples: Samples) -> Samples:
    """Average the channels of (n, ch) samples into (n,); mono passes through."""
    if samples.ndim == 1:
        return samples
    if samples.ndim != 2:
        raise ValueError(f"expected samples of shape (n,) or (n, channels), got {samples.shape}")
    mean: npt.NDArray[np.float64] = samples.astype(np.float64).mean(axis=1)
    return np.round(mean).astype(np.int16)


def load_caller_mulaw(path: StrPath) -> bytes:
    """Any readable WAV → mono → 8 kHz → mu-law: a fixture caller as Twilio sends it."""
    audio = read_wav(path)
    return mulaw.encode(resample(to_mono(audio.samples), audio.rate, SAMPLE_RATE))


def write_wav(path: StrPath, samples: Samples, rate: int) -> None:
    """Write int16 samples, shape (n,) mono or (n, channels) e.g. stereo, as 16-bit PCM."""
    if samples.dtype != np.int16:
        raise TypeError(f"write_wav takes int16 samples, got {samples.dtype}")
    if samples.ndim not in (1, 2) or (samples.ndim == 2 and samples.shape[1] < 1):
        raise ValueError(f"expected samples of shape (n,) or (n, channels), got {samples.shape}")
    channels = 1 if samples.ndim == 1 else int(samples.shape[1])
    with wave.open(os.fspath(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.ascontiguousarray(samples, dtype="<i2").tobytes())


def wav_bytes(samples: Samples, rate: int) -> bytes:
    """The same file as `write_wav`, as bytes (the archive stores objects, not paths)."""
    if samples.dtype != np.int16:
        raise TypeError(f"wav_bytes takes int16 samples, got {samples.dtype}")
    if samples.ndim not in (1, 2) or (samples.ndim == 2 and samples.shape[1] < 1):
        raise ValueError(f"expected samples of shape (n,) or (n, channels), got {samples.shape}")
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1 if samples.ndim == 1 else int(samples.shape[1]))
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.ascontiguousarray(samples, dtype="<i2").tobytes())
    return out.getvalue()


def stereo(left: Samples, right: Samples) -> Samples:
    """Two mono tracks → (n, 2), the shorter padded with silence at its end."""
    n = max(len(left), len(right))
    out = np.zeros((n, 2), dtype=np.int16)
    out[: len(left), 0] = left
    out[: len(right), 1] = right
    return out
