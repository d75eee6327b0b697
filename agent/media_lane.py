"""The media socket's direct lane: uvicorn's sans-I/O WebSocket protocol,
with the session reading and writing it without the ASGI hops per message.

Theory of operation
-------------------
Twilio sends 50 messages a second per call. Through ASGI each one is a dict
on an `asyncio.Queue`, Starlette's state checks, and uvicorn pausing the
transport after every message and resuming it on the next `receive()` (two
epoll_ctl calls per frame); each message we send is one `transport.write`.
`callstream bench calls` measured that at about a third of the server's CPU
(BENCHMARKS.md).

`MediaWebSocketProtocol` is uvicorn's `WebSocketsSansIOProtocol` (the
`ws="websockets-sansio"` we serve with), unchanged for the handshake: the
Starlette route still checks the signature and accepts or refuses. It puts
itself in the scope's extensions (`MEDIA_LANE`); once the route has accepted,
`direct()` switches the connection to the lane. From then on a text message
goes straight into a deque the session reads (`DirectMediaSocket.receive`
returns at once when one is waiting); reading is paused only when
`HIGH_WATER` messages wait unread (back-pressure on a stuck session) and
resumed under `LOW_WATER`; `send_all` writes a batch (agent media + its mark)
with one `transport.write`. Disconnects, pings, close and the closing
handshake are uvicorn's own code paths. Without the extension (another ASGI
server) the route keeps the plain Starlette adapter.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState
from websockets.http11 import Request

MEDIA_LANE = "callstream.media_lane"
HIGH_WATER = 64  # unread messages before reading pauses (1.3 s of one call's audio)
LOW_WATER = 16

log = logging.getLogger("callstream.media_lane")


class _NotifyingQueue(asyncio.Queue[Any]):
    """uvicorn's control-event queue (disconnects), waking the lane's reader."""

    def __init__(self, on_put: Any) -> None:
        super().__init__()
        self._on_put = on_put

    def put_nowait(self, item: Any) -> None:
        super().put_nowait(item)
        self._on_put()


class MediaWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O protocol plus the direct lane (module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = _NotifyingQueue(self._wake)
        self.inbox: deque[str | bytes] = deque()
        self.direct_mode = False
        self._waiter: asyncio.Future[None] | None = None

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)  # absent when the upgrade was refused
        if scope is not None:
            scope["extensions"][MEDIA_LANE] = self

    def send_receive_event_to_app(self) -> None:
        if not self.direct_mode:
            super().send_receive_event_to_app()
            return
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        if self.close_sent:
            return  # past our close: discard, as uvicorn does
        if self.curr_msg_data_type == "text":
            try:
                self.inbox.append(data.decode())
            except UnicodeDecodeError:
                self.logger.exception("Invalid UTF-8 sequence received from client.")
                self.conn.send_close(1007)
                self.handle_parser_exception()
                return
        else:
            self.inbox.append(data)
        if len(self.inbox) >= HIGH_WATER and not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def direct(self) -> DirectMediaSocket:
        """Switch to the lane (after the route accepted): messages already
        queued for ASGI move to the inbox, in order."""
        queue = self.queue
        kept = []
        while not queue.empty():
            event = queue.get_nowait()
            if event["type"] == "websocket.receive":
                text = event.get("text")
                self.inbox.append(text if text is not None else event.get("bytes") or b"")
            else:
                kept.append(event)  # a disconnect: the reader sees it after the inbox
        for event in kept:
            queue.put_nowait(event)
        self.direct_mode = True
        if self.read_paused and len(self.inbox) < HIGH_WATER and not self.close_sent:
            self.read_paused = False
            self.transport.resume_reading()
        return DirectMediaSocket(self)


class DirectMediaSocket:
    """The session's MediaSocket on the lane."""

    def __init__(self, protocol: MediaWebSocketProtocol) -> None:
        self._p = protocol

    async def receive(self) -> str | bytes | None:
        p = self._p
        while True:
            if p.inbox:
                message = p.inbox.popleft()
                if p.read_paused and len(p.inbox) <= LOW_WATER and not p.close_sent:
                    p.read_paused = False
                    p.transport.resume_reading()
                return message
            if not p.queue.empty():
                if p.queue.get_nowait()["type"] == "websocket.disconnect":
                    return None
                continue
            waiter = p.loop.create_future()
            p._waiter = waiter
            try:
                await waiter
            finally:
                p._waiter = None

    async def send(self, text: str) -> None:
        await self._p.send({"type": "websocket.send", "text": text})

    async def send_all(self, texts: list[str]) -> None:
        """Several messages, one write (uvicorn's send, batched)."""
        p = self._p
        if p.close_sent or len(texts) == 1:
            for text in texts:  # uvicorn's own checks and errors
                await self.send(text)
            return
        await p.writable.wait()
        if p.disconnected:
            raise ClientDisconnected()
        try:
            for text in texts:
                p.conn.send_text(text.encode())
        except InvalidState:
            raise ClientDisconnected() from None
        p.transport.write(b"".join(p.conn.data_to_send()))

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self._p.send({"type": "websocket.close", "code": code, "reason": reason})

    async def close_if_open(self) -> None:
        """As StarletteMediaSocket.close_if_open: a session that ended on
        Twilio's `stop` sends a close frame (1000) rather than drop the TCP."""
        p = self._p
        if p.close_sent or p.disconnected:
            return
        try:
            await self.close(1000, "stream over")
        except Exception as exc:  # the peer went between the check and the close
            log.debug("closing a finished media socket: %r", exc)
