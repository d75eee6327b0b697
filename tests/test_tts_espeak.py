"""eSpeak NG text to speech, the Polly → eSpeak voice map, and the prompt cache.

Real libespeak-ng throughout; the only double is `CountingTts`, a real
`TextToSpeech` that counts how often the cache reaches the engine behind it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import numpy as np
import pytest

from agent.tts_cache import CachedTextToSpeech
from agent.tts_espeak import EspeakEngine, EspeakError, EspeakTextToSpeech, synthesize_8k
from agent.voices import POLLY_VOICES, parse_voice
from media import mulaw

GREETING = "Thanks for calling Acme. Say billing, support or agent, or press 1, 2 or 0."


async def collect(chunks: AsyncIterator[bytes]) -> list[bytes]:
    return [c async for c in chunks]


async def test_greeting_is_plausible_telephone_audio() -> None:
    chunks = await collect(EspeakTextToSpeech().synthesize(GREETING, "Polly.Joanna", "en-US"))
    audio = b"".join(chunks)
    seconds = len(audio) / 8000  # 8 kHz mu-law: one byte per sample
    # 14 words of prompt: 3.5–9 s at any sane speaking rate
    assert 3.5 < seconds < 9.0
    assert len(chunks) > 10  # streamed as eSpeak produces it, not one blob
    pcm = mulaw.decode_array(audio).astype(np.float64)
    frames = pcm[: len(pcm) // 160 * 160].reshape(-1, 160)
    rms = np.sqrt((frames**2).mean(axis=1))
    assert (rms > 1000).mean() > 0.4  # mostly speech …
    assert (rms < 100).any()  # … with pauses between phrases


async def test_concurrent_prompts_from_many_tasks_are_each_intact() -> None:
    # libespeak-ng carries a little state (pitch flutter) from one prompt to
    # the next, so outputs match in length to a few samples, not in bytes.
    tts = EspeakTextToSpeech()
    texts = ["Thank you. Goodbye.", "Transferring you to an agent.", "Please hold.", GREETING]
    alone = [b"".join(await collect(tts.synthesize(t, "Polly.Joanna", "en-US"))) for t in texts]
    together = await asyncio.gather(
        *(collect(tts.synthesize(t, "Polly.Joanna", "en-US")) for t in texts * 3)
    )
    for chunks, reference in zip(together, alone * 3, strict=True):
        assert abs(len(b"".join(chunks)) - len(reference)) < 80  # 10 ms


async def test_leaving_early_stops_synthesis_and_the_engine_stays_usable() -> None:
    tts = EspeakTextToSpeech()
    stream = tts.synthesize(GREETING * 5, "Polly.Joanna", "en-US")
    first = await anext(stream)
    assert first
    await stream.aclose()  # barge-in
    again = b"".join(await collect(tts.synthesize("Goodbye.", "Polly.Joanna", "en-US")))
    assert len(again) > 2000


async def test_an_unknown_espeak_voice_is_an_error_not_silence() -> None:
    with pytest.raises(EspeakError, match="no voice"):
        await collect(EspeakTextToSpeech().synthesize("hello", "espeak:xx-nowhere", "en-US"))
    # and the engine still works afterwards
    assert len(synthesize_8k("hello", "en-us+f3")) > 1000


def test_polly_voices_map_to_espeak_voices() -> None:
    assert parse_voice("Polly.Joanna").espeak_voice == "en-us+f3"
    assert parse_voice("Polly.Matthew").espeak_voice == "en-us+m3"
    assert parse_voice("Polly.Amy").espeak_voice == "en+f3"
    assert parse_voice("Polly.Brian").espeak_voice == "en+m3"
    neural = parse_voice("Polly.Joanna-Neural")
    assert (neural.polly_id, neural.engine, neural.espeak_voice) == ("Joanna", "neural", "en-us+f3")
    plain = parse_voice("joanna")
    assert plain.polly_id == "Joanna" and plain.polly is not None
    assert plain.polly.gender == "female" and plain.polly.language == "en-US"
    assert parse_voice("Polly.Lupe").espeak_voice == "es-419+f3"
    assert parse_voice("espeak:en-us-nyc+m2").espeak_voice == "en-us-nyc+m2"


def test_unknown_voice_falls_back_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="agent.voices")
    first = parse_voice("Polly.Nobody", "en-GB")
    parse_voice("Polly.Nobody", "en-GB")
    assert first.polly is None and first.espeak_voice == "en+f3"
    assert [r.getMessage() for r in caplog.records].count(
        "voice 'Polly.Nobody' is not a Polly voice callstream knows; using eSpeak en+f3"
    ) == 1


def test_every_mapped_voice_exists_in_espeak() -> None:
    engine = EspeakEngine.shared()
    voices = {parse_voice(v.voice_id).espeak_voice for v in POLLY_VOICES.values()}
    for voice in sorted(voices):
        got: list[int] = []

        def sink(samples: np.ndarray, got: list[int] = got) -> bool:
            got.append(len(samples))
            return True

        engine.synthesize("one", voice, 160, sink)
        assert sum(got) > 1000, voice


# --- the cache ------------------------------------------------------------------------


class CountingTts:
    """A real TextToSpeech (eSpeak) that counts the calls reaching it."""

    def __init__(self) -> None:
        self.inner = EspeakTextToSpeech()
        self.name = "counting"
        self.calls: list[str] = []
        self.fail_next = False

    async def synthesize(self, text: str, voice: str, language: str) -> AsyncIterator[bytes]:
        self.calls.append(text)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("engine down")
        async for chunk in self.inner.synthesize(text, voice, language):
            await asyncio.sleep(0)  # let readers interleave
            yield chunk


async def test_cache_hit_returns_identical_bytes_without_the_engine() -> None:
    engine = CountingTts()
    cache = CachedTextToSpeech(engine)
    first = b"".join(await collect(cache.synthesize(GREETING, "Polly.Joanna", "en-US")))
    again = await collect(cache.synthesize(GREETING, "Polly.Joanna", "en-US"))
    assert again == [first]  # one chunk, the whole prompt
    assert engine.calls == [GREETING]
    assert (cache.hits, cache.misses) == (1, 1)
    # another voice is another prompt
    await collect(cache.synthesize(GREETING, "Polly.Matthew", "en-US"))
    assert len(engine.calls) == 2


async def test_concurrent_misses_synthesize_once() -> None:
    engine = CountingTts()
    cache = CachedTextToSpeech(engine)
    results = await asyncio.gather(
        *(collect(cache.synthesize(GREETING, "Polly.Joanna", "en-US")) for _ in range(6))
    )
    joined = {b"".join(r) for r in results}
    assert len(joined) == 1 and len(joined.pop()) > 20_000
    assert engine.calls == [GREETING]
    assert all(len(r) > 1 for r in results)  # every reader streamed


async def test_a_reader_leaving_early_still_fills_the_cache() -> None:
    engine = CountingTts()
    cache = CachedTextToSpeech(engine)
    stream = cache.synthesize(GREETING, "Polly.Joanna", "en-US")
    await anext(stream)
    await stream.aclose()  # barge-in on the first chunk
    for _ in range(100):
        if cache.get(GREETING, "Polly.Joanna", "en-US") is not None:
            break
        await asyncio.sleep(0.01)
    full = b"".join(await collect(cache.synthesize(GREETING, "Polly.Joanna", "en-US")))
    assert len(full) > 20_000 and engine.calls == [GREETING]


async def test_failures_reach_every_reader_and_are_not_cached() -> None:
    engine = CountingTts()
    cache = CachedTextToSpeech(engine)
    engine.fail_next = True
    outcomes = await asyncio.gather(
        *(collect(cache.synthesize("Goodbye.", "Polly.Joanna", "en-US")) for _ in range(3)),
        return_exceptions=True,
    )
    assert all(isinstance(o, RuntimeError) for o in outcomes)
    assert b"".join(await collect(cache.synthesize("Goodbye.", "Polly.Joanna", "en-US")))
    assert engine.calls == ["Goodbye.", "Goodbye."]


async def test_cache_evicts_least_recently_used_beyond_max_bytes() -> None:
    engine = CountingTts()
    one = len(b"".join(await collect(engine.synthesize("Goodbye.", "Polly.Joanna", "en-US"))))
    cache = CachedTextToSpeech(engine, max_bytes=int(one * 2.5))
    for text in ("Goodbye.", "Hello.", "Goodbye.", "Thanks."):
        await collect(cache.synthesize(text, "Polly.Joanna", "en-US"))
    assert cache.size_bytes <= cache.max_bytes
    assert cache.get("Goodbye.", "Polly.Joanna", "en-US") is not None  # used recently
    assert cache.get("Hello.", "Polly.Joanna", "en-US") is None  # evicted
    await cache.aclose()
