"""The load generator of `callstream bench calls`: simulated Twilio calls at
real-time pacing, many per process.

Theory of operation
-------------------
One worker process runs one asyncio loop and plays `calls` Media Streams
against the server. Each call is a plain `asyncio.Protocol` around websockets'
sans-I/O `ClientProtocol`: no task per call and none per frame. A single
ticker per process fires every `TICK_S` (5 ms) on an absolute schedule and
sends one frame to each call of that tick's group (a call's group is its
index mod `GROUPS`), so every call gets a frame every 20 ms and the calls'
frames are spread over the 20 ms as Twilio's are, not sent in one burst.

A frame is a pre-encoded message (`media_message`): only sequenceNumber,
chunk, timestamp and the (pre-encoded) payload change. The caller's audio
is a tape cut from the fixture calls: cycles of 1 s silence, up to 1 s of
speech, silence to 4 s; calls start at different cycles. The agent answers
the first words with a no-match reprompt about 700 ms after they end, so
the next words (4 s later) land while it speaks: a barge-in (`clear`).

Agent audio is "played" as Twilio would (agent/replay_stream.py `Playback`):
the audio end moves on by each media message's duration from the caller's
media time, a mark is echoed once the caller's timeline passes the end of
the audio sent before it, and a `clear` echoes every pending mark at once.

The ticker measures its own lateness (how late each tick ran against its
schedule): if the generator falls behind, the server is not to blame.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from binascii import b2a_base64
from collections import deque
from dataclasses import asdict, dataclass, field
from glob import glob
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from agent.replay_stream import speech_segments
from media.frames import FRAME_BYTES, FRAME_MS, MULAW_SILENCE, split_frames
from media.wav import load_caller_mulaw
from twiml.messages import Connected, Mark, MediaFormat, Start, Stop, encode_inbound

FIXTURE_CALLS = Path(__file__).resolve().parents[2] / "fixtures" / "calls"
GROUPS = 4
TICK_S = FRAME_MS / 1000 / GROUPS  # 5 ms: one group of calls per tick
CYCLE_MS = 4000
SILENCE_BEFORE_MS = 1000
SPEECH_MAX_MS = 1000
ACCOUNT_SID = "AC" + "b" * 32
BYTES_PER_MS = 8


# --- the caller's audio -------------------------------------------------------------
def caller_tape(folder: Path = FIXTURE_CALLS) -> tuple[list[str], int]:
    """Base64 frames of the caller tape, and its number of 4 s cycles."""
    silence = bytes([MULAW_SILENCE])
    tape = bytearray()
    cycles = 0
    for path in sorted(glob(str(folder / "*.wav"))):
        audio = load_caller_mulaw(path)
        for onset, end in speech_segments(audio):
            clip = audio[onset * BYTES_PER_MS : min(end, onset + SPEECH_MAX_MS) * BYTES_PER_MS]
            cycle = silence * (SILENCE_BEFORE_MS * BYTES_PER_MS) + clip
            tape += cycle + silence * (CYCLE_MS * BYTES_PER_MS - len(cycle))
            cycles += 1
    if not cycles:
        raise SystemExit(f"bench calls: no caller speech found in {folder}/*.wav")
    frames = [b2a_base64(f, newline=False).decode("ascii") for f in split_frames(bytes(tape), FRAME_BYTES)]
    return frames, cycles


def media_message(seq: int, chunk: int, timestamp: int, payload_b64: str, stream_sid: str) -> str:
    """A Twilio media message, byte for byte what `encode_inbound(Media(...))` makes."""
    return (
        '{"event":"media","sequenceNumber":"' + str(seq)
        + '","media":{"track":"inbound","chunk":"' + str(chunk)
        + '","timestamp":"' + str(timestamp)
        + '","payload":"' + payload_b64
        + '"},"streamSid":"' + stream_sid + '"}'
    )


def base64_bytes(b64: str) -> int:
    """Decoded length of a base64 string (without decoding it)."""
    return len(b64) // 4 * 3 - b64[-2:].count("=") if b64 else 0


# --- the plan and the report ------------------------------------------------------------
@dataclass(frozen=True)
class LoadPlan:
    url: str  # ws://host:port/twilio/media
    first: int  # global index of this worker's first call
    calls: int  # calls this worker plays
    total: int  # calls over all workers (staggering)
    stagger_s: float  # calls start evenly over this
    core: int | None  # pin the worker to this core


@dataclass
class LoadReport:
    """What one worker saw; counts in the measured window unless named total."""

    connected: int = 0
    failed: int = 0  # could not connect or upgrade
    closed_by_server: int = 0
    frames_sent: int = 0
    media_in: int = 0
    marks_in: int = 0
    marks_echoed: int = 0
    clears_in: int = 0
    tick_lateness_ms: list[float] = field(default_factory=list)
    cpu_s: float = 0.0  # this process, in the window
    window_s: float = 0.0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- one call -------------------------------------------------------------------------------
class CallLink(asyncio.Protocol):
    """Twilio's end of one Media Stream (see the module docstring)."""

    def __init__(self, worker: LoadWorker, index: int) -> None:
        self.worker = worker
        self.index = index
        self.ws = ClientProtocol(parse_uri(worker.plan.url), max_size=2**20)
        self.transport: asyncio.Transport | None = None
        self.open = False  # streaming: the ticker sends it frames
        self.gone = False
        self.call_sid = "CA" + secrets.token_hex(16)
        self.stream_sid = "MZ" + secrets.token_hex(16)
        self.seq = 0
        self.media_ms = 0  # timestamp of the next frame
        self.tape_at = (index % worker.cycles) * (CYCLE_MS // FRAME_MS)
        self.audio_end_ms = 0  # where the agent audio queued at "Twilio" ends
        self.marks: deque[tuple[int, str]] = deque()  # (due media ms, name)

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.ws.send_request(self.ws.connect())
        self._write()

    def data_received(self, data: bytes) -> None:
        self.ws.receive_data(data)
        for event in self.ws.events_received():
            if isinstance(event, Response):
                if self.ws.handshake_exc is not None:
                    self.worker.call_failed(self, f"upgrade refused: {self.ws.handshake_exc}")
                    return
                self._start()
            elif isinstance(event, Frame):
                if event.opcode is Opcode.TEXT:
                    self._on_server_message(event.data)
                elif event.opcode is Opcode.CLOSE and not self.worker.stopping:
                    self.worker.report.closed_by_server += 1
                    self.open = False
        self._write()
        if self.ws.close_expected() and self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self.gone = True

    # Twilio's side
    def _start(self) -> None:
        self._send(encode_inbound(Connected(protocol="Call", version="1.0.0")))
        self.seq += 1
        self._send(encode_inbound(Start(
            sequence_number=self.seq,
            stream_sid=self.stream_sid,
            account_sid=ACCOUNT_SID,
            call_sid=self.call_sid,
            tracks=("inbound",),
            media_format=MediaFormat(encoding="audio/x-mulaw", sample_rate=8000, channels=1),
            custom_parameters={"From": f"+1555{self.index:07d}", "To": "+15557770000"},
        )))
        self.open = True
        self.worker.report.connected += 1

    def send_frame(self, tape: list[str]) -> None:
        """One 20 ms frame of the caller; then the marks whose audio has played."""
        self.seq += 1
        chunk = self.media_ms // FRAME_MS + 1
        self._send(media_message(self.seq, chunk, self.media_ms, tape[self.tape_at], self.stream_sid))
        if self.worker.measuring:
            self.worker.report.frames_sent += 1
        self.tape_at = (self.tape_at + 1) % len(tape)
        self.media_ms += FRAME_MS
        marks = self.marks
        while marks and marks[0][0] <= self.media_ms:
            self._echo(marks.popleft()[1])
        self._write()

    def stop(self) -> None:
        if self.open:
            self.seq += 1
            self._send(encode_inbound(Stop(self.seq, self.stream_sid, ACCOUNT_SID, self.call_sid)))
            self.open = False
        with contextlib.suppress(Exception):
            self.ws.send_close(1000, "bench over")
        self._write()

    def _on_server_message(self, data: bytes | bytearray | memoryview) -> None:
        report = self.worker.report
        try:
            message = orjson.loads(data)
            event = message["event"]
            if event == "media":
                report.media_in += 1
                ms = base64_bytes(message["media"]["payload"]) // BYTES_PER_MS
                self.audio_end_ms = max(self.audio_end_ms, self.media_ms) + ms
            elif event == "mark":
                report.marks_in += 1
                self.marks.append((self.audio_end_ms, message["mark"]["name"]))
            elif event == "clear":
                report.clears_in += 1
                while self.marks:  # Twilio echoes every pending mark at once
                    self._echo(self.marks.popleft()[1])
                self.audio_end_ms = self.media_ms
        except (ValueError, KeyError, TypeError) as exc:
            self.worker.error(f"call {self.index}: unexpected message from the server ({exc!r})")

    def _echo(self, name: str) -> None:
        self.seq += 1
        self._send(encode_inbound(Mark(self.seq, self.stream_sid, name)))
        self.worker.report.marks_echoed += 1

    def _send(self, text: str) -> None:
        self.ws.send_text(text.encode())

    def _write(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            self.ws.data_to_send()
            return
        for data in self.ws.data_to_send():
            if data:
                transport.write(data)
            elif transport.can_write_eof():
                transport.write_eof()


# --- one worker process ------------------------------------------------------------------
class LoadWorker:
    def __init__(self, plan: LoadPlan, tape: list[str], cycles: int) -> None:
        self.plan = plan
        self.tape = tape
        self.cycles = cycles
        self.report = LoadReport()
        self.links: list[CallLink] = []
        self.groups: list[list[CallLink]] = [[] for _ in range(GROUPS)]
        self.measuring = False
        self.stopping = False
        self._t0 = 0.0
        self._done: asyncio.Future[None] | None = None
        self._measure = (0.0, 0.0)
        self._cpu0 = 0.0

    def error(self, text: str) -> None:
        if len(self.report.errors) < 20:
            self.report.errors.append(text)

    def call_failed(self, link: CallLink, reason: str) -> None:
        self.report.failed += 1
        self.error(f"call {link.index}: {reason}")
        link.gone = True
        if link.transport is not None:
            link.transport.close()

    async def run(self, start_at: float, measure_from: float, measure_to: float) -> LoadReport:
        """Start the calls from `start_at` (time.monotonic), measure over the
        window, stop the calls at its end."""
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        self._measure = (measure_from, measure_to)
        plan = self.plan
        for i in range(plan.calls):
            index = plan.first + i
            link = CallLink(self, index)
            self.links.append(link)
            self.groups[index % GROUPS].append(link)
            at = start_at + plan.stagger_s * index / max(1, plan.total)
            loop.call_at(at, self._connect, link)
        self._t0 = start_at
        loop.call_at(start_at, self._tick, 0)
        await self._done
        for link in self.links:
            link.stop()
        await asyncio.sleep(0.5)
        for link in self.links:
            if link.transport is not None:
                link.transport.close()
        return self.report

    def _connect(self, link: CallLink) -> None:
        async def connect() -> None:
            parts = urlsplit(self.plan.url)
            try:
                await asyncio.get_running_loop().create_connection(
                    lambda: link, parts.hostname or "127.0.0.1", parts.port or 80
                )
            except OSError as exc:
                self.call_failed(link, f"connect failed: {exc!r}")

        asyncio.get_running_loop().create_task(connect())

    def _tick(self, k: int) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        measure_from, measure_to = self._measure
        if now >= measure_to:
            self.measuring = False
            self.report.cpu_s = time.process_time() - self._cpu0
            self.report.window_s = now - measure_from
            self.stopping = True
            assert self._done is not None
            self._done.set_result(None)
            return
        if not self.measuring and now >= measure_from:
            self.measuring = True
            self._cpu0 = time.process_time()
        if self.measuring:
            self.report.tick_lateness_ms.append((now - (self._t0 + k * TICK_S)) * 1000)
        tape = self.tape
        for link in self.groups[k % GROUPS]:
            if link.open:
                link.send_frame(tape)
        loop.call_at(self._t0 + (k + 1) * TICK_S, self._tick, k + 1)


def worker_main(plan: LoadPlan, conn: Any) -> None:
    """A worker process: build the tape, say ready, get the times, play, report."""
    if plan.core is not None:
        os.sched_setaffinity(0, {plan.core})
    tape, cycles = caller_tape()
    conn.send("ready")
    start_at, measure_from, measure_to = conn.recv()
    worker = LoadWorker(plan, tape, cycles)
    report = asyncio.run(worker.run(start_at, measure_from, measure_to))
    conn.send(report.as_dict())
    conn.close()
