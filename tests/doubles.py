"""Test doubles for the speech ports: deterministic, instant, no models.

They implement the real ports (agent/ports.py), so the session cannot tell
them from sphinx or eSpeak; the real providers have their own tests and the
end-to-end replay tests use them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence

import numpy as np

from agent.ports import SttEvent, Transcript
from media import mulaw


class ToneTextToSpeech:
    """Speaks every prompt as a tone, `ms_per_char` long per character."""

    name = "tone"

    def __init__(self, ms_per_char: int = 40, chunk_ms: int = 500, fail_on: str | None = None) -> None:
        self.ms_per_char = ms_per_char
        self.chunk_ms = chunk_ms
        self.fail_on = fail_on
        self.spoken: list[str] = []

    def audio_for(self, text: str) -> bytes:
        n = max(1, len(text)) * self.ms_per_char * 8
        t = np.arange(n) / 8000
        return mulaw.encode((3000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16))

    async def synthesize(self, text: str, voice: str, language: str) -> AsyncIterator[bytes]:
        self.spoken.append(text)
        if self.fail_on is not None and self.fail_on in text:
            raise RuntimeError("synthesis engine exploded")
        audio = self.audio_for(text)
        step = self.chunk_ms * 8
        for i in range(0, len(audio), step):
            await asyncio.sleep(0)
            yield audio[i : i + step]


class ScriptedStream:
    def __init__(self, owner: ScriptedSpeechToText, on_event: Callable[[SttEvent], None]) -> None:
        self._owner = owner
        self._on_event = on_event
        self.frames = 0
        self.phrases: list[tuple[str, ...]] = []
        self.closed = False
        self._pending: list[asyncio.Handle] = []

    def set_phrases(self, phrases: Sequence[str]) -> None:
        self.phrases.append(tuple(phrases))

    def feed(self, mulaw_frame: bytes, pcm16: bytes, now_ms: int) -> None:
        self.frames += 1

    def end_turn(self, now_ms: int) -> None:
        text = self._owner.transcripts.pop(0) if self._owner.transcripts else ""
        event = Transcript(text, True, 0.9 if text else 0.0, max(0, now_ms - 1000), now_ms, end_of_turn=True)
        self._pending.append(asyncio.get_running_loop().call_soon(self._deliver, event))

    def emit(self, event: SttEvent) -> None:
        """Deliver an event now, as the provider would on its own."""
        self._on_event(event)

    def _deliver(self, event: SttEvent) -> None:
        if not self.closed:
            self._on_event(event)

    async def flush(self) -> None:
        await asyncio.sleep(0)

    async def aclose(self) -> None:
        self.closed = True


class ScriptedSpeechToText:
    """Each caller turn is recognised as the next transcript of the script."""

    name = "scripted"

    def __init__(self, transcripts: Sequence[str] = ()) -> None:
        self.transcripts = list(transcripts)
        self.streams: list[ScriptedStream] = []

    async def open_stream(self, call_sid: str, on_event: Callable[[SttEvent], None]) -> ScriptedStream:
        stream = ScriptedStream(self, on_event)
        self.streams.append(stream)
        return stream
