import struct
import wave
from pathlib import Path

import numpy as np
import pytest

from media import mulaw
from media.wav import (
    WavAudio,
    WavError,
    load_caller_mulaw,
    read_wav,
    stereo,
    to_mono,
    write_wav,
)

RAMP = np.array([-32768, -256, -1, 0, 1, 255, 256, 12345, 32767], dtype=np.int16)


def riff(fmt: bytes, data: bytes, extra: bytes = b"") -> bytes:
    """A WAV file from raw chunk bodies (optional chunks between fmt and data)."""
    body = b"WAVE" + chunk(b"fmt ", fmt) + extra + chunk(b"data", data)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def chunk(chunk_id: bytes, body: bytes) -> bytes:
    return chunk_id + struct.pack("<I", len(body)) + body + b"\0" * (len(body) & 1)


def fmt_chunk(tag: int, channels: int, rate: int, width: int, sub_tag: int | None = None) -> bytes:
    block = channels * width
    head = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, 8 * width)
    if sub_tag is None:
        return head
    guid_tail = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
    return head + struct.pack("<HHI", 22, 8 * width, 0) + struct.pack("<H", sub_tag) + guid_tail


def encode_width(samples: np.ndarray, width: int) -> bytes:
    """int16 samples as `width`-byte little-endian PCM with the same top 16 bits."""
    wide = samples.astype(np.int64)
    if width == 1:
        return ((wide >> 8) + 128).astype(np.uint8).tobytes()
    low_bits = 0x5A if width == 3 else 0x5A5A  # noise below the top 16 bits: truncated away
    value = (wide << (8 * (width - 2))) | (low_bits if width > 2 else 0)
    return b"".join(int(v).to_bytes(width, "little", signed=True) for v in value)


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_read_each_width_via_stdlib_writer(tmp_path: Path, width: int) -> None:
    path = tmp_path / f"w{width}.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(width)
        w.setframerate(11025)
        w.writeframes(encode_width(RAMP, width))
    audio = read_wav(path)
    expected = (RAMP >> 8 << 8).astype(np.int16) if width == 1 else RAMP
    assert audio.rate == 11025 and audio.channels == 1
    assert audio.samples.dtype == np.int16 and audio.samples.shape == (len(RAMP),)
    assert np.array_equal(audio.samples, expected)


