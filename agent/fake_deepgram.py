"""A local Deepgram live-transcription server: the `/v1/listen` WebSocket protocol,
for tests and for `callstream replay --fakes` (no account, no network).

It speaks the wire protocol of Deepgram's streaming API (reference/protocols.md,
developers.deepgram.com "Live Audio", "Finalize", "KeepAlive", "CloseStream",
"Configure"): query parameters on the upgrade, `Authorization: Token <key>`
(401 otherwise, as Deepgram answers a bad key), binary audio in, JSON messages
out — `Results` (interim and final, `speech_final`, `from_finalize`),
`SpeechStarted` (`vad_events`), `UtteranceEnd` (`utterance_end_ms`),
`Metadata` on `CloseStream`, `ConfigureSuccess` / `ConfigureFailure`, `Error`.

What it hears is real: each connection runs a voice detector (webrtcvad and an
energy floor) over the mu-law audio on the audio's own clock, and transcribes
an utterance with the offline recognizer (pocketsphinx, `agent.stt_sphinx`)
biased by the stream's keyterms, or with a `transcribe` function a test gives.
Everything it sends depends only on the bytes and messages received, in order,
so a replay through it is deterministic.

Every connection is recorded (`FakeDeepgram.connections`): query, headers,
audio bytes, control messages — tests assert on them. `drop()` cuts every open
socket without a close frame's courtesy (a network failure); `reject_next`
makes the next upgrades fail with a status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from media import mulaw

log = logging.getLogger(__name__)

RATE = 8000
FRAME_BYTES = 160  # 20 ms of mu-law
FRAME_MS = 20
MIN_SPEECH_RMS = 185.0  # as agent/stt_sphinx.py: quieter frames are never voiced

# (pcm16 at 8 kHz, keyterms, partial?) -> (transcript, confidence)
Transcribe = Callable[[np.ndarray, tuple[str, ...], bool], Awaitable[tuple[str, float]]]

REQUIRED = {"encoding": "mulaw", "sample_rate": "8000"}
BOOLEANS = ("interim_results", "vad_events", "smart_format", "punctuate")


@dataclass
class ListenOptions:
    model: str
    keyterms: tuple[str, ...]
    interim_results: bool
    vad_events: bool
    smart_format: bool
    endpointing_ms: int | None  # None: endpointing=false
    utterance_end_ms: int | None


def parse_options(query: dict[str, list[str]]) -> ListenOptions | str:
    """The stream's options, or why Deepgram would refuse them (a 400)."""
    one = {k: v[-1] for k, v in query.items()}
    for key, want in REQUIRED.items():
        if one.get(key) != want:
            return f"{key} must be {want} for this server (got {one.get(key)!r})"
    if one.get("channels", "1") != "1":
        return "channels must be 1"
    for key in BOOLEANS:
        if key in one and one[key] not in ("true", "false"):
            return f"{key} must be true or false"
    endpointing: int | None = 10  # Deepgram's default
    if "endpointing" in one:
        if one["endpointing"] == "false":
            endpointing = None
        elif one["endpointing"].isdigit():
            endpointing = int(one["endpointing"])
        else:
            return "endpointing must be a number of milliseconds or false"
    utterance_end: int | None = None
    if "utterance_end_ms" in one:
        if not one["utterance_end_ms"].isdigit() or int(one["utterance_end_ms"]) < 1000:
            return "utterance_end_ms must be at least 1000"
        if one.get("interim_results") != "true":
            return "utterance_end_ms requires interim_results=true"
        utterance_end = int(one["utterance_end_ms"])
    return ListenOptions(
        model=one.get("model", "base"),
        keyterms=tuple(query.get("keyterm", [])),
        interim_results=one.get("interim_results") == "true",
        vad_events=one.get("vad_events") == "true",
        smart_format=one.get("smart_format") == "true",
        endpointing_ms=endpointing,
        utterance_end_ms=utterance_end,
    )


@dataclass
class FakeDeepgramConnection:
    """What one client did on one socket (for assertions)."""

    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    audio: bytearray = field(default_factory=bytearray)
    controls: list[dict[str, Any]] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def control_types(self) -> list[str]:
        return [str(c.get("type")) for c in self.controls]


