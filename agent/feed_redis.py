"""The live feed across instances: Redis pub/sub (REDIS_URL).

Theory of operation
-------------------
Every instance publishes its calls' events on one channel
(`{prefix}feed`) and listens to it, so an ops page or `callstream tail` on
any instance sees every call.

- Local first. `publish` hands the event to an in-process `MemoryFeed` at
  once (this instance's subscribers never wait for Redis, and still see their
  own calls while Redis is away), then appends it to a bounded buffer. It is
  synchronous, does no I/O and never raises: it is called on the media path.
- One publisher task drains the buffer to Redis in pipelined PUBLISH batches.
  Each message is `<origin> <event JSON>`; the origin is this instance's
  random id, so the listener skips its own messages (they were delivered
  locally already).
- One listener task holds the SUBSCRIBE connection and hands other instances'
  events to the local subscribers.

Redis going away is a defined outcome, never an error on the media path: the
first failure of an outage is logged once (WARNING), events that cannot be
sent are dropped and counted (`dropped`, callstream_feed_dropped_total), both
tasks reconnect with exponential backoff, and the return is logged (INFO)
with the number dropped meanwhile. Pub/sub keeps nothing: remote events sent
while a listener was away are not replayed (the archive keeps every call).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import deque

import orjson
import redis.asyncio as aioredis

from agent.events import FeedEvent, event_from_dict
from agent.feed import MemoryFeed, Subscription
from agent.metrics import FEED_DROPPED
from agent.redis_conn import REDIS_DOWN, connect

log = logging.getLogger("callstream.feed")

MAX_BUFFER = 10_000  # events waiting for Redis; past that they are dropped
BATCH = 500  # PUBLISH commands per pipeline round trip
LISTEN_POLL_S = 1.0
CLOSE_WAIT_S = 5.0
SUBSCRIBED_WAIT_S = 3.0


class RedisFeed:
    """The `Feed` port over Redis pub/sub; `await start()` before use."""

    def __init__(
        self,
        url: str,
        prefix: str = "callstream:",
        *,
        max_buffer: int = MAX_BUFFER,
        backoff_s: tuple[float, float] = (0.1, 2.0),
        max_queue: int = 1000,
    ) -> None:
        self.url = url
        self.channel = f"{prefix}feed"
        self.origin = secrets.token_hex(8)
        self._prefix = self.origin.encode() + b" "
        self._local = MemoryFeed(max_queue=max_queue)
        self._max_buffer = max_buffer
        self._backoff_min, self._backoff_max = backoff_s
        self._buffer: deque[FeedEvent] = deque()
        self._wake = asyncio.Event()
        self._subscribed = asyncio.Event()
        self._redis: aioredis.Redis | None = None
        self._up = False  # the publisher's view: False while Redis is away
        self._dropped = 0
        self._dropped_in_outage = 0
        self.received = 0  # events from other instances
        self.malformed = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False

    async def start(self) -> None:
        """Connect (a ConfigError naming REDIS_URL if Redis is unreachable),
        start the publisher and listener, and wait until the listener has
        subscribed so this instance hears every event published from now on."""
        self._redis = await connect(self.url)
        self._up = True
        self._tasks = [
            asyncio.create_task(self._publish_loop(), name="feed-redis-publish"),
            asyncio.create_task(self._listen_loop(), name="feed-redis-listen"),
        ]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), SUBSCRIBED_WAIT_S)

    # --- the Feed port ------------------------------------------------------------
    def publish(self, event: FeedEvent) -> None:
        self._local.publish(event)
        if not self._up or len(self._buffer) >= self._max_buffer:
            self._drop(1)
            return
        self._buffer.append(event)
        self._wake.set()

    def subscribe(self, call_sid: str | None = None) -> Subscription:
        return self._local.subscribe(call_sid)

    @property
    def dropped(self) -> int:
        """Events lost: not sent to Redis, or not taken by a slow local subscriber."""
        return self._dropped + self._local.dropped

    @property
    def connected(self) -> bool:
        return self._up

    # --- publisher ------------------------------------------------------------------
    def _drop(self, n: int) -> None:
        self._dropped += n
        self._dropped_in_outage += n
        FEED_DROPPED.inc(n)

    async def _publish_loop(self) -> None:
        assert self._redis is not None
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()
            while self._buffer:
                batch = [self._buffer.popleft() for _ in range(min(BATCH, len(self._buffer)))]
                try:
                    async with self._redis.pipeline(transaction=False) as pipe:
                        for event in batch:
                            pipe.publish(self.channel, self._prefix + event.to_json())
                        await pipe.execute()
                except REDIS_DOWN as exc:
                    self._up = False
                    self._drop(len(batch) + len(self._buffer))
                    self._buffer.clear()
                    log.warning(
                        "live feed: Redis %s unreachable (%s): events are delivered on this "
                        "instance only, dropped for the others, until it is back",
                        self.channel, exc,
                    )
                    await self._reconnect()
                except Exception:  # our bug, not Redis: lose the batch, keep the feed
                    self._drop(len(batch))
                    log.exception("live feed: publishing %d events failed", len(batch))

    async def _reconnect(self) -> None:
        assert self._redis is not None
        backoff = self._backoff_min
        while not self._closing:
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._backoff_max)
            try:
                await self._redis.ping()
            except REDIS_DOWN as exc:
                log.debug("live feed: Redis still unreachable (%s)", exc)
                continue
            self._up = True
            log.info(
                "live feed: Redis is back; %d events were dropped while it was away",
                self._dropped_in_outage,
            )
            self._dropped_in_outage = 0
            return

    # --- listener ---------------------------------------------------------------------
    async def _listen_loop(self) -> None:
        assert self._redis is not None
        backoff = self._backoff_min
        down = False
        while not self._closing:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self._subscribed.set()
                if down:
                    log.info("live feed: listening to %s again", self.channel)
                down, backoff = False, self._backoff_min
                while not self._closing:
                    message = await pubsub.get_message(timeout=LISTEN_POLL_S)
                    if message is not None and message.get("type") == "message":
                        self._on_message(message["data"])
            except REDIS_DOWN as exc:
                self._subscribed.clear()
                if not down:
                    log.warning(
                        "live feed: lost the Redis subscription (%s): other instances' calls "
                        "are missing here until it is back",
                        exc,
                    )
                down = True
            except Exception:
                self._subscribed.clear()
                log.exception("live feed: the Redis listener failed: subscribing again")
                down = True
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._backoff_max)

    def _on_message(self, data: bytes) -> None:
        origin, _, body = data.partition(b" ")
        if origin == self._prefix[:-1]:
            return  # ours: delivered locally when published
        try:
            event = event_from_dict(orjson.loads(body))
        except (ValueError, TypeError) as exc:  # orjson.JSONDecodeError is a ValueError
            self.malformed += 1
            if self.malformed <= 3 or self.malformed % 1000 == 0:
                log.warning("live feed: ignored a malformed message on %s: %s", self.channel, exc)
            return
        self.received += 1
        self._local.publish(event)

    async def wait_subscribed(self, timeout_s: float) -> bool:
        """True once the listener holds its subscription (tests, readiness)."""
        try:
            await asyncio.wait_for(self._subscribed.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def aclose(self) -> None:
        # redis-py's pubsub sometimes swallows a cancel (measured: ~1 in 5 when it
        # lands during subscribe/get_message), so cancel again until the tasks end;
        # the loops also stop by themselves on `_closing` within LISTEN_POLL_S
        self._closing = True
        self._wake.set()
        pending = set(self._tasks)
        deadline = asyncio.get_running_loop().time() + CLOSE_WAIT_S
        while pending and asyncio.get_running_loop().time() < deadline:
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.05)
        for task in pending:
            log.error("live feed: %s did not stop within %.0f s", task.get_name(), CLOSE_WAIT_S)
        self._tasks = []
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
