"""A hand-driven Twilio for server tests: exact messages, malformed ones too.

It speaks Media Streams over a real WebSocket and uses replay lockstep
(agent/lockstep.py) so every answer of the server is collected at a known
media time.
"""

from __future__ import annotations

import secrets

import websockets

from agent.lockstep import LOCKSTEP_PARAMETER, is_synced_message, sync_message
from agent.replay_stream import Playback
from media.frames import FRAME_BYTES, MULAW_SILENCE, split_frames
from twiml.messages import (
    Connected,
    Dtmf,
    Mark,
    Media,
    MediaFormat,
    OutboundClear,
    OutboundMark,
    OutboundMedia,
    OutboundMessage,
    Start,
    Stop,
    encode_inbound,
    parse_outbound,
)


class TwilioStream:
    def __init__(self, ws: websockets.ClientConnection, call_sid: str | None = None) -> None:
        self.ws = ws
        self.call_sid = call_sid or "CA" + secrets.token_hex(16)
        self.stream_sid = "MZ" + secrets.token_hex(16)
        self.seq = 0
        self.chunk = 0
        self.now_ms = 0
        self.received: list[tuple[int, OutboundMessage]] = []  # (media ms, message)
        self.sync_id = 0
        self.playback = Playback()

    def _next(self) -> int:
        self.seq += 1
        return self.seq

    async def send_raw(self, raw: str | bytes) -> None:
        await self.ws.send(raw)

    async def start(self, parameters: dict[str, str] | None = None, *, lockstep: bool = True) -> None:
        params = dict(parameters or {})
        if lockstep:
            params[LOCKSTEP_PARAMETER] = "1"
        await self.ws.send(encode_inbound(Connected("Call", "1.0.0")))
        await self.ws.send(
            encode_inbound(
                Start(
                    self._next(), self.stream_sid, "AC" + "0" * 32, self.call_sid, ("inbound",),
                    MediaFormat("audio/x-mulaw", 8000, 1), params,
                )
            )
        )
        if lockstep:
            await self.sync()

    async def frame(self, payload: bytes | None = None) -> None:
        self.chunk += 1
        payload = payload if payload is not None else bytes([MULAW_SILENCE]) * FRAME_BYTES
        await self.ws.send(
            encode_inbound(Media(self._next(), self.stream_sid, "inbound", self.chunk, self.now_ms, payload))
        )
        self.now_ms += 20
        await self.sync()

    async def audio(self, mulaw: bytes) -> None:
        for payload in split_frames(mulaw):
            await self.frame(payload)
            await self.play()

    async def silence(self, ms: int) -> None:
        for _ in range(ms // 20):
            await self.frame()
            await self.play()

    async def dtmf(self, digit: str) -> None:
        await self.ws.send(encode_inbound(Dtmf(self._next(), self.stream_sid, "inbound_track", digit)))
        await self.sync()

    async def mark(self, name: str) -> None:
        await self.ws.send(encode_inbound(Mark(self._next(), self.stream_sid, name)))
        await self.sync()

    async def stop(self) -> None:
        await self.ws.send(encode_inbound(Stop(self._next(), self.stream_sid, "AC" + "0" * 32, self.call_sid)))

    async def sync(self) -> None:
        """Wait until the server settled everything for the messages so far,
        playing its answers like Twilio: a clear echoes the pending marks."""
        self.sync_id += 1
        await self.ws.send(sync_message(self.stream_sid, self.sync_id))
        while True:
            raw = await self.ws.recv()
            if is_synced_message(raw):
                return
            message = parse_outbound(raw)
            self.received.append((self.now_ms, message))
            if isinstance(message, OutboundMedia):
                self.playback.add_audio(message.payload)
            elif isinstance(message, OutboundMark):
                self.playback.add_mark(message.name)
            elif isinstance(message, OutboundClear):
                for name in self.playback.clear():
                    await self.ws.send(encode_inbound(Mark(self._next(), self.stream_sid, name)))

    async def play(self) -> None:
        """20 ms of agent audio plays at Twilio; echo the marks now due."""
        _, marks = self.playback.tick()
        for name in marks:
            await self.ws.send(encode_inbound(Mark(self._next(), self.stream_sid, name)))

    def kinds(self) -> list[str]:
        return [type(m).__name__ for _, m in self.received]

    def at(self, kind: type) -> list[int]:
        """Media times at which messages of `kind` arrived."""
        return [t for t, m in self.received if isinstance(m, kind)]
