from media.frames import (
    FRAME_BYTES,
    FRAME_MS,
    FRAME_SAMPLES,
    MULAW_SILENCE,
    SAMPLE_RATE,
    duration_ms,
    split_frames,
)
from media.mulaw import decode


def test_constants_describe_twilio_media_frames() -> None:
    assert (SAMPLE_RATE, FRAME_MS, FRAME_SAMPLES, FRAME_BYTES) == (8000, 20, 160, 160)
    assert decode(bytes([MULAW_SILENCE])) == b"\x00\x00"


def test_split_frames_exact_multiple() -> None:
    audio = bytes(range(256)) + bytes(64)  # 320 bytes
    frames = split_frames(audio)
    assert frames == [audio[:160], audio[160:]]


def test_split_frames_pads_last_frame_with_silence() -> None:
    frames = split_frames(b"\x01" * 170)
    assert [len(f) for f in frames] == [160, 160]
    assert frames[1] == b"\x01" * 10 + bytes([MULAW_SILENCE]) * 150


def test_split_frames_other_sizes_and_empty() -> None:
    assert split_frames(b"") == []
    assert split_frames(b"\x02" * 5, frame_bytes=4) == [b"\x02" * 4, b"\x02" + b"\xff" * 3]


def test_duration_ms() -> None:
    assert duration_ms(b"") == 0
    assert duration_ms(bytes(160)) == 20
    assert duration_ms(bytes(8000)) == 1000
    assert duration_ms(bytes(7)) == 0  # whole milliseconds, rounded down
    assert duration_ms(bytes(12)) == 1