@pytest.mark.parametrize("width", [2, 3, 4])
def test_read_extensible_multichannel(tmp_path: Path, width: int) -> None:
    channels = np.stack([RAMP, -(RAMP // 2), RAMP // 3], axis=1).astype(np.int16)  # (n, 3)
    path = tmp_path / "ext.wav"
    data = encode_width(channels.reshape(-1), width)
    path.write_bytes(riff(fmt_chunk(0xFFFE, 3, 48000, width, sub_tag=1), data))
    audio = read_wav(str(path))
    assert audio.rate == 48000 and audio.channels == 3
    assert np.array_equal(audio.samples, channels)


def test_read_mulaw_wav_and_skip_unknown_chunks(tmp_path: Path) -> None:
    codes = bytes(range(0, 256, 3))  # odd length: the data chunk gets a pad byte
    path = tmp_path / "ulaw.wav"
    path.write_bytes(riff(fmt_chunk(7, 1, 8000, 1), codes, extra=chunk(b"LIST", b"INFOabc")))
    audio = read_wav(path)
    assert audio.rate == 8000
    assert audio.samples.tobytes() == mulaw.decode(codes)


def test_truncated_data_keeps_whole_frames(tmp_path: Path) -> None:
    full = riff(fmt_chunk(1, 2, 8000, 2), bytes(range(16)))
    path = tmp_path / "cut.wav"
    path.write_bytes(full[:-3])  # data claims 16 bytes, holds 13: three stereo frames
    assert read_wav(path).samples.shape == (3, 2)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (riff(fmt_chunk(3, 1, 8000, 4), bytes(8)), "float WAV is not supported"),
        (riff(fmt_chunk(0xFFFE, 1, 8000, 4, sub_tag=3), bytes(8)), "float WAV is not supported"),
        (riff(fmt_chunk(2, 1, 8000, 1), bytes(8)), r"compressed WAV \(format tag 0x0002\)"),
        (riff(fmt_chunk(6, 1, 8000, 1), bytes(8)), r"compressed WAV \(format tag 0x0006\)"),
        (b"ID3\x03" + bytes(100), "not a RIFF/WAVE file"),
        (b"RIFF\x04\x00\x00\x00WAVE" + chunk(b"data", bytes(4)), "no valid 'fmt ' chunk"),
        (b"RIFF\x04\x00\x00\x00WAVE" + chunk(b"fmt ", fmt_chunk(1, 1, 8000, 2)), "no 'data' chunk"),
        (riff(fmt_chunk(1, 1, 8000, 8), bytes(8)), "unsupported PCM layout"),
    ],
)
def test_unsupported_files_raise_wav_error(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(WavError, match=message) as info:
        read_wav(path)
    assert str(path) in str(info.value)  # says which file
    assert isinstance(info.value, ValueError)


def test_write_read_round_trip_mono_and_stereo(tmp_path: Path) -> None:
    write_wav(tmp_path / "mono.wav", RAMP, 8000)
    mono = read_wav(tmp_path / "mono.wav")
    assert mono.rate == 8000 and np.array_equal(mono.samples, RAMP)

    both = stereo(RAMP, RAMP[:4])
    write_wav(tmp_path / "stereo.wav", both, 8000)
    with wave.open(str(tmp_path / "stereo.wav")) as w:  # the stdlib reads what we wrote
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (2, 2, 8000)
    back = read_wav(tmp_path / "stereo.wav")
    assert back.channels == 2 and np.array_equal(back.samples, both)


def test_write_rejects_other_dtypes_and_shapes(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="int16"):
        write_wav(tmp_path / "x.wav", RAMP.astype(np.float32), 8000)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shape"):
        write_wav(tmp_path / "x.wav", np.zeros((2, 2, 2), dtype=np.int16), 8000)


def test_stereo_pads_the_shorter_track() -> None:
    out = stereo(np.array([1, 2, 3], dtype=np.int16), np.array([9], dtype=np.int16))
    assert out.dtype == np.int16
    assert out.tolist() == [[1, 9], [2, 0], [3, 0]]
    assert stereo(np.array([], dtype=np.int16), np.array([5], dtype=np.int16)).tolist() == [[0, 5]]


def test_to_mono_averages_channels() -> None:
    samples = np.array([[32767, 32767], [-32768, -32768], [100, -100], [3, 0]], dtype=np.int16)
    assert to_mono(samples).tolist() == [32767, -32768, 0, 2]  # no overflow; rounds half to even
    assert to_mono(RAMP) is RAMP
    with pytest.raises(ValueError, match="shape"):
        to_mono(np.zeros((1, 1, 1), dtype=np.int16))


def test_load_caller_mulaw_from_stereo_44k(tmp_path: Path) -> None:
    t = np.arange(44100 // 2) / 44100  # 500 ms of 440 Hz on the left, silence on the right
    left = np.round(16000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    write_wav(tmp_path / "caller.wav", stereo(left, np.zeros(0, dtype=np.int16)), 44100)
    codes = load_caller_mulaw(tmp_path / "caller.wav")
    assert len(codes) == 4000  # 500 ms at 8 kHz, one byte per sample
    pcm = mulaw.decode_array(codes).astype(np.float64)
    expected = 8000 * np.sin(2 * np.pi * 440 * np.arange(4000) / 8000)  # mono: (L + R) / 2
    assert np.abs(pcm[200:-200] - expected[200:-200]).max() < 8000 * 0.04  # mu-law ~ 30 dB SNR


def test_wav_audio_properties() -> None:
    audio = WavAudio(np.zeros((8000, 2), dtype=np.int16), 16000)
    assert (audio.channels, audio.duration_ms) == (2, 500)
