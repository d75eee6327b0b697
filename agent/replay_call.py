"""Plays one fixture call against a running server, the way Twilio would.

The simulated Twilio POSTs the voice webhook (signed when a token is set) and
runs the TwiML it answers (agent/replay_twiml.py), across as many Media
Streams as the call goes through: a transfer nobody answers comes back on a
new stream of the same call (same CallSid, new StreamSid), a voicemail's
action can resume the agent, and in CALLSTREAM_SPEECH=twiml mode the agent
speaks by REST updates that Twilio renders (`<Say>`, here the offline TTS).

On each stream it upgrades with the signature, sends `connected`, `start` and
20 ms `media` frames with Twilio's counters (timestamps from the stream's
start), DTMF at the fixture's times (a `<Gather>` takes them when one runs;
one-way streams carry none), and plays the agent's audio on the call's
timeline: marks are echoed when the audio before them would have finished
playing, a `clear` drops the queued audio and echoes the pending marks at
once. A REST update through the (fake) REST API replaces the running TwiML;
a bidirectional stream then gets `stop` and closes, as with Twilio. One caller
timeline (the fixture's WAV, then silence) runs across all of it, and at the
end Twilio's `completed` status callback is POSTed to /twilio/status.

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

import aiohttp
import orjson
import websockets

from agent.fake_twilio import FakeCall, FakeTwilioRest
from agent.fixtures import CallResult, Fixture, check_expectations
from agent.lockstep import LOCKSTEP_PARAMETER
from agent.ports import TextToSpeech
from agent.replay_stream import StreamLink, speech_segments
from agent.replay_twiml import TwimlRunner
from media import mulaw
from media.frames import FRAME_BYTES, FRAME_MS, MULAW_SILENCE, split_frames
from media.wav import load_caller_mulaw, stereo, write_wav
from twiml.errors import ProtocolError
from twiml.messages import (
    OutboundClear,
    OutboundMark,
    OutboundMedia,
    parse_outbound,
)
from twiml.signature import sign

log = logging.getLogger("callstream.replay")

TAIL_MS = 45_000  # how long to keep the line open after the caller's audio ends
FEED_GRACE_S = 10.0
SILENCE_FRAME = bytes([MULAW_SILENCE]) * FRAME_BYTES


@dataclass(frozen=True)
class ReplayTarget:
    """Where and how to reach the server under test."""

    http_base: str  # http://host:port — webhook and ops feed
    public_base_url: str  # what the server thinks it is (signatures are over it)
    stream_url_override: str | None  # connect here instead of the TwiML's <Stream url>
    account_sid: str
    auth_token: str | None
    ops_token: str | None


@dataclass
class _Timeline:
    agent: bytearray = field(default_factory=bytearray)  # played agent audio, frame-aligned
    clears_ms: list[int] = field(default_factory=list)
    agent_starts_ms: list[int] = field(default_factory=list)  # call time each burst began playing


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
        tts: TextToSpeech | None = None,
    ) -> None:
        self.fixture = fixture
        self.target = target
        self.rest = rest
        self.http = http
        self.speed = speed
        self.out_dir = out_dir
        self.call_sid = "CA" + secrets.token_hex(16)
        self.result = CallResult(fixture=fixture.name, call_sid=self.call_sid)
        self.runner = TwimlRunner(
            self, dial_status=fixture.dial_status, follow_record=fixture.follow_record
        )
        self._tts = tts
        self._params: dict[str, str] = {}
        self._timeline = _Timeline()
        self._stream: StreamLink | None = None
        self._streams_opened = 0
        self._events: list[dict[str, Any]] = []
        self._calls_ended = 0
        self._ended_event = asyncio.Event()
        self._now_ms = 0
        self._feed_connected = False
        self._caller = b""
        self._segments: list[tuple[int, int]] = []
        self._errors: list[str] = []
        self._status_sequence = 0

    # --- the call ----------------------------------------------------------------
    async def run(self) -> CallResult:
        started = time.perf_counter()
        params = dict(self.fixture.params)
        params.setdefault("From", "+15551230000")
        params.setdefault("To", "+15559870000")
        self._params = params
        self.rest.add_call(self.call_sid, from_=params["From"], to=params["To"])
        self._caller = load_caller_mulaw(self.fixture.audio_path)
        self._segments = speech_segments(self._caller)
        feed = asyncio.create_task(self._follow_feed(), name=f"feed-{self.call_sid}")
        try:
            await asyncio.wait_for(self._feed_ready(feed), 10)
            answer = await self.fetch(
                f"{self.target.public_base_url}/twilio/voice", {}, call_status="ringing"
            )
            await self.runner.load(answer, 0)
            await self._run_timeline()
            await self._end_call()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._all_streams_ended(), FEED_GRACE_S)
        except Exception as exc:
            log.exception("replay of %s failed", self.fixture.name)
            self.result.error = f"{type(exc).__name__}: {exc}"
        finally:
            if self._stream is not None:
                await self._stream.stop()
            feed.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await feed
        self.result.wall_s = time.perf_counter() - started
        self._summarize()
        return self.result

    async def _run_timeline(self) -> None:
        frames = split_frames(self._caller)
        events = deque(self.fixture.events)
        runner = self.runner
        t0 = time.perf_counter()
        total = len(frames) + TAIL_MS // FRAME_MS
        for k in range(total):
            now = k * FRAME_MS
            self._now_ms = now
            if self._stream is not None and self._stream.closed:  # the server closed it
                await self._stream.stop()
                self._stream = None
            await runner.step(now)
            if runner.ended:
                break
            while events and events[0].at_ms <= now:
                for digit in events.popleft().digits:
                    await self._key(digit, now)
            stream = self._stream
            if stream is not None and not stream.closed:
                await stream.media(now, frames[k] if k < len(frames) else SILENCE_FRAME)
                if self.speed is None:
                    await stream.sync(self._on_outbound)
            if self.speed is not None:
                delay = t0 + (k + 1) * FRAME_MS / 1000 / self.speed - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            await self._play_frame(now)
        else:
            self.result.end_reason = "timeout"
        self.result.duration_ms = self._now_ms

    async def _key(self, digit: str, now: int) -> None:
        """Twilio hears a key: a running <Gather> takes it, else a bidirectional
        stream carries it; a one-way stream does not."""
        if await self.runner.key(digit, now):
            await self.runner.step(now)
            return
        stream = self._stream
        if stream is not None and stream.bidirectional and not stream.closed:
            await stream.dtmf(digit)
        else:
            log.info("%s: key %s at %d ms with nothing listening for keys", self.fixture.name, digit, now)

    async def _play_frame(self, now: int) -> None:
        stream = self._stream
        if stream is not None and stream.bidirectional:
            played, marks = stream.playback.tick()
            for name in marks:
                await stream.mark(name)
        else:
            played = self.runner.agent_frame()
        self._timeline.agent += played + SILENCE_FRAME[len(played) :]

    async def _end_call(self) -> None:
        """The call is over: streams stop, and Twilio's status callback says so."""
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None
        self._status_sequence += 1
        try:
            await self.fetch(
                f"{self.target.public_base_url}/twilio/status",
                {
                    "CallDuration": str(self._now_ms // 1000),
                    "SequenceNumber": str(self._status_sequence),
                    "CallbackSource": "call-progress-events",
                },
                call_status="completed",
            )
        except Exception as exc:  # the report does not depend on it
            log.warning("status callback failed: %r", exc)

    def on_rest_update(self, call: FakeCall, update: dict[str, str]) -> None:
        """Twilio takes the update; it replaces the running TwiML at the next frame."""
        self.runner.update(update)

    # --- what the TwiML runner asks of the call (agent/replay_twiml.CallHost) ----------
    async def fetch(self, url: str, params: dict[str, str], *, call_status: str = "in-progress") -> str:
        form = {
            "AccountSid": self.target.account_sid,
            "ApiVersion": "2010-04-01",
            "CallSid": self.call_sid,
            "CallStatus": call_status,
            "Direction": "inbound",
            "From": self._params["From"],
            "To": self._params["To"],
            "Caller": self._params["From"],
            "Called": self._params["To"],
            **params,
        }
        public = self.target.public_base_url
        if not url.startswith(public + "/"):
            raise RuntimeError(f"TwiML points Twilio at {url!r}, not at {public}")
        headers = {}
        if self.target.auth_token:
            headers["X-Twilio-Signature"] = sign(self.target.auth_token, url, form)
        local = self.target.http_base + url[len(public) :]
        async with self.http.post(local, data=form, headers=headers) as resp:
            body = await resp.text()
            if resp.status == 204:
                return ""
            if resp.status != 200:
                # Twilio: "an application error has occurred", then the call ends
                self._errors.append(f"POST {url[len(public):]} answered HTTP {resp.status}: {body.strip()[:200]}")
                return "<Response><Hangup/></Response>"
        return body

    async def open_stream(
        self, url: str, parameters: dict[str, str], *, bidirectional: bool, name: str | None
    ) -> None:
        if self._stream is not None:
            await self._stream.stop()  # one stream at a time here
        headers = {}
        if self.target.auth_token:
            headers["X-Twilio-Signature"] = sign(self.target.auth_token, url)
        connect_to = self.target.stream_url_override or url
        parameters = dict(parameters)
        if self._streams_opened == 0:
            for key, value in self.fixture.params.items():
                parameters.setdefault(key, value)
        if self.speed is None:
            parameters[LOCKSTEP_PARAMETER] = "1"
        ws = await websockets.connect(
            connect_to, additional_headers=headers, max_size=2**20, compression=None
        )
        link = StreamLink(
            ws,
            account_sid=self.target.account_sid,
            call_sid=self.call_sid,
            bidirectional=bidirectional,
            started_ms=self._now_ms,
        )
        self._stream = link
        self._streams_opened += 1
        await link.start(parameters)
        if self.speed is not None:
            link.receiver = asyncio.create_task(self._receive_loop(link))

    async def stop_stream(self, *, bidirectional: bool) -> None:
        stream = self._stream
        if stream is not None and stream.bidirectional == bidirectional:
            await stream.stop()
            self._stream = None

    def stream_open(self, *, bidirectional: bool) -> bool:
        stream = self._stream
        return stream is not None and stream.bidirectional == bidirectional and not stream.closed

    async def synthesize(self, text: str, voice: str, language: str) -> bytes:
        if self._tts is None:
            from agent.tts_cache import CachedTextToSpeech
            from agent.tts_espeak import EspeakTextToSpeech

            self._tts = CachedTextToSpeech(EspeakTextToSpeech())
        return b"".join([chunk async for chunk in self._tts.synthesize(text, voice, language)])

    def silence_ends(self, start_ms: int, silence_ms: int, max_ms: int) -> int:
        t = start_ms
        for onset, end in self._segments:
            if end <= t:
                continue
            if onset - t >= silence_ms:
                break
            t = end
        return min(t + silence_ms, start_ms + max_ms)

    # --- the server's messages --------------------------------------------------------------
    async def _receive_loop(self, link: StreamLink) -> None:
        try:
            async for raw in link.ws:
                await self._on_outbound(link, raw)
        except websockets.ConnectionClosed:
            pass
        finally:
            link.closed = True

    async def _on_outbound(self, link: StreamLink, raw: str | bytes) -> None:
        try:
            message = parse_outbound(raw)
        except ProtocolError as exc:
            self._errors.append(f"the server sent an invalid message ({exc}): {str(raw)[:80]}")
            return
        if not link.bidirectional:
            self._errors.append(f"the server sent {type(message).__name__} on a one-way stream")
            return
        if isinstance(message, OutboundMedia):
            if not link.playback.playing:
                self._timeline.agent_starts_ms.append(self._now_ms + FRAME_MS)
            link.playback.add_audio(message.payload)
        elif isinstance(message, OutboundMark):
            link.playback.add_mark(message.name)
        elif isinstance(message, OutboundClear):
            self._timeline.clears_ms.append(self._now_ms + FRAME_MS)
            for name in link.playback.clear():
                await link.mark(name)

    # --- the live feed ---------------------------------------------------------------------
    async def _feed_ready(self, feed: asyncio.Task[None]) -> None:
        while not self._feed_connected:
            if feed.done():
                feed.result()
                raise RuntimeError("ops feed closed before the call started")
            await asyncio.sleep(0.005)

    async def _all_streams_ended(self) -> None:
        while self._calls_ended < self._streams_opened:
            self._ended_event.clear()
            await self._ended_event.wait()

    async def _follow_feed(self) -> None:
        """The live feed for this call (every stream): path, transcripts, barge-ins."""
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
                        self._calls_ended += 1
                        self._ended_event.set()

    # --- the report -------------------------------------------------------------------
    def _summarize(self) -> None:
        result = self.result
        runner = self.runner
        result.outcome = runner.outcome
        if result.end_reason is None:
            result.end_reason = runner.end_reason
        errors = self._errors + ([runner.error] if runner.error else [])
        if errors and result.error is None:
            result.error = "; ".join(errors)
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
        segments = self._segments
        clears = sorted(self._timeline.clears_ms + runner.clears_ms)
        starts = sorted(self._timeline.agent_starts_ms + runner.agent_starts_ms)
        for clear_ms in clears:
            onsets = [a for a, _ in segments if a <= clear_ms]
            if onsets:
                result.bargein_ms.append(clear_ms - onsets[-1])
        for _, end in segments:
            later = [s for s in starts if s >= end]
            if later:
                result.response_ms.append(later[0] - end)
        if result.error is None:
            result.failures = check_expectations(result, self.fixture.expect)
        if self.out_dir is not None and caller:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            left = mulaw.decode_array(caller)
            right = mulaw.decode_array(bytes(self._timeline.agent))
            write_wav(self.out_dir / f"{self.fixture.name}.wav", stereo(left, right), 8000)
