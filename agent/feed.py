"""The live feed port and its embedded default: an in-process broadcast.

`publish` is synchronous and never blocks or raises: a subscriber that stops
reading has a bounded queue, and what does not fit is dropped and counted, so
a slow ops page can never slow the media path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Protocol

from agent.events import FeedEvent
from agent.metrics import FEED_DROPPED

log = logging.getLogger(__name__)


class Subscription(Protocol):
    def __aiter__(self) -> AsyncIterator[FeedEvent]: ...

    async def aclose(self) -> None: ...


class Feed(Protocol):
    def publish(self, event: FeedEvent) -> None: ...

    def subscribe(self, call_sid: str | None = None) -> Subscription: ...

    @property
    def dropped(self) -> int: ...


class _MemorySubscription:
    def __init__(self, feed: MemoryFeed, call_sid: str | None, max_queue: int) -> None:
        self._feed = feed
        self.call_sid = call_sid
        self.queue: asyncio.Queue[FeedEvent | None] = asyncio.Queue(max_queue)

    def offer(self, event: FeedEvent) -> bool:
        if self.call_sid is not None and event.call_sid != self.call_sid:
            return True
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            return False
        return True

    async def __aiter__(self) -> AsyncIterator[FeedEvent]:
        while True:
            event = await self.queue.get()
            if event is None:
                return
            yield event

    async def aclose(self) -> None:
        self._feed._subscribers.discard(self)
        with contextlib.suppress(asyncio.QueueFull):  # a full queue ends the reader anyway
            self.queue.put_nowait(None)


class MemoryFeed:
    """Broadcast to the subscribers of this process."""

    def __init__(self, max_queue: int = 1000) -> None:
        self._subscribers: set[_MemorySubscription] = set()
        self._max_queue = max_queue
        self._dropped = 0

    def publish(self, event: FeedEvent) -> None:
        for sub in tuple(self._subscribers):
            if not sub.offer(event):
                self._dropped += 1
                FEED_DROPPED.inc()
                if self._dropped % 1000 == 1:
                    log.warning("feed subscriber too slow: %d events dropped so far", self._dropped)

    def subscribe(self, call_sid: str | None = None) -> _MemorySubscription:
        sub = _MemorySubscription(self, call_sid, self._max_queue)
        self._subscribers.add(sub)
        return sub

    @property
    def dropped(self) -> int:
        return self._dropped