class _Listener:
    """One connection's recognizer: VAD, endpointing, transcripts (see module doc)."""

    def __init__(
        self,
        options: ListenOptions,
        transcribe: Transcribe,
        send: Callable[[dict[str, Any]], Awaitable[None]],
        partial_every_ms: int,
    ) -> None:
        import webrtcvad

        self.o = options
        self._transcribe = transcribe
        self._send = send
        self._partial_every_ms = partial_every_ms
        self._vad = webrtcvad.Vad(2)
        self._carry = b""
        self.t_ms = 0  # audio received on this socket
        self._preroll: deque[bytes] = deque(maxlen=10)
        self._recent: deque[tuple[bool, int]] = deque(maxlen=4)  # (voiced, frame start ms)
        self._utt: list[bytes] | None = None  # pcm frames of the utterance being heard
        self._utt_start_ms = 0
        self._last_voice_ms = 0
        self._since_partial_ms = 0
        self._final_from_ms = 0  # audio before this is finalized
        self._last_word_end_ms: int | None = None  # for UtteranceEnd
        self.request_id = str(uuid.uuid4())

    async def audio(self, data: bytes) -> None:
        data = self._carry + data
        usable = len(data) - len(data) % FRAME_BYTES
        self._carry = data[usable:]
        for i in range(0, usable, FRAME_BYTES):
            await self._frame(data[i : i + FRAME_BYTES])

    async def _frame(self, frame: bytes) -> None:
        pcm = mulaw.decode_array(frame)
        raw = pcm.tobytes()
        loud = float(np.mean(pcm.astype(np.float32) ** 2)) >= MIN_SPEECH_RMS**2
        voiced = loud and self._vad.is_speech(raw, RATE)
        start = self.t_ms
        self.t_ms += FRAME_MS
        if self._utt is None:
            self._preroll.append(raw)
            self._recent.append((voiced, start))
            if sum(v for v, _ in self._recent) >= 3:
                onset = min(t for v, t in self._recent if v)
                self._utt = list(self._preroll)
                self._utt_start_ms = max(self._final_from_ms, onset)
                self._last_voice_ms = self.t_ms
                self._since_partial_ms = 0
                self._last_word_end_ms = None
                if self.o.vad_events:
                    await self._send({"type": "SpeechStarted", "channel": [0, 1], "timestamp": round(onset / 1000, 3)})
            elif (
                self._last_word_end_ms is not None
                and self.o.utterance_end_ms is not None
                and self.t_ms - self._last_word_end_ms >= self.o.utterance_end_ms
            ):
                last = round(self._last_word_end_ms / 1000, 3)
                await self._send({"channel": [0, 1], "last_word_end": last, "type": "UtteranceEnd"})
                self._last_word_end_ms = None
            return
        self._utt.append(raw)
        self._since_partial_ms += FRAME_MS
        if voiced:
            self._last_voice_ms = self.t_ms
        if self.o.endpointing_ms is not None and self.t_ms - self._last_voice_ms >= max(self.o.endpointing_ms, FRAME_MS):
            await self._finalize(speech_final=True, from_finalize=False)
        elif self.o.interim_results and self._partial_every_ms and self._since_partial_ms >= self._partial_every_ms:
            self._since_partial_ms = 0
            await self._result(is_final=False, speech_final=False, from_finalize=False)

    async def finalize(self, *, from_finalize: bool) -> None:
        """`Finalize` (or `CloseStream`): what was heard becomes final at once."""
        if self._utt is not None:
            await self._finalize(speech_final=False, from_finalize=from_finalize)
        elif from_finalize:
            self._final_from_ms = self.t_ms
            await self._send(self._results("", 0.0, self.t_ms, self.t_ms, True, False, True))

    async def _finalize(self, *, speech_final: bool, from_finalize: bool) -> None:
        await self._result(is_final=True, speech_final=speech_final, from_finalize=from_finalize)
        self._utt = None
        self._recent.clear()
        self._preroll.clear()
        self._final_from_ms = self.t_ms

    async def _result(self, *, is_final: bool, speech_final: bool, from_finalize: bool) -> None:
        assert self._utt is not None
        pcm = np.frombuffer(b"".join(self._utt), dtype="<i2").astype(np.int16)
        text, confidence = await self._transcribe(pcm, self.o.keyterms, not is_final)
        start = self._utt_start_ms
        end = self.t_ms if not speech_final else min(self.t_ms, self._last_voice_ms + 100)
        if is_final and text:
            self._last_word_end_ms = end
        await self._send(self._results(text, confidence, start, end, is_final, speech_final, from_finalize))

    def _results(
        self, text: str, confidence: float, start_ms: int, end_ms: int,
        is_final: bool, speech_final: bool, from_finalize: bool,
    ) -> dict[str, Any]:
        spoken = text.split()
        words: list[dict[str, Any]] = []
        if spoken:
            step = (end_ms - start_ms) / len(spoken) / 1000
            for i, word in enumerate(spoken):
                words.append({
                    "word": word.lower(),
                    "start": round(start_ms / 1000 + i * step, 3),
                    "end": round(start_ms / 1000 + (i + 1) * step, 3),
                    "confidence": round(confidence, 4),
                    "punctuated_word": word,
                })
        transcript = text
        if self.o.smart_format and transcript:
            transcript = transcript[0].upper() + transcript[1:] + "."
            if words:
                words[0]["punctuated_word"] = words[0]["punctuated_word"].capitalize()
                words[-1]["punctuated_word"] += "."
        return {
            "channel": {"alternatives": [{"transcript": transcript, "confidence": round(confidence, 4), "words": words}]},
            "metadata": {
                "model_info": {"name": self.o.model, "version": "fake-1", "arch": "fake"},
                "request_id": self.request_id,
                "model_uuid": "00000000-0000-0000-0000-000000000000",
            },
            "type": "Results",
            "channel_index": [0, 1],
            "duration": round((end_ms - start_ms) / 1000, 3),
            "start": round(start_ms / 1000, 3),
            "is_final": is_final,
            "from_finalize": from_finalize,
            "speech_final": speech_final,
        }

    def metadata(self) -> dict[str, Any]:
        return {
            "type": "Metadata",
            "transaction_key": "deprecated",
            "request_id": self.request_id,
            "sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "created": "2026-01-01T00:00:00.000Z",
            "duration": round(self.t_ms / 1000, 3),
            "channels": 1,
        }


