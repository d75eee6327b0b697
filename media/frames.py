"""Twilio Media Streams framing: 8 kHz mu-law, 20 ms per media message."""

SAMPLE_RATE = 8000
FRAME_MS = 20
FRAME_SAMPLES = SAMPLE_RATE * FRAME_MS // 1000  # 160
FRAME_BYTES = FRAME_SAMPLES  # one mu-law byte per sample
MULAW_SILENCE = 0xFF  # mu-law code of PCM 0


def split_frames(mulaw: bytes, frame_bytes: int = FRAME_BYTES) -> list[bytes]:
    """Cut mu-law audio into frames; the last one is padded with mu-law silence."""
    frames = [mulaw[i : i + frame_bytes] for i in range(0, len(mulaw), frame_bytes)]
    if frames and len(frames[-1]) < frame_bytes:
        frames[-1] = frames[-1] + bytes([MULAW_SILENCE]) * (frame_bytes - len(frames[-1]))
    return frames


def duration_ms(mulaw: bytes) -> int:
    """Duration of 8 kHz mu-law audio in whole milliseconds."""
    return len(mulaw) * 1000 // SAMPLE_RATE
