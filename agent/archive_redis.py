"""The distributed archive queue: a Redis Stream read by `callstream worker` processes.

Theory of operation
-------------------
Servers never write a job straight to Redis: `enqueue` puts it in the
server's local spool (agent/archive_spool.py, durable at once, no network
on the call's path) and a forwarder moves it into the stream with XADD, then
deletes it locally. If Redis is down the job waits in the spool and is
forwarded when Redis is back. The job carries its bytes (the redacted record
and the two mu-law tracks, ~16 KB per second of call): instances need not
share a disk, and the worker can always reach what Redis holds.

`callstream_archive_queue_depth` is each process's own view: the local
spool's backlog in a server, the stream's length in a worker.

Workers form one consumer group. Per Redis "Streams" docs: XREADGROUP `>`
delivers each new entry to one consumer and records it in the group's
pending entries list (PEL) until XACK. A worker acks (and XDELs) only after
every object is stored. A worker that dies leaves its entries pending; after
`claim_idle_s` without news any worker takes them over with XAUTOCLAIM. A
worker busy with a long job (or waiting out a retry backoff) keeps its claim
fresh with `XCLAIM … JUSTID` (resets the idle time, not the delivery count).

Failures retry in place with exponential backoff; after `max_attempts`, or
when an entry has been delivered `max_deliveries` times (it keeps killing
workers), it moves to the dead-letter stream with the reason — still kept;
`callstream archive requeue` moves it back. Redis itself should persist the
streams (AOF, `appendonly yes`): with RDB snapshots only, a Redis crash
loses the jobs written since the last snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import redis
import redis.asyncio as aredis

from agent.archive_jobs import peek_call_sid
from agent.archive_worker import ArchiveProcessor, Stored, backoff_s, is_retryable, log_failure
from agent.events import ArchiveStoredEvent, FeedEvent
from agent.logs import call_logger
from agent.metrics import ARCHIVE_QUEUE_DEPTH

log = logging.getLogger("callstream.archive")

DEFAULT_PREFIX = "callstream:"
GROUP = "archive-workers"


def stream_names(prefix: str = DEFAULT_PREFIX) -> tuple[str, str]:
    """(jobs stream, dead-letter stream)."""
    return f"{prefix}archive:jobs", f"{prefix}archive:dead"


class RedisForwarder:
    """A spool handler: XADD the job to the stream (blocking, on the drainer's thread)."""

    def __init__(self, url: str, prefix: str = DEFAULT_PREFIX) -> None:
        self._redis = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
        self.stream, _ = stream_names(prefix)

    def __call__(self, data: bytes) -> Stored | None:
        self._redis.xadd(self.stream, {"job": data, "call_sid": peek_call_sid(data)})
        return None

    def close(self) -> None:
        self._redis.close()


class RedisArchiveWorker:
    def __init__(
        self,
        url: str,
        processor: ArchiveProcessor,
        *,
        consumer: str,
        prefix: str = DEFAULT_PREFIX,
        publish: Callable[[FeedEvent], None] | None = None,
        claim_idle_s: float = 60.0,
        max_attempts: int = 20,
        max_deliveries: int = 5,
        backoff_base_s: float = 1.0,
        backoff_cap_s: float = 300.0,
        block_ms: int = 2000,
    ) -> None:
        self._redis = aredis.Redis.from_url(url, socket_connect_timeout=5)
        self.processor = processor
        self.consumer = consumer
        self.stream, self.dead = stream_names(prefix)
        self.publish = publish
        self.claim_idle_ms = int(claim_idle_s * 1000)
        self.max_attempts = max_attempts
        self.max_deliveries = max_deliveries
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.block_ms = block_ms
        self.stored = 0
        self._stopping = False

    def stop(self) -> None:
        """Finish the job in hand, then return from `run`."""
        self._stopping = True

    async def aclose(self) -> None:
        await self._redis.aclose()

    async def run(self, *, drain: bool = False) -> None:
        """Consume until stopped; with `drain`, return once the stream is empty."""
        down_since: float | None = None
        while not self._stopping:
            try:
                await self._ensure_group()
                messages = await self._reclaim() or await self._read()
                if down_since is not None:
                    log.info("Redis is back after %.1f s: archive worker %s resumes", time.monotonic() - down_since, self.consumer)
                    down_since = None
                if not messages:
                    length = await self._redis.xlen(self.stream)
                    ARCHIVE_QUEUE_DEPTH.set(length)
                    if drain and length == 0:
                        return
                    continue
                for entry_id, fields in messages:
                    await self._handle(entry_id, fields)
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                if down_since is None:
                    down_since = time.monotonic()
                    log.error("Redis unavailable for the archive queue (%s): retrying", exc)
                await asyncio.sleep(min(2.0, 0.1 + time.monotonic() - down_since))

    async def _ensure_group(self) -> None:
        try:
            await self._redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _reclaim(self) -> list[Any]:
        """Entries another consumer took but has not touched for `claim_idle_s`."""
        result = await self._redis.xautoclaim(
            self.stream, GROUP, self.consumer, min_idle_time=self.claim_idle_ms, start_id="0-0", count=1
        )
        messages = [m for m in result[1] if m[1]]  # entries deleted meanwhile come back empty
        for entry_id, _ in messages:
            log.warning("archive job %s taken over from a worker that went quiet", _text(entry_id))
        return messages

    async def _read(self) -> list[Any]:
        reply: Any = await self._redis.xreadgroup(GROUP, self.consumer, {self.stream: ">"}, count=1, block=self.block_ms)
        return list(reply[0][1]) if reply else []

    async def _deliveries(self, entry_id: bytes) -> int:
        pending = await self._redis.xpending_range(self.stream, GROUP, min=entry_id, max=entry_id, count=1)
        return int(pending[0]["times_delivered"]) if pending else 1

    async def _handle(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        data = fields.get(b"job", b"")
        call_sid = peek_call_sid(data)
        clog = call_logger(call_sid, "callstream.archive")
        deliveries = await self._deliveries(entry_id)
        if deliveries > self.max_deliveries:
            await self._bury(entry_id, data, call_sid, f"delivered {deliveries} times without finishing")
            return
        heartbeat = asyncio.create_task(self._keep_claim(entry_id))
        try:
            attempts = 0
            while True:
                try:
                    stored = await asyncio.to_thread(self.processor.process, data)
                    break
                except Exception as exc:
                    attempts += 1
                    log_failure(call_sid, exc, attempts, "store")
                    if not is_retryable(exc) or attempts >= self.max_attempts:
                        await self._bury(entry_id, data, call_sid, f"{type(exc).__name__}: {exc}")
                        return
                    delay = backoff_s(attempts, self.backoff_base_s, self.backoff_cap_s)
                    clog.warning("archive job %s kept: retry in %.1f s", _text(entry_id), delay)
                    await asyncio.sleep(delay)
                    if self._stopping:
                        return  # left pending: another worker takes it over
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xack(self.stream, GROUP, entry_id)
            pipe.xdel(self.stream, entry_id)
            await pipe.execute()
        self.stored += 1
        clog.info("archived in %s", stored.location)
        if self.publish is not None:
            self.publish(ArchiveStoredEvent(call_sid=stored.call_sid, t=int(time.time() * 1000), location=stored.location))

    async def _keep_claim(self, entry_id: bytes) -> None:
        while True:
            await asyncio.sleep(max(0.05, self.claim_idle_ms / 3000))
            with contextlib.suppress(redis.RedisError, OSError):
                await self._redis.xclaim(self.stream, GROUP, self.consumer, 0, [entry_id], justid=True)

    async def _bury(self, entry_id: bytes, data: bytes, call_sid: str, reason: str) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xadd(self.dead, {"job": data, "call_sid": call_sid, "reason": reason, "id": entry_id})
            pipe.xack(self.stream, GROUP, entry_id)
            pipe.xdel(self.stream, entry_id)
            await pipe.execute()
        call_logger(call_sid, "callstream.archive").error(
            "archive job %s given up (%s): kept in the dead-letter stream %s", _text(entry_id), reason, self.dead
        )


def requeue_dead(url: str, prefix: str = DEFAULT_PREFIX) -> int:
    """Move every dead-lettered job back into the jobs stream (blocking)."""
    client = redis.Redis.from_url(url)
    stream, dead = stream_names(prefix)
    count = 0
    try:
        entries: Any = client.xrange(dead)
        for entry_id, fields in entries:
            with client.pipeline(transaction=True) as pipe:
                pipe.xadd(stream, {"job": fields[b"job"], "call_sid": fields.get(b"call_sid", b"-")})
                pipe.xdel(dead, entry_id)
                pipe.execute()
            count += 1
    finally:
        client.close()
    return count


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
