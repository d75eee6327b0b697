"""`callstream bench turn`: the agent's own overhead per turn.

DESIGN.md "Performance": agent overhead per turn (STT final in → first TTS
frame out, TTS cached): p95 ≤ 10 ms.

The real `CallSession` (agent/session.py) runs the acme flow with the real
eSpeak TTS behind the prompt cache, warmed first, and a live-feed subscriber
draining events (as the app's ops view does). Twilio's side is in-process
(`InProcessSocket`, the session's MediaSocket port): it plays the greeting and
prompts as Twilio would (marks echoed as audio plays) and speaks a real
speech clip for each caller turn, so the session's VAD and turn detector end
the turn themselves. The recognizer is `CommandedSpeechToText` (the STT port):
`end_turn` only records that the session asked, and the benchmark then
delivers the final transcript itself, reading the clock just before.

Timed, per turn: from delivering the final (`on_event`, as a provider's
reader task would) to the session handing the first media message of the
answer to the socket. That is the agent's own work: the transcript's log line
and feed event, the dialog engine (intent matching, transition, prompt), the
state save and synthesis tasks it spawns and one event-loop hop to them, the
cache hit, playout pacing, the Media Streams encoding (base64, JSON) and the
send lock. Not included: recognition, and the WebSocket write (framing and
a send syscall, tens of µs on loopback). Nothing else runs on the loop
meanwhile: the driver waits for that first frame before the next audio.

The scripts cover the flow's kinds of turn: no match (re-prompt), an intent
(transition and the next state's prompt), spoken digits completing a
collect (prompt, then hang-up), a transfer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

from agent.bench.stats import Summary, summarize
from agent.feed import MemoryFeed
from agent.flow import Flow
from agent.flow_loader import load_flow
from agent.logs import _CallSidDefault
from agent.ports import SttEvent, Transcript
from agent.replay_stream import Playback
from agent.session import CallSession, SessionDeps
from agent.settings import DEFAULT_FLOW
from agent.store import MemoryStore
from agent.tts_cache import CachedTextToSpeech
from agent.tts_espeak import EspeakTextToSpeech
from media import mulaw
from media.frames import FRAME_BYTES, FRAME_MS, MULAW_SILENCE, split_frames
from twiml.messages import (
    Connected,
    Mark,
    Media,
    MediaFormat,
    OutboundMark,
    OutboundMedia,
    Start,
    Stop,
    encode_inbound,
    parse_outbound,
)

TARGET_P95_MS = 10.0
SCRIPTS: tuple[tuple[str, ...], ...] = (
    ("I want to order a pizza", "billing", "one two three four five six"),  # no match, intent, collect + hang-up
    ("agent",),  # intent → transfer
    ("pizza", "pasta"),  # two no-matches
    ("invoice", "one two three four five six"),
)
ANSWER_TIMEOUT_S = 5.0
QUIET_FRAMES = 10
TURN_END_LIMIT_FRAMES = 250  # 5 s of media after the caller's speech  # the prompt has finished playing this long: the caller speaks
SILENCE = bytes([MULAW_SILENCE]) * FRAME_BYTES


class InProcessSocket:
    """The session's MediaSocket, fed by the driver one message at a time:
    `push` returns once the session has handled the message and waits for the
    next one."""

    def __init__(self) -> None:
        self._inbox: asyncio.Queue[str | None] = asyncio.Queue()
        self._idle = asyncio.Event()
        self.outbox: list[str] = []
        self.closed = False
        self.watching = False
        self.first_media_at: float | None = None
        self.first_media = asyncio.Event()

    async def receive(self) -> str | bytes | None:
        self._idle.set()
        message = await self._inbox.get()
        return message

    async def send(self, text: str) -> None:
        if self.watching and self.first_media_at is None and text.startswith('{"event":"media"'):
            self.first_media_at = time.perf_counter()
            self.first_media.set()
        self.outbox.append(text)

    async def send_all(self, texts: list[str]) -> None:
        for text in texts:
            await self.send(text)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = True
        self._inbox.put_nowait(None)  # the reader sees the socket gone
        self._idle.set()
        self.first_media.set()

    async def push(self, message: str | None, *, wait: bool = True) -> None:
        """Hand the session a message; with `wait`, return once it has taken
        the next one (a `stop` ends the reader: do not wait for that)."""
        if self.closed:
            return
        self._idle.clear()
        self._inbox.put_nowait(message)
        if wait:
            await self._idle.wait()

    def watch(self) -> None:
        self.watching, self.first_media_at = True, None
        self.first_media.clear()

    def take(self) -> list[str]:
        sent, self.outbox = self.outbox, []
        return sent


class CommandedStream:
    """One call's recognizer: `end_turn` is noted; the benchmark delivers the final."""

    def __init__(self, on_event: Callable[[SttEvent], None]) -> None:
        self._on_event = on_event
        self.turn_ended_at: int | None = None

    def set_phrases(self, phrases: Sequence[str]) -> None:
        pass

    def feed(self, mulaw: bytes, pcm16: bytes, now_ms: int) -> None:
        pass

    def end_turn(self, now_ms: int) -> None:
        self.turn_ended_at = now_ms

    def deliver_final(self, text: str) -> float:
        """Deliver the turn's final now; returns the perf_counter just before."""
        end = self.turn_ended_at or 0
        self.turn_ended_at = None
        started = time.perf_counter()
        self._on_event(Transcript(text, True, 0.92, max(0, end - 1000), end, end_of_turn=True))
        return started

    async def flush(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


class CommandedSpeechToText:
    name = "commanded"

    def __init__(self) -> None:
        self.stream: CommandedStream | None = None

    async def open_stream(self, call_sid: str, on_event: Callable[[SttEvent], None]) -> CommandedStream:
        self.stream = CommandedStream(on_event)
        return self.stream


@dataclass
class TurnResults:
    overhead_ms: list[float] = field(default_factory=list)
    session_response_ms: list[float] = field(default_factory=list)  # the session's own measure
    unanswered: int = 0
    calls: int = 0


class _TwilioSide:
    """Twilio's end of one in-process stream: frames, played audio, marks."""

    def __init__(self, socket: InProcessSocket) -> None:
        self.socket = socket
        self.stream_sid = "MZ" + secrets.token_hex(16)
        self.call_sid = "CA" + secrets.token_hex(16)
        self.playback = Playback()
        self._seq = 0
        self._now_ms = 0

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    async def start(self) -> None:
        await self.socket.push(encode_inbound(Connected("Call", "1.0.0")))
        start = Start(
            self._next(), self.stream_sid, "AC" + "0" * 32, self.call_sid, ("inbound",),
            MediaFormat("audio/x-mulaw", 8000, 1), {"From": "+15551230000", "To": "+15559870000"},
        )
        await self.socket.push(encode_inbound(start))

    async def frame(self, payload: bytes = SILENCE) -> None:
        """20 ms: one caller frame in, then 20 ms of the agent's audio played."""
        media = Media(self._next(), self.stream_sid, "inbound", self._seq, self._now_ms, payload)
        self._now_ms += FRAME_MS
        await self.socket.push(encode_inbound(media))
        cleared = self.collect()
        _, marks = self.playback.tick()
        for name in cleared + marks:
            await self.socket.push(encode_inbound(Mark(self._next(), self.stream_sid, name)))

    def collect(self) -> list[str]:
        """Take what the session sent; returns the marks a clear sends back at once."""
        cleared: list[str] = []
        for raw in self.socket.take():
            message = parse_outbound(raw)
            if isinstance(message, OutboundMedia):
                self.playback.add_audio(message.payload)
            elif isinstance(message, OutboundMark):
                self.playback.add_mark(message.name)
            else:
                cleared += self.playback.clear()
        return cleared

    async def until_quiet(self, limit_frames: int = 1500) -> None:
        """Play frames of silence until the agent has been quiet for a while."""
        quiet = 0
        for _ in range(limit_frames):
            if self.socket.closed:
                return
            await self.frame()
            quiet = quiet + 1 if not self.playback.playing else 0
            if quiet >= QUIET_FRAMES:
                return

    async def stop(self) -> None:
        stop = Stop(self._next(), self.stream_sid, "AC" + "0" * 32, self.call_sid)
        await self.socket.push(encode_inbound(stop), wait=False)


async def run_call(deps: SessionDeps, stt: CommandedSpeechToText, script: Sequence[str], speech: list[bytes], results: TurnResults | None) -> None:
    socket = InProcessSocket()
    session = CallSession(deps, socket)
    reader = asyncio.create_task(session.run(), name="bench-session")
    twilio = _TwilioSide(socket)
    try:
        await twilio.start()
        await twilio.until_quiet()  # the greeting
        for text in script:
            if socket.closed:
                break
            stream = stt.stream
            assert stream is not None
            for payload in speech:
                await twilio.frame(payload)
            for _ in range(TURN_END_LIMIT_FRAMES):
                if stream.turn_ended_at is not None or socket.closed:
                    break
                await twilio.frame()
            if socket.closed:
                break
            if stream.turn_ended_at is None:
                raise RuntimeError("the session did not end the caller's turn (VAD heard no speech?)")
            socket.watch()
            started = stream.deliver_final(text)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(socket.first_media.wait(), ANSWER_TIMEOUT_S)
            if results is not None:
                if socket.first_media_at is None:
                    results.unanswered += 1
                else:
                    results.overhead_ms.append((socket.first_media_at - started) * 1000)
            socket.watching = False
            await twilio.until_quiet()
    finally:
        await twilio.stop()
        await reader
    if results is not None:
        results.calls += 1
        results.session_response_ms.extend(session.stats.response_ms)


def _caller_speech() -> list[bytes]:
    from agent.tts_espeak import synthesize_8k

    pcm = synthesize_8k("billing please", "en-us+m3", 165).astype(np.float64) * 0.3
    return split_frames(mulaw.encode(np.clip(pcm, -32768, 32767).astype(np.int16)))


@contextlib.contextmanager
def _production_logging(level: str) -> Iterator[Path]:
    """The session logs as in production, to a throwaway file (not the terminal)."""
    with tempfile.TemporaryDirectory(prefix="callstream-bench-") as tmp:
        path = Path(tmp) / "session.log"
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(call_sid)s %(name)s: %(message)s"))
        handler.addFilter(_CallSidDefault())
        root = logging.getLogger()
        saved = root.handlers[:], root.level
        root.handlers[:] = [handler]
        root.setLevel(level)
        try:
            yield path
        finally:
            root.handlers[:], _ = saved
            root.setLevel(saved[1])
            handler.close()


@dataclass(frozen=True)
class TurnReport:
    turns: int
    calls: int
    overhead: Summary
    session_response: Summary
    unanswered: int
    log_level: str

    @property
    def meets_target(self) -> bool:
        return self.unanswered == 0 and self.overhead.count > 0 and self.overhead.p95 <= TARGET_P95_MS

    def as_dict(self) -> dict[str, object]:
        return {
            "benchmark": "turn",
            "turns": self.turns,
            "calls": self.calls,
            "overhead_ms": self.overhead.as_dict(),
            "session_response_ms": self.session_response.as_dict(),
            "unanswered": self.unanswered,
            "log_level": self.log_level,
            "target": {"p95_ms": TARGET_P95_MS},
            "meets_target": self.meets_target,
        }

    def text(self) -> str:
        return "\n".join(
            [
                f"agent overhead per turn, real CallSession, acme flow, eSpeak behind a warm prompt cache, "
                f"{self.calls} calls, LOG_LEVEL={self.log_level}",
                f"  STT final delivered → first media message sent: {self.overhead.line()}",
                f"  (the session's own response_ms, final → audio ready, before the send: {self.session_response.line()})",
                f"  turns without an answer: {self.unanswered}",
                f"  target p95 ≤ {TARGET_P95_MS:g} ms: " + ("met" if self.meets_target else "NOT met"),
            ]
        )


async def _warm(tts: CachedTextToSpeech, flow: Flow) -> None:
    """Synthesize every prompt of the flow into the cache (none uses a {slot})."""
    for state in flow.states.values():
        for text in (state.say, state.no_match, state.no_input):
            if text and "{" not in text:
                async for _ in tts.synthesize(text, flow.voice, flow.language):
                    pass


async def measure(turns: int, log_level: str) -> TurnReport:
    flow = load_flow(str(DEFAULT_FLOW))
    tts = CachedTextToSpeech(EspeakTextToSpeech())
    stt = CommandedSpeechToText()
    feed = MemoryFeed()
    subscription = feed.subscribe()

    async def drain() -> None:
        async for _ in subscription:
            pass

    drainer = asyncio.create_task(drain(), name="feed-subscriber")
    deps = SessionDeps(
        flow=flow, tts=tts, stt=stt, call_control=None, store=MemoryStore(), feed=feed,
        base_url="http://127.0.0.1:8080",
    )
    speech = _caller_speech()
    try:
        await _warm(tts, flow)
        for script in SCRIPTS:  # and a first round of calls, not counted
            await run_call(deps, stt, script, speech, None)
        results = TurnResults()
        i = 0
        while len(results.overhead_ms) + results.unanswered < turns:
            await run_call(deps, stt, SCRIPTS[i % len(SCRIPTS)], speech, results)
            i += 1
    finally:
        drainer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await drainer
        await tts.aclose()
    return TurnReport(
        turns=len(results.overhead_ms) + results.unanswered,
        calls=results.calls,
        overhead=summarize(results.overhead_ms),
        session_response=summarize(results.session_response_ms),
        unanswered=results.unanswered,
        log_level=log_level,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--turns", type=int, default=400, help="turns measured (default %(default)s)")
    parser.add_argument("--log-level", default="INFO", help="session logging, to a throwaway file (default INFO)")


def run(args: argparse.Namespace) -> int:
    if args.turns < 1:
        raise SystemExit("--turns must be at least 1")
    with _production_logging(args.log_level.upper()):
        report = asyncio.run(measure(args.turns, args.log_level.upper()))
    print(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode() if args.json else report.text())
    return 0 if report.unanswered == 0 else 1
