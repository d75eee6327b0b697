"""Amazon Polly TTS against a local endpoint that speaks Polly's rest-json API
(agent/fake_polly.py, uvicorn on a real socket), driven by boto3."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import boto3
import numpy as np
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from doubles import ScriptedSpeechToText, ToneTextToSpeech
from server import running_server

from agent.fake_polly import FAKE_ACCESS_KEY, FAKE_SECRET_KEY, FakePolly
from agent.serving import base_url_of, bound_socket, serve_in_background
from agent.tts_cache import CachedTextToSpeech
from agent.tts_polly import PollyError, PollyTextToSpeech
from media import mulaw

CREDENTIALS = (FAKE_ACCESS_KEY, FAKE_SECRET_KEY, None)


@contextlib.asynccontextmanager
async def polly(**options: object) -> AsyncIterator[tuple[FakePolly, PollyTextToSpeech]]:
    fake = FakePolly(region="us-east-1")
    sock = bound_socket()
    async with serve_in_background(fake.app, sock):
        tts = PollyTextToSpeech(
            "us-east-1", endpoint_url=base_url_of(sock), credentials=CREDENTIALS, backoff_s=0.01, **options  # type: ignore[arg-type]
        )
        try:
            yield fake, tts
        finally:
            await tts.aclose()


async def collect(tts, text: str, voice: str = "Polly.Joanna") -> bytes:
    return b"".join([chunk async for chunk in tts.synthesize(text, voice, "en-US")])


async def test_request_shape_and_real_speech_back():
    async with polly() as (fake, tts):
        audio = await collect(tts, "Thanks for calling Acme.")
        await collect(tts, "<speak>Hello <break time='200ms'/> there.</speak>", "Polly.Geraint")
    assert fake.requests[0] == {
        "Engine": "neural", "OutputFormat": "pcm", "SampleRate": "8000",
        "Text": "Thanks for calling Acme.", "TextType": "text", "VoiceId": "Joanna",
    }
    assert fake.requests[1]["TextType"] == "ssml" and fake.requests[1]["Engine"] == "standard"  # Geraint: no neural
    pcm = mulaw.decode_array(audio).astype(float)
    assert 1.0 < len(pcm) / 8000 < 3.0  # about a second and a half of speech at 8 kHz
    assert np.sqrt(np.mean(pcm**2)) > 500  # speech, not silence


async def test_the_first_audio_arrives_before_polly_has_sent_the_rest():
    async with polly() as (fake, tts):
        fake.hold = asyncio.Event()
        chunks = tts.synthesize("Please enter your six digit account number.", "Polly.Joanna", "en-US")
        first = await asyncio.wait_for(anext(chunks), 10)  # while the fake holds the rest back
        assert first
        fake.hold.set()
        rest = b"".join([c async for c in chunks])
        assert len(rest) > len(first)


async def test_throttling_and_5xx_are_retried_with_backoff(caplog):
    async with polly() as (fake, tts):
        fake.fail_next = ["ThrottlingException", 503]
        audio = await collect(tts, "Goodbye.")
    assert audio and len(fake.requests) == 3
    assert caplog.text.count("retrying") == 2


async def test_a_request_polly_refuses_is_not_retried():
    async with polly() as (fake, tts):
        with pytest.raises(PollyError, match="EngineNotSupportedException") as failed:
            await collect(tts, "Hello.", "Polly.Joanna-Generative")  # not an engine this Joanna has
        assert not failed.value.retryable and len(fake.requests) == 1
        with pytest.raises(PollyError, match="not a Polly voice"):
            await collect(tts, "Hello.", "Bob")
        assert len(fake.requests) == 1


async def test_a_stalled_polly_times_out_and_gives_up():
    async with polly(read_timeout_s=0.2, attempts=2) as (fake, tts):
        fake.stall_s = 1.0
        with pytest.raises(PollyError, match="unreachable") as failed:
            await collect(tts, "Hello.")
        assert failed.value.retryable and len(fake.requests) == 2


async def test_wrong_credentials_are_refused():
    async with polly() as (fake, tts):
        fake.access_key = "AKIAOTHER"
        with pytest.raises(PollyError, match="UnrecognizedClientException") as failed:
            await collect(tts, "Hello.")
        assert not failed.value.retryable


async def test_an_explicit_neural_voice_without_neural_is_spoken_standard():
    async with polly() as (fake, tts):
        await collect(tts, "Hello.", "Polly.Geraint-Neural")
    assert fake.requests[0]["Engine"] == "standard"


async def test_the_prompt_cache_keeps_polly_prompts_by_engine_name():
    async with polly() as (fake, inner):
        tts = CachedTextToSpeech(inner)
        first = await collect(tts, "Thank you. Goodbye.")
        again = await collect(tts, "Thank you. Goodbye.")
        assert first == again and len(fake.requests) == 1 and tts.hits == 1
        assert next(iter(tts._entries))[0] == "polly"


async def test_the_fake_validates_like_polly():
    fake = FakePolly()
    sock = bound_socket()
    async with serve_in_background(fake.app, sock):
        client = boto3.session.Session(
            aws_access_key_id=FAKE_ACCESS_KEY, aws_secret_access_key=FAKE_SECRET_KEY, region_name="us-east-1"
        ).client("polly", endpoint_url=base_url_of(sock), config=Config(retries={"total_max_attempts": 1}))

        def code(**params: str) -> str:
            try:
                client.synthesize_speech(**{"OutputFormat": "pcm", "Text": "hi", "VoiceId": "Joanna", **params})
            except ClientError as exc:
                return f"{exc.response['ResponseMetadata']['HTTPStatusCode']} {exc.response['Error']['Code']}"
            return "ok"

        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, lambda: code(SampleRate="22050")) == "400 InvalidSampleRateException"
        assert await loop.run_in_executor(None, lambda: code(TextType="ssml", Text="<speak>hi")) == "400 InvalidSsmlException"
        assert await loop.run_in_executor(None, lambda: code(VoiceId="Nobody")) == "400 ValidationException"
        assert await loop.run_in_executor(None, lambda: code(Engine="neural", VoiceId="Geraint")) == "400 EngineNotSupportedException"
        assert await loop.run_in_executor(None, lambda: code(Text="x" * 3001)) == "400 TextLengthExceededException"
        response = await loop.run_in_executor(
            None, lambda: client.synthesize_speech(OutputFormat="pcm", SampleRate="8000", Text="Hello there.", VoiceId="Joanna")
        )
        assert response["ContentType"] == "audio/pcm" and response["RequestCharacters"] == 12
        response["AudioStream"].close()


async def test_a_prompt_polly_cannot_say_is_spoken_by_the_fallback_voice(caplog):
    async with polly(attempts=1) as (fake, inner):
        fake.fail_next = [500] * 10
        fallback = ToneTextToSpeech()
        stt = ScriptedSpeechToText([])
        async with running_server(tts=inner, tts_fallback=fallback, stt=stt) as server, server.call() as call:
            await call.silence(1000)
            assert call.kinds().count("OutboundMedia") >= 1
    assert fallback.spoken and fallback.spoken[0].startswith("Thanks for calling Acme")
    assert "speech synthesis (polly) failed for say 1" in caplog.text and "speaking it with tone" in caplog.text
