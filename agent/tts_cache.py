"""A prompt cache in front of any `TextToSpeech` (eSpeak now, Polly later).

Flows say the same few prompts on every call, so the agent's turn overhead
(final transcript in → first audio frame out) is mostly a cache lookup:

- a hit yields the whole prompt at once, on the caller's task, with no thread
  hop and no await on anything else;
- a miss starts one synthesis task for that key; every concurrent request for
  the same key streams from it as chunks arrive, so a prompt is synthesized
  once however many calls ask for it at the same moment;
- a reader that stops early (barge-in) does not stop the synthesis: the task
  finishes and fills the cache for the next call.

Entries are least-recently-used, bounded by the total bytes of audio kept.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

from agent.ports import TextToSpeech

log = logging.getLogger(__name__)

Key = tuple[str, str, str, str]  # (engine name, voice, language, text)


@dataclass(eq=False)
class _Flight:
    chunks: list[bytes] = field(default_factory=list)
    done: bool = False
    error: BaseException | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def notify(self) -> None:
        old, self.changed = self.changed, asyncio.Event()
        old.set()


class CachedTextToSpeech:
    """`TextToSpeech` that remembers whole prompts (8 kHz mu-law bytes).

    `max_bytes` bounds the audio kept (8 000 bytes per second of speech; the
    default 16 MiB holds ~35 minutes of prompts). A prompt larger than that
    is synthesized but not kept.
    """

    def __init__(self, inner: TextToSpeech, *, max_bytes: int = 16 * 1024 * 1024) -> None:
        self.inner = inner
        self.name = inner.name
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[Key, bytes] = OrderedDict()
        self._size = 0
        self._flights: dict[Key, _Flight] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def size_bytes(self) -> int:
        return self._size

    def get(self, text: str, voice: str, language: str) -> bytes | None:
        """The cached prompt, if any (counts as a use for the LRU order)."""
        key = (self.inner.name, voice, language, text)
        audio = self._entries.get(key)
        if audio is not None:
            self._entries.move_to_end(key)
        return audio

    async def synthesize(self, text: str, voice: str, language: str) -> AsyncGenerator[bytes, None]:
        audio = self.get(text, voice, language)
        if audio is not None:
            self.hits += 1
            yield audio
            return
        key = (self.inner.name, voice, language, text)
        flight = self._flights.get(key)
        if flight is None:
            self.misses += 1
            flight = self._flights[key] = _Flight()
            task = asyncio.create_task(self._fill(key, flight), name=f"tts-cache {text[:30]!r}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        sent = 0
        while True:
            while sent < len(flight.chunks):
                yield flight.chunks[sent]
                sent += 1
            if flight.done:
                if flight.error is not None:
                    raise flight.error
                return
            await flight.changed.wait()

    async def _fill(self, key: Key, flight: _Flight) -> None:
        _, voice, language, text = key
        try:
            async for chunk in self.inner.synthesize(text, voice, language):
                if chunk:
                    flight.chunks.append(chunk)
                    flight.notify()
        except asyncio.CancelledError:
            flight.error = ConnectionAbortedError("prompt cache closed during synthesis")
            raise
        except Exception as exc:
            log.warning("tts %s failed for %r: %r", self.inner.name, text[:60], exc)
            flight.error = exc
        else:
            self._store(key, b"".join(flight.chunks))
        finally:
            flight.done = True
            self._flights.pop(key, None)
            flight.notify()

    def _store(self, key: Key, audio: bytes) -> None:
        if len(audio) > self.max_bytes:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self._size -= len(old)
        self._entries[key] = audio
        self._size += len(audio)
        while self._size > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._size -= len(evicted)

    async def aclose(self) -> None:
        """Cancel syntheses still running (readers get an error), then close the engine."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        close = getattr(self.inner, "aclose", None)
        if close is not None:
            await close()
