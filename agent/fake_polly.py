"""A local Amazon Polly endpoint (`SynthesizeSpeech` only), for tests and for
`callstream replay --fakes`: point POLLY_ENDPOINT_URL at it.

It speaks the rest-json protocol of botocore's Polly service model
(2016-06-10): `POST /v1/speech` with a JSON body, SigV4-signed for service
`polly`; 200 answers carry `Content-Type: audio/pcm` and
`x-amzn-RequestCharacters` with the audio as the body, streamed in chunks;
errors carry `x-amzn-ErrorType` and `{"message": …}` with Polly's status codes.
It validates what Polly validates: the voice exists, the engine is one the
voice has (EngineNotSupportedException), the sample rate suits the format
(InvalidSampleRateException), SSML parses (InvalidSsmlException), text length
(TextLengthExceededException).

The audio is real speech: eSpeak NG (agent/tts_espeak.py) with the Polly
voice's eSpeak stand-in, at the rate asked for. Faults for tests:
`fail_next` (statuses / Polly error codes for the next requests), `stall_s`
(sleep before answering), `hold` (send the first chunk, then wait for the
test to set the event before the rest).
"""

from __future__ import annotations

import asyncio
import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from agent.voices import POLLY_VOICES, espeak_voice_for

FAKE_ACCESS_KEY = "AKIAFAKEPOLLY0000000"
FAKE_SECRET_KEY = "fake-secret-for-the-local-polly"
CHUNK_BYTES = 3200  # 200 ms of 8 kHz PCM per chunk
MAX_CHARACTERS = 3000  # billed characters per request
_CREDENTIAL = re.compile(r"Credential=([^/]+)/\d{8}/([^/]+)/([^/]+)/aws4_request")

ERRORS: dict[str, int] = {
    "ThrottlingException": 400,
    "ServiceFailureException": 500,
    "ValidationException": 400,
    "EngineNotSupportedException": 400,
    "InvalidSampleRateException": 400,
    "InvalidSsmlException": 400,
    "TextLengthExceededException": 400,
    "UnrecognizedClientException": 403,
    "MissingAuthenticationTokenException": 403,
}


def error(code: str, message: str, status: int | None = None) -> Response:
    return Response(
        orjson.dumps({"message": message}),
        status_code=status or ERRORS.get(code, 400),
        headers={"x-amzn-ErrorType": code, "x-amzn-RequestId": str(uuid.uuid4())},
        media_type="application/json",
    )


def plain_text(text: str, text_type: str) -> str | Response:
    """What is spoken: the text, or the SSML's text content (or an error)."""
    if text_type != "ssml":
        return text
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        return error("InvalidSsmlException", f"Invalid SSML request: {exc}")
    if root.tag != "speak":
        return error("InvalidSsmlException", "Invalid SSML request: the root element must be <speak>")
    return " ".join("".join(root.itertext()).split())


class FakePolly:
    def __init__(self, access_key: str = FAKE_ACCESS_KEY, region: str | None = None) -> None:
        self.access_key = access_key
        self.region = region
        self.requests: list[dict[str, Any]] = []
        self.fail_next: list[str | int] = []
        self.stall_s = 0.0
        self.hold: asyncio.Event | None = None
        self.first_chunk_sent = asyncio.Event()
        self.app = Starlette(routes=[Route("/v1/speech", self.synthesize_speech, methods=["POST"])])

    async def synthesize_speech(self, request: Request) -> Response:
        match = _CREDENTIAL.search(request.headers.get("authorization", ""))
        if match is None:
            return error("MissingAuthenticationTokenException", "Missing Authentication Token")
        key, region, service = match.groups()
        if key != self.access_key or service != "polly" or (self.region and region != self.region):
            return error("UnrecognizedClientException", "The security token included in the request is invalid.")
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return error("SerializationException", "request body is not JSON", 400)
        self.requests.append(body)
        if self.stall_s:
            await asyncio.sleep(self.stall_s)
        if self.fail_next:
            fault = self.fail_next.pop(0)
            if isinstance(fault, int):
                return error("ServiceFailureException" if fault >= 500 else "ThrottlingException", "injected", fault)
            return error(fault, "injected fault")
        checked = self._validate(body)
        if isinstance(checked, Response):
            return checked
        text, espeak_voice, rate = checked
        pcm = await asyncio.get_running_loop().run_in_executor(None, _speak, text, espeak_voice, rate)
        return StreamingResponse(
            self._chunks(pcm),
            media_type="audio/pcm",
            headers={"x-amzn-RequestCharacters": str(len(text)), "x-amzn-RequestId": str(uuid.uuid4())},
        )

    def _validate(self, body: dict[str, Any]) -> tuple[str, str, int] | Response:
        for field in ("OutputFormat", "Text", "VoiceId"):
            if not isinstance(body.get(field), str):
                return error("ValidationException", f"1 validation error detected: '{field}' must not be null")
        voice = POLLY_VOICES.get(body["VoiceId"].lower())
        if voice is None or voice.voice_id != body["VoiceId"]:
            return error(
                "ValidationException",
                f"1 validation error detected: Value '{body['VoiceId']}' at 'voiceId' failed to satisfy constraint",
            )
        engine = body.get("Engine", "standard")
        if not {"standard": voice.standard, "neural": voice.neural}.get(engine, False):
            return error(
                "EngineNotSupportedException",
                f"This voice does not support the selected engine: {engine}",
            )
        fmt = body["OutputFormat"]
        rate = body.get("SampleRate", "16000")
        if fmt != "pcm":
            return error("ValidationException", f"this fake serves OutputFormat pcm only, not {fmt!r}")
        if rate not in ("8000", "16000"):
            return error("InvalidSampleRateException", f"Invalid sample rate {rate} for pcm")
        text = plain_text(body["Text"], body.get("TextType", "text"))
        if isinstance(text, Response):
            return text
        if len(text) > MAX_CHARACTERS:
            return error("TextLengthExceededException", f"Maximum text length has been exceeded ({MAX_CHARACTERS})")
        return text, espeak_voice_for(voice, voice.language), int(rate)

    async def _chunks(self, pcm: bytes) -> AsyncIterator[bytes]:
        for i in range(0, len(pcm), CHUNK_BYTES):
            yield pcm[i : i + CHUNK_BYTES]
            if i == 0:
                self.first_chunk_sent.set()
                if self.hold is not None:
                    await self.hold.wait()
            await asyncio.sleep(0)


def _speak(text: str, espeak_voice: str, rate: int) -> bytes:
    from agent.tts_espeak import synthesize_8k
    from media.resample import resample

    pcm = synthesize_8k(text, espeak_voice)
    if rate != 8000:
        pcm = resample(pcm, 8000, rate)
    return np.asarray(pcm, dtype="<i2").tobytes()