def scripted(transcripts: Sequence[str]) -> Transcribe:
    """A `transcribe` that gives each final utterance the next scripted text
    (partials get the text the next final will have)."""
    queue = list(transcripts)

    async def transcribe(pcm: np.ndarray, keyterms: tuple[str, ...], partial: bool) -> tuple[str, float]:
        if not queue:
            return "", 0.0
        return (queue[0] if partial else queue.pop(0)), 0.95

    return transcribe


class SphinxTranscriber:
    """Transcribes with pocketsphinx, the keyterms as its grammar (what the
    offline provider does with a dialog state's phrases)."""

    def __init__(self) -> None:
        from agent.stt_sphinx import DecoderPool, SphinxSettings

        self._pool = DecoderPool(SphinxSettings(workers=1))

    async def __call__(self, pcm: np.ndarray, keyterms: tuple[str, ...], partial: bool) -> tuple[str, float]:
        result = await self._pool.recognize(pcm, keyterms, partial=partial)
        return result.text, result.confidence

    def close(self) -> None:
        self._pool.close()


class FakeDeepgram:
    """The server. `async with FakeDeepgram(key).running() as fake:` then point
    the client at `fake.base_url` (https-less: `http://…` / `ws://…`)."""

    def __init__(
        self,
        api_key: str,
        *,
        transcribe: Transcribe | None = None,
        partial_every_ms: int = 500,
        answer_empty_finalize: bool = True,
    ) -> None:
        self.api_key = api_key
        self._transcribe = transcribe
        self._sphinx: SphinxTranscriber | None = None
        self.partial_every_ms = partial_every_ms
        self.answer_empty_finalize = answer_empty_finalize
        self.connections: list[FakeDeepgramConnection] = []
        self.reject_next: list[int] = []  # statuses for the next upgrades
        self.configure_supported = True
        self._open: set[ServerConnection] = set()
        self._server: Server | None = None
        self.port = 0
        self.connected = asyncio.Event()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @contextlib.asynccontextmanager
    async def running(self, port: int = 0) -> AsyncIterator[FakeDeepgram]:
        async with serve(self._handle, "127.0.0.1", port, process_request=self._check) as server:
            self._server = server
            self.port = next(iter(server.sockets)).getsockname()[1]
            try:
                yield self
            finally:
                if self._sphinx is not None:
                    self._sphinx.close()

    async def drop(self) -> None:
        """Cut every open socket (no close handshake): a network failure."""
        for ws in list(self._open):
            ws.transport.abort()

    def _check(self, connection: ServerConnection, request: Request) -> Response | None:
        if urlsplit(request.path).path != "/v1/listen":
            return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
        if self.reject_next:
            status = self.reject_next.pop(0)
            return connection.respond(HTTPStatus(status), "rejected by the test\n")
        if request.headers.get("Authorization") != f"Token {self.api_key}":
            return connection.respond(HTTPStatus.UNAUTHORIZED, "invalid credentials\n")
        problem = parse_options(parse_qs(urlsplit(request.path).query))
        if isinstance(problem, str):
            return connection.respond(HTTPStatus.BAD_REQUEST, problem + "\n")
        return None

    def _transcriber(self) -> Transcribe:
        if self._transcribe is not None:
            return self._transcribe
        if self._sphinx is None:
            self._sphinx = SphinxTranscriber()
        return self._sphinx

    async def _handle(self, ws: ServerConnection) -> None:
        parts = urlsplit(ws.request.path if ws.request else "")
        query = parse_qs(parts.query)
        record = FakeDeepgramConnection(
            parts.path, query, dict(ws.request.headers.raw_items()) if ws.request else {}
        )
        self.connections.append(record)
        self._open.add(ws)
        self.connected.set()
        options = parse_options(query)
        assert isinstance(options, ListenOptions)  # _check refused anything else

        async def send(message: dict[str, Any]) -> None:
            record.sent.append(message)
            await ws.send(orjson.dumps(message).decode())

        listener = _Listener(options, self._transcriber(), send, self.partial_every_ms)
        try:
            async for message in ws:
                if isinstance(message, bytes):
                    record.audio += message
                    await listener.audio(message)
                    continue
                try:
                    control = orjson.loads(message)
                    kind = control["type"]
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    await send({"type": "Error", "variant": "SchemaError", "description": "unparsable message", "message": message})
                    continue
                record.controls.append(control)
                if kind == "Finalize":
                    if listener._utt is not None or self.answer_empty_finalize:
                        await listener.finalize(from_finalize=True)
                elif kind == "CloseStream":
                    await listener.finalize(from_finalize=False)
                    await send(listener.metadata())
                    await ws.close(1000)
                    return
                elif kind == "KeepAlive":
                    pass
                elif kind == "Configure":
                    await self._configure(control, options, listener, send)
                else:
                    await send({"type": "Error", "variant": "SchemaError", "description": f"unknown type {kind!r}", "message": message})
        except ConnectionClosed:
            pass
        finally:
            self._open.discard(ws)
            record.closed.set()

    async def _configure(
        self,
        control: dict[str, Any],
        options: ListenOptions,
        listener: _Listener,
        send: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        # developers.deepgram.com/docs/configure: each Configure gets exactly one
        # ConfigureSuccess or ConfigureFailure; `keyterms` replaces the list,
        # omitted or null keeps it
        keyterms = control.get("keyterms")
        if keyterms is not None and not self.configure_supported:
            await send({
                "type": "ConfigureFailure", "request_id": listener.request_id,
                "code": "CONFIGURE_KEYTERMS_NOT_SUPPORTED",
                "description": f"model {options.model} does not support mid-stream keyterms",
            })
            return
        answer: dict[str, Any] = {"type": "ConfigureSuccess", "request_id": listener.request_id}
        if keyterms is not None:
            options.keyterms = tuple(str(k) for k in keyterms)
            answer["keyterms"] = list(options.keyterms)
        await send(answer)
