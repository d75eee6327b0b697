"""A call's two sides, time-aligned on the media timeline (8 kHz mu-law).

The caller track is placed by the Media Streams timestamp of each frame, so
lost frames leave silence rather than shifting what follows. The agent track
holds only what Twilio played: chunks whose marks came back, placed where
they played, and of a chunk cut by `clear` only the part before the clear.
Audio dropped by a clear is never in the recording.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from media import mulaw
from media.frames import MULAW_SILENCE, SAMPLE_RATE

BYTES_PER_MS = SAMPLE_RATE // 1000
DEFAULT_MAX_MS = 4 * 3600 * 1000


class CallRecording:
    def __init__(self, max_ms: int = DEFAULT_MAX_MS) -> None:
        self._caller = bytearray()
        self._agent = bytearray()
        self._max_bytes = max_ms * BYTES_PER_MS
        self.truncated = False

    @classmethod
    def from_tracks(cls, caller: bytes, agent: bytes, *, truncated: bool = False) -> CallRecording:
        """A finished recording rebuilt from its two mu-law tracks (an archive job)."""
        recording = cls(max_ms=max(len(caller), len(agent)) // BYTES_PER_MS + 1)
        recording._caller += caller
        recording._agent += agent
        recording.truncated = truncated
        return recording

    def caller(self, timestamp_ms: int, frame: bytes) -> None:
        """A caller frame whose audio starts at `timestamp_ms`."""
        at = timestamp_ms * BYTES_PER_MS
        if at == len(self._caller) and at + len(frame) <= self._max_bytes:
            self._caller += frame  # the per-frame case: contiguous
            return
        self._place(self._caller, at, frame)

    def agent(self, start_ms: int, audio: bytes) -> None:
        """Agent audio that played from `start_ms`."""
        self._place(self._agent, start_ms * BYTES_PER_MS, audio)

    def _place(self, track: bytearray, at: int, audio: bytes) -> None:
        end = at + len(audio)
        if end > self._max_bytes:
            self.truncated = True
            audio = audio[: max(0, self._max_bytes - at)]
            end = at + len(audio)
        if at > len(track):
            track += bytes([MULAW_SILENCE]) * (at - len(track))
        track[at:end] = audio

    @property
    def duration_ms(self) -> int:
        return max(len(self._caller), len(self._agent)) // BYTES_PER_MS

    def caller_mulaw(self, start_ms: int = 0, end_ms: int | None = None) -> bytes:
        end = None if end_ms is None else end_ms * BYTES_PER_MS
        return bytes(self._caller[start_ms * BYTES_PER_MS : end])

    def agent_mulaw(self) -> bytes:
        return bytes(self._agent)

    def stereo(self) -> npt.NDArray[np.int16]:
        """(n, 2) int16: caller left, agent right, padded to the same length."""
        n = max(len(self._caller), len(self._agent))
        out = np.zeros((n, 2), dtype=np.int16)
        out[: len(self._caller), 0] = mulaw.decode_array(bytes(self._caller))
        out[: len(self._agent), 1] = mulaw.decode_array(bytes(self._agent))
        return out
