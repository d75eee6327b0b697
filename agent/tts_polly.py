"""Amazon Polly text to speech (`CALLSTREAM_TTS=polly`), with boto3.

`SynthesizeSpeech` (POST /v1/speech) with the flow's voice — the neural
engine where the voice has one, else standard; `-Generative`/`-LongForm`
suffixes are taken as written — `OutputFormat=pcm`, `SampleRate="8000"`
("When pcm is used, the content returned is audio/pcm in a signed 16-bit,
1 channel (mono), little-endian format", botocore's service model), and
`TextType=ssml` when the prompt is SSML (starts with `<speak>`).

boto3 blocks, so one worker thread per synthesis makes the request and reads
the response's StreamingBody chunk by chunk, encoding each to mu-law and
handing it to the event loop at once: the first frame goes to Twilio while
Polly is still sending the rest. A reader that stops early (barge-in) stops
the worker at its next chunk.

Errors: throttling and 5xx/connection failures are retried `attempts` times
with exponential backoff, only before any audio was handed over (a prompt is
never spliced); `connect_timeout_s` / `read_timeout_s` bound each request.
What still fails raises `PollyError`, and the Speaker speaks that prompt with
the fallback voice (eSpeak) — see agent/speaker.py.

Credentials: the standard AWS chain (environment, profile, instance role), or
the keys given explicitly (settings read them from `.env` too).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncGenerator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from agent.thread_stream import Deliver, stream_from_thread
from agent.voices import VoiceSpec, parse_voice
from media import mulaw

log = logging.getLogger(__name__)

SAMPLE_RATE = "8000"
READ_CHUNK = 1600  # bytes of PCM per read: 100 ms at 8 kHz
THROTTLING = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "TooManyRequestsException",
    "RequestLimitExceeded", "ServiceFailureException", "ServiceUnavailable", "InternalFailure",
})  # fmt: skip


class PollyError(RuntimeError):
    """Polly failed for this prompt; `retryable` says if trying again may help."""

    def __init__(self, message: str, *, code: str | None = None, retryable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = retryable


def engine_for(spec: VoiceSpec) -> str:
    """Neural where the voice has it, else standard; an explicit engine suffix wins."""
    assert spec.polly is not None
    if spec.engine in ("generative", "long-form"):
        return spec.engine
    return "neural" if spec.polly.neural else "standard"


def is_ssml(text: str) -> bool:
    return text.lstrip().startswith("<speak>")


class PollyTextToSpeech:
    """`TextToSpeech` with Amazon Polly, streamed as 8 kHz mu-law."""

    name = "polly"

    def __init__(
        self,
        region: str,
        *,
        endpoint_url: str | None = None,
        credentials: tuple[str, str, str | None] | None = None,
        attempts: int = 3,
        backoff_s: float = 0.1,
        connect_timeout_s: float = 2.0,
        read_timeout_s: float = 5.0,
        workers: int = 16,
    ) -> None:
        import boto3
        from botocore.config import Config

        config = Config(
            region_name=region,
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
            retries={"total_max_attempts": 1},  # ours: only before the first audio
            max_pool_connections=workers,
        )
        key, secret, token = credentials or (None, None, None)
        session = boto3.session.Session(
            aws_access_key_id=key, aws_secret_access_key=secret, aws_session_token=token, region_name=region
        )
        self.has_credentials = session.get_credentials() is not None
        self._client: Any = session.client("polly", endpoint_url=endpoint_url, config=config)
        self.attempts = max(1, attempts)
        self.backoff_s = backoff_s
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="polly")

    def request(self, text: str, voice: str, language: str) -> dict[str, str]:
        """The SynthesizeSpeech parameters for a prompt (raises PollyError for a
        voice Polly does not have)."""
        spec = parse_voice(voice, language)
        if spec.polly is None:
            raise PollyError(f"{voice!r} is not a Polly voice", code="UnknownVoice")
        return {
            "Engine": engine_for(spec),
            "OutputFormat": "pcm",
            "SampleRate": SAMPLE_RATE,
            "Text": text,
            "TextType": "ssml" if is_ssml(text) else "text",
            "VoiceId": spec.polly.voice_id,
        }

    async def synthesize(self, text: str, voice: str, language: str) -> AsyncGenerator[bytes, None]:
        params = self.request(text, voice, language)
        def produce(deliver: Deliver, stop: threading.Event) -> None:
            self._synthesize_blocking(params, deliver, stop)

        async for chunk in stream_from_thread(self._executor, produce):
            yield chunk

    def _synthesize_blocking(self, params: dict[str, str], deliver: Deliver, stop: threading.Event) -> None:
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectionError,
            ReadTimeoutError,
        )

        for attempt in range(self.attempts):
            delivered = False
            try:
                response = self._client.synthesize_speech(**params)
                body = response["AudioStream"]
                try:
                    carry = b""
                    for chunk in body.iter_chunks(READ_CHUNK):
                        if stop.is_set():
                            return
                        data = carry + chunk
                        carry = data[len(data) & ~1 :]  # a sample split across reads
                        if len(data) > 1:
                            deliver(mulaw.encode(data[: len(data) & ~1]))
                            delivered = True
                finally:
                    body.close()
                return
            except ClientError as exc:
                error = exc.response.get("Error", {})
                code = str(error.get("Code", ""))
                status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
                retryable = code in THROTTLING or status >= 500
                failure = PollyError(f"Polly {code or status}: {error.get('Message', '')}", code=code, retryable=retryable)
            except (ConnectionError, ReadTimeoutError) as exc:  # includes connect timeouts
                failure = PollyError(f"Polly unreachable: {exc}", code=type(exc).__name__, retryable=True)
            except BotoCoreError as exc:
                failure = PollyError(f"Polly request failed: {exc}", code=type(exc).__name__)
            if delivered or not failure.retryable or attempt + 1 == self.attempts or stop.is_set():
                raise failure
            delay = self.backoff_s * 2**attempt
            log.warning("polly: %s: retrying in %.2f s (attempt %d of %d)", failure, delay, attempt + 2, self.attempts)
            time.sleep(delay)

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
