"""Plays one fixture call against a running server, the way Twilio would.

The simulated Twilio: POSTs the voice webhook (signed when a token is set),
follows the TwiML to the Media Streams URL, upgrades with the signature, sends
`connected`, `start` and 20 ms `media` frames with Twilio's counters, DTMF at
the fixture's times, and plays the agent's audio on its own timeline: marks
are echoed when the audio before them would have finished playing, a `clear`
drops the queued audio and echoes the pending marks at once. When the call is
updated through the (fake) REST API it sends `stop` and closes, as Twilio does.

Pacing: `speed=1.0` is real time, `speed=N` N times faster, `speed=None`
("max") runs in lockstep with the server (agent/lockstep.py), which makes the
replay exact and independent of the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import aiohttp
import numpy as np
import orjson
import websockets

from agent.fake_twilio import FakeCall, FakeTwilioRest, outcome_of
from agent.fixtures import CallResult, Fixture, check_expectations
from agent.lockstep import LOCKSTEP_PARAMETER, is_synced_message, sync_message
from media import mulaw
from media.frames import FRAME_BYTES, FRAME_MS, MULAW_SILENCE, split_frames
from media.wav import load_caller_mulaw, stereo, write_wav
from twiml.messages import (
    Connected,
    Dtmf,
    Mark,
    Media,
    MediaFormat,
    OutboundClear,
    OutboundMark,
    OutboundMedia,
    Start,
    Stop,
    encode_inbound,
    parse_outbound,
)
from twiml.signature import sign

log = logging.getLogger("callstream.replay")

TAIL_MS = 45_000  # how long to keep the line open after the caller's audio ends
FEED_GRACE_S = 10.0


@dataclass(frozen=True)
class ReplayTarget:
    """Where and how to reach the server under test."""

    http_base: str  # http://host:port — webhook and ops feed
    public_base_url: str  # what the server thinks it is (signatures are over it)
    stream_url_override: str | None  # connect here instead of the TwiML's <Stream url>
    account_sid: str
    auth_token: str | None
    ops_token: str | None


class Playback:
    """Twilio's outbound buffer for one stream, 20 ms at a time."""

    def __init__(self) -> None:
        self._items: deque[bytearray | str] = deque()

    def add_audio(self, audio: bytes) -> None:
        if self._items and isinstance(self._items[-1], bytearray):
            self._items[-1] += audio
        else:
            self._items.append(bytearray(audio))

    def add_mark(self, name: str) -> None:
        self._items.append(name)

    @property
    def playing(self) -> bool:
        return any(isinstance(i, bytearray) and i for i in self._items)

    def clear(self) -> list[str]:
        """Drop the queued audio; Twilio echoes every pending mark."""
        marks = [i for i in self._items if isinstance(i, str)]
        self._items.clear()
        return marks

    def tick(self) -> tuple[bytes, list[str]]:
        """Play one frame: the audio played and the marks now due."""
        played = bytearray()
        marks: list[str] = []
        while self._items:
            head = self._items[0]
            if isinstance(head, str):
                marks.append(head)
                self._items.popleft()
                continue
            if len(played) == FRAME_BYTES:
                break
            take = FRAME_BYTES - len(played)
            played += head[:take]
            del head[:take]
            if not head:
                self._items.popleft()
        return bytes(played), marks


def speech_segments(caller: bytes, threshold_dbfs: float = -35.0) -> list[tuple[int, int]]:
    """(onset_ms, end_ms) of the caller's speech, by frame energy (merge gaps < 300 ms)."""
    frames = split_frames(caller)
    voiced = []
    for frame in frames:
        pcm = mulaw.decode_array(frame).astype(np.float64)
        rms = float(np.sqrt(np.mean(pcm * pcm))) if len(pcm) else 0.0
        dbfs = 20 * np.log10(max(rms, 1e-9) / 32768.0)
        voiced.append(dbfs > threshold_dbfs)
    segments: list[list[int]] = []
    for i, v in enumerate(voiced):
        if not v:
            continue
        t = i * FRAME_MS
        if segments and t - segments[-1][1] < 300:
            segments[-1][1] = t + FRAME_MS
        else:
            segments.append([t, t + FRAME_MS])
    return [(a, b) for a, b in segments if b - a >= 100]


@dataclass
class _Timeline:
    agent: bytearray = field(default_factory=bytearray)  # played agent audio, frame-aligned
    clears_ms: list[int] = field(default_factory=list)
    agent_starts_ms: list[int] = field(default_factory=list)  # media time each burst began playing


