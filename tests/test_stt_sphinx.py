"""The offline recognizer on real audio: eSpeak NG voices through the phone
line (8 kHz mu-law with line noise), decoded by real pocketsphinx.

Voices and sentences are ones docs/offline-speech.md measured as recognised
(or rejected) reliably; decoding is deterministic, so these are exact.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest
from speech_clips import speech_8k

from agent.ports import SpeechStartedHint, SttEvent, SttFailure, Transcript
from agent.sphinx_grammar import GrammarSpec, Segment, judge, normalize_phrases
from agent.stt_sphinx import SphinxSpeechToText, SphinxStream
from media import mulaw

MENU = [
    *("billing", "bill", "invoice", "payment"),
    *("support", "technical", "internet"),
    *("agent", "operator", "person", "representative"),
]
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture(scope="module")
def stt() -> Iterator[SphinxSpeechToText]:
    provider = SphinxSpeechToText(workers=1)
    yield provider
    provider._pool.close()


def phone_line(speech: np.ndarray | None, before_ms: int = 500, after_ms: int = 900) -> bytes:
    """Speech between stretches of line noise, through mu-law: 16-bit PCM bytes."""
    parts = [np.zeros(before_ms * 8)]
    if speech is not None:
        parts.append(speech.astype(np.float64) * 0.8)
    parts.append(np.zeros(after_ms * 8))
    x = np.concatenate(parts)
    x += np.random.default_rng(len(x)).normal(0.0, 25.0, len(x))
    pcm = np.clip(np.round(x), -32768, 32767).astype(np.int16)
    return mulaw.decode(mulaw.encode(pcm))


class Call:
    """Drives a stream as the session does: one 20 ms frame at a time."""

    def __init__(self, stream: SphinxStream, events: list[SttEvent]) -> None:
        self.stream = stream
        self.events = events
        self.now = 0

    def play(self, pcm: bytes) -> None:
        for i in range(0, len(pcm) - 319, 320):
            self.now += 20
            frame = pcm[i : i + 320]
            self.stream.feed(mulaw.encode(frame), frame, self.now)

    async def play_live(self, pcm: bytes) -> None:
        """As replay lockstep does: settle after every 200 ms of audio."""
        for i in range(0, len(pcm), 3200):
            self.play(pcm[i : i + 3200])
            await self.stream.flush()

    async def turn(self, pcm: bytes, *, live: bool = False) -> Transcript:
        if live:
            await self.play_live(pcm)
        else:
            self.play(pcm)
        self.stream.end_turn(self.now)
        await self.stream.flush()
        finals = [e for e in self.events if isinstance(e, Transcript) and e.is_final]
        assert finals and finals[-1].end_of_turn
        return finals[-1]


async def open_call(stt: SphinxSpeechToText, phrases: list[str] = MENU) -> Call:
    events: list[SttEvent] = []
    stream = await stt.open_stream("CAtest", events.append)
    stream.set_phrases(phrases)
    return Call(stream, events)


def said(text: str, voice: str) -> bytes:
    return phone_line(speech_8k(text, voice, 165))


async def test_menu_keywords_are_recognised(stt: SphinxSpeechToText) -> None:
    call = await open_call(stt)
    for text, voice in [
        ("billing", "en-us+f2"),
        ("agent", "en-us+f5"),
        ("representative", "en-us+m1"),
        ("operator", "en-us+m3"),
    ]:
        final = await call.turn(said(text, voice))
        assert final.text == text, voice
        assert final.confidence >= 0.6
    await call.stream.aclose()


async def test_keyword_inside_a_request_is_found(stt: SphinxSpeechToText) -> None:
    call = await open_call(stt)
    final = await call.turn(said("can I speak to an operator", "en-us+m3"))
    assert "operator" in final.text.split()
    final = await call.turn(said("technical support", "en-us+m1"))
    assert final.text == "technical"
    await call.stream.aclose()


async def test_out_of_grammar_speech_is_rejected(stt: SphinxSpeechToText) -> None:
    call = await open_call(stt)
    for text, voice in [
        ("I want to order a pizza", "en-us+m3"),
        ("what time is it", "en-us+f2"),
    ]:
        final = await call.turn(said(text, voice))
        assert final.text == "", text
    await call.stream.aclose()


async def test_spoken_digits_come_out_as_words(stt: SphinxSpeechToText) -> None:
    call = await open_call(stt, DIGITS)
    final = await call.turn(said("four eight one", "en-us+m3"))
    assert final.text == "four eight one"
    await call.stream.aclose()


async def test_partial_results_and_speech_start_arrive_before_the_final(
    stt: SphinxSpeechToText,
) -> None:
    call = await open_call(stt)
    await call.turn(said("representative", "en-us+m1"), live=True)
    kinds = [
        type(e).__name__ + ("/final" if getattr(e, "is_final", False) else "") for e in call.events
    ]
    assert kinds[0] == "SpeechStartedHint"
    assert "Transcript" in kinds[1:-1]  # a partial
    assert kinds[-1] == "Transcript/final"
    start = call.events[0]
    final = call.events[-1]
    assert isinstance(start, SpeechStartedHint) and isinstance(final, Transcript)
    assert 300 <= start.at_ms <= 700  # speech began 500 ms into the audio
    assert final.start_ms == start.at_ms and final.end_ms == call.now
    await call.stream.aclose()


async def test_end_of_turn_on_line_noise_gives_an_empty_final(stt: SphinxSpeechToText) -> None:
    call = await open_call(stt)
    final = await call.turn(phone_line(None, 1000, 1000))
    assert (final.text, final.is_final, final.end_of_turn) == ("", True, True)
    assert not any(isinstance(e, SpeechStartedHint) for e in call.events)
    await call.stream.aclose()


async def test_flush_when_idle_returns_at_once(stt: SphinxSpeechToText) -> None:
    call = await open_call(stt)
    await asyncio.wait_for(call.stream.flush(), 0.5)
    call.play(phone_line(None, 200, 0))
    await asyncio.wait_for(call.stream.flush(), 0.5)
    await call.stream.aclose()
    await asyncio.wait_for(call.stream.flush(), 0.5)  # closed: returns too


async def test_no_events_after_aclose(stt: SphinxSpeechToText) -> None:
    call = await open_call(stt)
    call.play(said("billing", "en-us+f2"))
    await call.stream.aclose()
    seen = len(call.events)
    call.play(said("billing", "en-us+f2"))
    call.stream.end_turn(call.now)
    await asyncio.sleep(0.3)
    assert len(call.events) == seen


async def test_phrases_apply_from_the_turn_after_they_are_set(stt: SphinxSpeechToText) -> None:
    call = await open_call(stt, ["billing"])
    assert (await call.turn(said("agent", "en-us+f5"))).text == ""
    call.stream.set_phrases(["agent"])
    assert (await call.turn(said("agent", "en-us+f5"))).text == "agent"
    await call.stream.aclose()


async def test_decoders_are_pooled_across_streams_and_results_repeat(
    stt: SphinxSpeechToText,
) -> None:
    audio = said("billing", "en-us+f2")
    results = []
    for _ in range(3):
        call = await open_call(stt)
        results.append(await call.turn(audio))
        await call.stream.aclose()
    assert stt.decoders_created == 1  # one worker, one decoder, reused
    assert len({(r.text, r.confidence) for r in results}) == 1


async def test_concurrent_calls_share_the_pool() -> None:
    provider = SphinxSpeechToText(workers=2)
    try:
        calls = [await open_call(provider) for _ in range(4)]
        texts = await asyncio.gather(
            *(
                c.turn(said(w, "en-us+f2"))
                for c, w in zip(calls, ["billing", "agent"] * 2, strict=True)
            )
        )
        assert [t.text for t in texts] == ["billing", "agent"] * 2
        assert provider.decoders_created <= 2
        for c in calls:
            await c.stream.aclose()
    finally:
        await provider.aclose()


async def test_a_broken_model_becomes_an_stt_failure_event() -> None:
    provider = SphinxSpeechToText(workers=1, model_dir="/nonexistent/model")
    try:
        call = await open_call(provider)
        final = await call.turn(said("billing", "en-us+f2"))
        failures = [e for e in call.events if isinstance(e, SttFailure)]
        assert failures and not failures[0].retryable
        assert "/nonexistent/model" in failures[0].reason
        assert final.text == "" and final.end_of_turn  # the turn still ends
        await call.stream.aclose()
    finally:
        await provider.aclose()


# --- the grammar rules, without audio --------------------------------------------------


def test_phrases_are_normalised_and_unknown_words_dropped() -> None:
    spec, dropped = normalize_phrases(
        ["Billing!", "technical support", "Acmeflux", "1", "billing"], lambda w: w != "acmeflux"
    )
    assert spec == GrammarSpec((("billing",), ("technical", "support"), ("one",)))
    assert dropped == ["Acmeflux"]
    digits, _ = normalize_phrases(["1", "2", "oh"], lambda w: True)
    assert digits is not None and digits.digits


def test_keywords_must_cover_most_of_the_speech() -> None:
    spec = GrammarSpec((("billing",),))
    keyword_only = [Segment("<sil>", 0, 20), Segment("billing", 21, 60), Segment("<sil>", 61, 90)]
    assert judge(keyword_only, spec, min_coverage=0.6).text == "billing"
    in_garbage = [Segment("i", 0, 10), Segment("want(2)", 11, 40), Segment("billing", 41, 60)]
    assert judge(in_garbage, spec, min_coverage=0.6).text == ""
    assert judge(in_garbage, spec, tolerated=["i", "want"], min_coverage=0.8).text == "billing"
