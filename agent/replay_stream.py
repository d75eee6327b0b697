"""Twilio's end of one Media Stream, for the replay tool and the benchmarks.

`Playback` is Twilio's outbound buffer: agent audio plays 20 ms at a time,
a mark is echoed when the audio queued before it has played, and `clear`
drops the queued audio and echoes every pending mark at once. `StreamLink`
sends a stream's messages with Twilio's counters (sequenceNumber, chunk,
timestamps from the stream's start) and, in lockstep, waits for the server's
`synced` answers. `speech_segments` finds the caller's speech in a tape by
frame energy (where replay expects barge-ins).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections import deque
from typing import Any

import numpy as np
import websockets

from agent.lockstep import is_synced_message, sync_message
from media import mulaw
from media.frames import FRAME_BYTES, FRAME_MS, split_frames
from twiml.messages import Connected, Dtmf, Mark, Media, MediaFormat, Start, Stop, encode_inbound


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


class StreamLink:
    """Twilio's end of one Media Stream of the simulated call."""

    def __init__(
        self,
        ws: websockets.ClientConnection,
        *,
        account_sid: str,
        call_sid: str,
        bidirectional: bool,
        started_ms: int,
    ) -> None:
        self.ws = ws
        self.account_sid = account_sid
        self.call_sid = call_sid
        self.stream_sid = "MZ" + secrets.token_hex(16)
        self.bidirectional = bidirectional
        self.started_ms = started_ms  # call time of its first frame
        self.playback = Playback()
        self.closed = False  # the server closed it
        self.receiver: asyncio.Task[None] | None = None
        self._seq = 0
        self._chunk = 0
        self._sync_id = 0

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    async def send(self, message: str) -> bool:
        if self.closed:
            return False
        try:
            await self.ws.send(message)
        except websockets.ConnectionClosed:
            self.closed = True
            return False
        return True

    async def start(self, parameters: dict[str, str]) -> None:
        await self.send(encode_inbound(Connected(protocol="Call", version="1.0.0")))
        start = Start(
            sequence_number=self._next_seq(),
            stream_sid=self.stream_sid,
            account_sid=self.account_sid,
            call_sid=self.call_sid,
            tracks=("inbound",),
            media_format=MediaFormat(encoding="audio/x-mulaw", sample_rate=8000, channels=1),
            custom_parameters=parameters,
        )
        await self.send(encode_inbound(start))

    async def media(self, call_ms: int, payload: bytes) -> None:
        self._chunk += 1
        media = Media(
            sequence_number=self._next_seq(),
            stream_sid=self.stream_sid,
            track="inbound",
            chunk=self._chunk,
            timestamp=call_ms - self.started_ms,
            payload=payload,
        )
        await self.send(encode_inbound(media))

    async def dtmf(self, digit: str) -> None:
        await self.send(
            encode_inbound(Dtmf(self._next_seq(), self.stream_sid, "inbound_track", digit))
        )

    async def mark(self, name: str) -> None:
        await self.send(encode_inbound(Mark(self._next_seq(), self.stream_sid, name)))

    async def sync(self, on_outbound: Any) -> None:
        """Lockstep: wait until the server settled everything sent so far."""
        self._sync_id += 1
        if not await self.send(sync_message(self.stream_sid, self._sync_id)):
            return
        while True:
            try:
                raw = await self.ws.recv()
            except websockets.ConnectionClosed:
                self.closed = True
                return
            if is_synced_message(raw):
                return
            await on_outbound(self, raw)

    async def stop(self) -> None:
        """Twilio ends the stream: `stop`, then the socket closes."""
        await self.send(
            encode_inbound(Stop(self._next_seq(), self.stream_sid, self.account_sid, self.call_sid))
        )
        if self.receiver is not None:
            self.receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
                await self.receiver
        with contextlib.suppress(Exception):
            await self.ws.close()
        self.closed = True
