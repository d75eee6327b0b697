"""Deepgram streaming STT against a local server that speaks Deepgram's live
protocol (agent/fake_deepgram.py), driven by the official SDK (deepgram-sdk v7).

The fake transcribes each utterance with a script here (the shipped fixture
calls go through it with pocketsphinx in test_speech_replay.py). Its voice
detector runs on the audio's own clock, so what it answers depends only on the
bytes and messages it got; `flush` (a Configure round trip) waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from synth import caller_audio

from agent.fake_deepgram import FakeDeepgram, scripted
from agent.ports import SpeechStartedHint, SttEvent, SttFailure, Transcript
from agent.stt_deepgram import (
    DeepgramAuthError,
    DeepgramOptions,
    DeepgramSpeechToText,
    DeepgramStream,
)

KEY = "dg-test-key"
FAST = DeepgramOptions(backoff_s=0.01, max_backoff_s=0.05, finalize_timeout_s=0.2, give_up_after_s=0.5)


@contextlib.asynccontextmanager
async def deepgram(
    transcripts: list[str], options: DeepgramOptions = FAST, **fake_options: object
) -> AsyncIterator[tuple[FakeDeepgram, DeepgramSpeechToText]]:
    fake = FakeDeepgram(KEY, transcribe=scripted(transcripts), **fake_options)  # type: ignore[arg-type]
    async with fake.running():
        yield fake, DeepgramSpeechToText(KEY, url=fake.base_url, options=options)


class Call:
    """Feeds a stream 20 ms frames as a session does, media clock included."""

    def __init__(self, stream: DeepgramStream, events: list[SttEvent]) -> None:
        self.stream = stream
        self.events = events
        self.now_ms = 0

    async def play(self, audio: bytes, *, sync_every: int = 5) -> None:
        for i in range(0, len(audio), 160):
            self.now_ms += 20
            self.stream.feed(audio[i : i + 160], b"", self.now_ms)
            if (i // 160) % sync_every == 0:
                await self.stream.flush()
        await self.stream.flush()

    def finals(self) -> list[Transcript]:
        return [e for e in self.events if isinstance(e, Transcript) and e.is_final]

    def turn_ends(self) -> list[Transcript]:
        return [e for e in self.finals() if e.end_of_turn]


async def open_call(stt: DeepgramSpeechToText) -> Call:
    events: list[SttEvent] = []
    stream = await stt.open_stream("CAtest", events.append)
    return Call(stream, events)


async def test_protocol_query_header_audio_and_control_messages():
    async with deepgram(["billing"], partial_every_ms=200) as (fake, stt):
        call = await open_call(stt)
        call.stream.set_phrases(["billing", "support"])
        audio = caller_audio(3000, [(1000, 600)])
        await call.play(audio)
        call.stream.set_phrases(["one", "two"])
        await call.stream.flush()
        call.stream.end_turn(call.now_ms)
        await call.stream.flush()
        await call.stream.aclose()
        await asyncio.wait_for(fake.connections[0].closed.wait(), 5)

    conn = fake.connections[0]
    assert conn.path == "/v1/listen"
    assert conn.headers["Authorization"] == f"Token {KEY}"
    q = {k: v if k == "keyterm" else v[0] for k, v in conn.query.items()}
    assert q == q | {
        "model": "nova-3", "encoding": "mulaw", "sample_rate": "8000", "channels": "1",
        "interim_results": "true", "endpointing": "300", "utterance_end_ms": "1000",
        "vad_events": "true", "smart_format": "true",
    }
    assert q["keyterm"] == ["billing", "support"]  # the phrases set before the socket opened
    assert bytes(conn.audio) == audio  # sent as received: mu-law, no decode
    keyterms = [c["keyterms"] for c in conn.controls if c["type"] == "Configure" and c.get("keyterms")]
    assert keyterms[-1] == ["one", "two"]
    assert conn.control_types()[-1] == "CloseStream"
    # Deepgram's speech_final closed the turn; the later end_turn is answered at
    # once, empty, with no Finalize (nothing left to flush)
    assert "Finalize" not in conn.control_types()
    hints = [e for e in call.events if isinstance(e, SpeechStartedHint)]
    assert len(hints) == 1 and hints[0].barge_in and 900 <= hints[0].at_ms <= 1100
    partials = [e for e in call.events if isinstance(e, Transcript) and not e.is_final]
    assert partials and partials[0].text == "Billing."
    ends = call.turn_ends()
    assert [e.text for e in ends] == ["Billing.", ""]
    assert 900 <= ends[0].start_ms <= 1100 and ends[0].end_ms <= 2000


async def test_end_turn_before_deepgram_endpoints_sends_finalize_and_answers_from_it():
    slow_endpointing = replace(FAST, endpointing_ms=2000)
    async with deepgram(["technical support"], slow_endpointing) as (fake, stt):
        call = await open_call(stt)
        await call.play(caller_audio(2200, [(500, 800)]))
        call.stream.end_turn(call.now_ms)
        await call.stream.flush()
        assert [e.text for e in call.turn_ends()] == ["Technical support."]
        assert fake.connections[0].control_types().count("Finalize") == 1
        assert fake.connections[0].sent[-2]["from_finalize"] is True
        await call.stream.aclose()


async def test_an_unanswered_finalize_ends_the_turn_empty_after_the_timeout():
    async with deepgram([], answer_empty_finalize=False) as (_fake, stt):
        call = await open_call(stt)
        await call.play(caller_audio(600, []))
        call.stream.end_turn(call.now_ms)
        async with asyncio.timeout(5):
            while not call.turn_ends():
                await asyncio.sleep(0.02)
        assert call.turn_ends()[0].text == "" and call.turn_ends()[0].end_ms == call.now_ms
        await call.stream.aclose()


async def test_a_dropped_socket_reconnects_and_sends_the_unfinalized_audio_again():
    async with deepgram(["agent please"]) as (fake, stt):
        call = await open_call(stt)
        speech = caller_audio(2600, [(1000, 900)], seed=3)
        await call.play(speech[: 1400 * 8])  # mid-utterance: nothing final yet
        await fake.drop()
        await call.play(speech[1400 * 8 :])
        call.stream.end_turn(call.now_ms)
        await call.stream.flush()
        await call.stream.aclose()

    assert len(fake.connections) == 2
    second = bytes(fake.connections[1].audio)
    assert speech.endswith(second) and len(second) >= 1600 * 8  # the utterance's start went again
    assert any(isinstance(e, SttFailure) and e.retryable for e in call.events)
    ends = call.turn_ends()
    assert ends[0].text == "Agent please."
    assert 900 <= ends[0].start_ms <= 1100  # on the call's timeline, not the new socket's


async def test_a_refused_key_on_reconnect_fails_for_good_and_answers_waiting_turns():
    async with deepgram([], replace(FAST, endpointing_ms=5000)) as (fake, stt):
        call = await open_call(stt)
        await call.play(caller_audio(1000, [(200, 500)]))
        fake.reject_next = [401] * 5
        await fake.drop()
        call.stream.end_turn(call.now_ms)
        async with asyncio.timeout(5):
            while not any(isinstance(e, SttFailure) and not e.retryable for e in call.events):
                await asyncio.sleep(0.02)
        failure = next(e for e in call.events if isinstance(e, SttFailure) and not e.retryable)
        assert "DEEPGRAM_API_KEY" in failure.reason
        assert [e.text for e in call.turn_ends()] == [""]
        call.stream.end_turn(call.now_ms)  # after the failure: answered at once
        assert len(call.turn_ends()) == 2
        await call.stream.aclose()


async def test_refused_parameters_fail_at_once_without_retrying():
    async with deepgram([]) as (fake, stt):
        fake.reject_next = [400]
        call = await open_call(stt)
        async with asyncio.timeout(5):
            while not call.events:
                await asyncio.sleep(0.01)
        failure = call.events[0]
        assert isinstance(failure, SttFailure) and not failure.retryable and "400" in failure.reason
        assert not fake.connections
        await call.stream.aclose()


async def test_an_unreachable_server_fails_after_the_reconnect_window():
    async with deepgram([]) as (_fake, stt):
        call = await open_call(stt)
        await call.play(caller_audio(200, []))
    # the server is gone: connects fail until give_up_after_s
    async with asyncio.timeout(10):
        while not any(isinstance(e, SttFailure) and not e.retryable for e in call.events):
            await asyncio.sleep(0.02)
    await call.stream.aclose()


async def test_keepalive_when_no_audio_flows():
    async with deepgram([], replace(FAST, keepalive_s=0.05)) as (fake, stt):
        call = await open_call(stt)
        async with asyncio.timeout(5):
            while "KeepAlive" not in (fake.connections[0].control_types() if fake.connections else []):
                await asyncio.sleep(0.02)
        await call.stream.aclose()


async def test_a_model_without_mid_stream_keyterms_keeps_the_connect_time_ones(caplog):
    async with deepgram([]) as (fake, stt):
        fake.configure_supported = False
        call = await open_call(stt)
        await call.play(caller_audio(200, []))
        call.stream.set_phrases(["billing"])
        call.stream.set_phrases(["support"])
        await call.stream.flush()
        call.stream.set_phrases(["agent"])
        await call.stream.flush()
        await call.stream.aclose()
    configures = [c for c in fake.connections[0].controls if c.get("keyterms")]
    assert len(configures) <= 2  # refused once: no more keyterm updates
    assert "cannot change keyterms mid-call" in caplog.text


async def test_check_tells_a_refused_key_from_a_good_one():
    async with deepgram([]) as (fake, stt):
        await stt.check()
        with pytest.raises(DeepgramAuthError, match="401"):
            await DeepgramSpeechToText("wrong", url=fake.base_url, options=FAST).check()


async def test_fake_refuses_bad_query_parameters():
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    async with deepgram([]) as (fake, _):
        with pytest.raises(InvalidStatus) as refused:
            async with connect(
                f"{fake.ws_url}/v1/listen?encoding=linear16&sample_rate=8000",
                additional_headers={"Authorization": f"Token {KEY}"},
            ):
                pass
        assert refused.value.response.status_code == 400