class SimulatedCall:
    def __init__(
        self,
        fixture: Fixture,
        target: ReplayTarget,
        rest: FakeTwilioRest,
        http: aiohttp.ClientSession,
        *,
        speed: float | None,
        out_dir: Path | None = None,
    ) -> None:
        self.fixture = fixture
        self.target = target
        self.rest = rest
        self.http = http
        self.speed = speed
        self.out_dir = out_dir
        self.call_sid = "CA" + secrets.token_hex(16)
        self.stream_sid = "MZ" + secrets.token_hex(16)
        self.result = CallResult(fixture=fixture.name, call_sid=self.call_sid)
        self._updated = asyncio.Event()
        self._seq = 0
        self._timeline = _Timeline()
        self._playback = Playback()
        self._events: list[dict[str, Any]] = []
        self._ended_event = asyncio.Event()
        self._now_ms = 0
        self._feed_connected = False
        self._caller = b""

    # --- the call ----------------------------------------------------------------
    async def run(self) -> CallResult:
        started = time.perf_counter()
        params = dict(self.fixture.params)
        params.setdefault("From", "+15551230000")
        params.setdefault("To", "+15559870000")
        self.rest.add_call(self.call_sid, from_=params["From"], to=params["To"])
        feed = asyncio.create_task(self._follow_feed(), name=f"feed-{self.call_sid}")
        try:
            await asyncio.wait_for(self._feed_ready(feed), 10)
            stream_url, parameters = await self._post_webhook(params)
            for key, value in params.items():
                parameters.setdefault(key, value)
            if self.speed is None:
                parameters[LOCKSTEP_PARAMETER] = "1"
            await self._stream(stream_url, parameters)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._ended_event.wait(), FEED_GRACE_S)
        except Exception as exc:
            log.exception("replay of %s failed", self.fixture.name)
            self.result.error = f"{type(exc).__name__}: {exc}"
        finally:
            feed.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await feed
        self.result.wall_s = time.perf_counter() - started
        self._summarize()
        return self.result

    async def _feed_ready(self, feed: asyncio.Task[None]) -> None:
        while not self._feed_connected:
            if feed.done():
                feed.result()
                raise RuntimeError("ops feed closed before the call started")
            await asyncio.sleep(0.005)

    async def _follow_feed(self) -> None:
        """The live feed for this call: path, transcripts, barge-ins."""
        headers = {"X-Ops-Token": self.target.ops_token or ""}
        url = f"{self.target.http_base}/ops/events"
        async with self.http.get(url, params={"call_sid": self.call_sid}, headers=headers) as resp:
            if resp.status != 200:
                raise RuntimeError(f"ops feed refused: HTTP {resp.status} (is CALLSTREAM_OPS_TOKEN right?)")
            async for line in resp.content:
                if line.startswith(b":"):
                    self._feed_connected = True
                elif line.startswith(b"data: "):
                    event = orjson.loads(line[6:])
                    self._events.append(event)
                    if event.get("type") == "call.ended":
                        self._ended_event.set()

    async def _post_webhook(self, params: dict[str, str]) -> tuple[str, dict[str, str]]:
        form = {
            "AccountSid": self.target.account_sid,
            "ApiVersion": "2010-04-01",
            "CallSid": self.call_sid,
            "CallStatus": "ringing",
            "Direction": "inbound",
            "From": params["From"],
            "To": params["To"],
            "Caller": params["From"],
            "Called": params["To"],
        }
        headers = {}
        if self.target.auth_token:
            public = f"{self.target.public_base_url}/twilio/voice"
            headers["X-Twilio-Signature"] = sign(self.target.auth_token, public, form)
        async with self.http.post(f"{self.target.http_base}/twilio/voice", data=form, headers=headers) as resp:
            body = await resp.text()
            if resp.status != 200:
                raise RuntimeError(f"voice webhook answered HTTP {resp.status}: {body.strip()}")
        root = ElementTree.fromstring(body)
        stream = root.find("./Connect/Stream")
        if stream is None:
            raise RuntimeError(f"voice webhook TwiML has no <Connect><Stream>: {body}")
        parameters = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
        return stream.get("url", ""), parameters

    # --- the stream ------------------------------------------------------------------
    async def _stream(self, stream_url: str, parameters: dict[str, str]) -> None:
        headers = {}
        if self.target.auth_token:
            headers["X-Twilio-Signature"] = sign(self.target.auth_token, stream_url)
        connect_to = self.target.stream_url_override or stream_url
        self._caller = load_caller_mulaw(self.fixture.audio_path)
        frames = split_frames(self._caller)
        silence = bytes([MULAW_SILENCE]) * FRAME_BYTES
        async with websockets.connect(
            connect_to, additional_headers=headers, max_size=2**20, compression=None
        ) as ws:
            self._ws = ws
            receiver = None if self.speed is None else asyncio.create_task(self._receive_loop(ws))
            try:
                await ws.send(encode_inbound(Connected(protocol="Call", version="1.0.0")))
                await ws.send(encode_inbound(self._start_message(parameters)))
                events = deque(self.fixture.events)
                t0 = time.perf_counter()
                total = len(frames) + TAIL_MS // FRAME_MS
                for k in range(total):
                    if self._updated.is_set() or (receiver is not None and receiver.done()):
                        break
                    now = k * FRAME_MS
                    self._now_ms = now
                    while events and events[0].at_ms <= now:
                        for digit in events.popleft().digits:
                            await ws.send(encode_inbound(self._dtmf(digit)))
                    payload = frames[k] if k < len(frames) else silence
                    await ws.send(encode_inbound(self._media(k, now, payload)))
                    if self.speed is None:
                        await ws.send(sync_message(self.stream_sid, k))
                        if not await self._receive_until_synced(ws, k):
                            break
                    else:
                        target = t0 + (k + 1) * FRAME_MS / 1000 / self.speed
                        delay = target - time.perf_counter()
                        if delay > 0:
                            await asyncio.sleep(delay)
                    await self._play_frame(ws)
                else:
                    self.result.end_reason = "timeout"
                if not self._updated.is_set() and self.result.end_reason is None:
                    self.result.end_reason = "server_closed"
                with contextlib.suppress(websockets.ConnectionClosed):
                    await ws.send(encode_inbound(self._stop()))
            finally:
                if receiver is not None:
                    receiver.cancel()
                    with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
                        await receiver
        self.result.duration_ms = self._now_ms

    async def _receive_until_synced(self, ws: websockets.ClientConnection, k: int) -> bool:
        while True:
            try:
                raw = await ws.recv()
            except websockets.ConnectionClosed:
                return False
            if is_synced_message(raw):
                return True
            await self._on_outbound(ws, raw)

    async def _receive_loop(self, ws: websockets.ClientConnection) -> None:
        async for raw in ws:
            await self._on_outbound(ws, raw)

    async def _on_outbound(self, ws: websockets.ClientConnection, raw: str | bytes) -> None:
        message = parse_outbound(raw)
        if isinstance(message, OutboundMedia):
            if not self._playback.playing:
                self._timeline.agent_starts_ms.append(self._now_ms + FRAME_MS)
            self._playback.add_audio(message.payload)
        elif isinstance(message, OutboundMark):
            self._playback.add_mark(message.name)
        elif isinstance(message, OutboundClear):
            self._timeline.clears_ms.append(self._now_ms + FRAME_MS)
            for name in self._playback.clear():
                await ws.send(encode_inbound(self._mark(name)))

    async def _play_frame(self, ws: websockets.ClientConnection) -> None:
        played, marks = self._playback.tick()
        agent = self._timeline.agent
        agent += played + bytes([MULAW_SILENCE]) * (FRAME_BYTES - len(played))
        for name in marks:
            await ws.send(encode_inbound(self._mark(name)))

    def on_rest_update(self, call: FakeCall, update: dict[str, str]) -> None:
        """Twilio applies the new TwiML: the stream stops, the call moves on."""
        self.result.outcome = outcome_of(update)
        self.result.end_reason = "call_updated"
        self._updated.set()

    # --- Twilio's messages -------------------------------------------------------------
    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _start_message(self, parameters: dict[str, str]) -> Start:
        return Start(
            sequence_number=self._next_seq(),
            stream_sid=self.stream_sid,
            account_sid=self.target.account_sid,
            call_sid=self.call_sid,
            tracks=("inbound",),
            media_format=MediaFormat(encoding="audio/x-mulaw", sample_rate=8000, channels=1),
            custom_parameters=parameters,
        )

    def _media(self, k: int, now: int, payload: bytes) -> Media:
        return Media(
            sequence_number=self._next_seq(),
            stream_sid=self.stream_sid,
            track="inbound",
            chunk=k + 1,
            timestamp=now,
            payload=payload,
        )

    def _dtmf(self, digit: str) -> Dtmf:
        return Dtmf(sequence_number=self._next_seq(), stream_sid=self.stream_sid, track="inbound_track", digit=digit)

    def _mark(self, name: str) -> Mark:
        return Mark(sequence_number=self._next_seq(), stream_sid=self.stream_sid, name=name)

    def _stop(self) -> Stop:
        return Stop(
            sequence_number=self._next_seq(),
            stream_sid=self.stream_sid,
            account_sid=self.target.account_sid,
            call_sid=self.call_sid,
        )

    # --- the report -------------------------------------------------------------------
    def _summarize(self) -> None:
        result = self.result
        for event in self._events:
            kind = event.get("type")
            if kind == "dialog.transition":
                if event.get("from") != event.get("to"):
                    result.path.append(event["to"])
            elif kind == "transcript.final":
                if event.get("speaker") == "caller":
                    if event.get("text"):
                        result.caller_transcript.append(event["text"])
                else:
                    result.agent_turns.append(
                        {
                            "text": event.get("text", ""),
                            "interrupted": bool(event.get("interrupted")),
                            "heard_ms": event.get("heard_ms"),
                        }
                    )
            elif kind == "call.ended" and result.end_reason is None:
                result.end_reason = event.get("reason")
        caller = self._caller
        segments = speech_segments(caller) if caller else []
        for clear_ms in self._timeline.clears_ms:
            onsets = [a for a, _ in segments if a <= clear_ms]
            if onsets:
                result.bargein_ms.append(clear_ms - onsets[-1])
        for _, end in segments:
            later = [s for s in self._timeline.agent_starts_ms if s >= end]
            if later:
                result.response_ms.append(later[0] - end)
        if result.error is None:
            result.failures = check_expectations(result, self.fixture.expect)
        if self.out_dir is not None and caller:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            left = mulaw.decode_array(caller)
            right = mulaw.decode_array(bytes(self._timeline.agent))
            write_wav(self.out_dir / f"{self.fixture.name}.wav", stereo(left, right), 8000)
