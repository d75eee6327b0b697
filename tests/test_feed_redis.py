"""The live feed across instances over a real redis-server, including Redis going away."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

import pytest
import redis.asyncio as aioredis

from agent.events import CallEndedEvent, TranscriptFinalEvent, TransitionEvent
from agent.feed_redis import RedisFeed
from agent.metrics import FEED_DROPPED

pytestmark = pytest.mark.redis


async def next_event(sub, timeout_s: float = 5.0):
    return await asyncio.wait_for(sub.queue.get(), timeout_s)


async def started(url: str, prefix: str, **kw) -> RedisFeed:
    feed = RedisFeed(url, prefix, backoff_s=(0.02, 0.2), **kw)
    await feed.start()
    assert await feed.wait_subscribed(5)
    return feed


async def test_each_instance_sees_every_call_once(redis_server, redis_prefix):
    a = await started(redis_server, redis_prefix)
    b = await started(redis_server, redis_prefix)
    try:
        on_a, on_b, only_ca2_on_a = a.subscribe(), b.subscribe(), a.subscribe("CA2")
        first = TransitionEvent(call_sid="CA1", t=1, from_=None, to="menu")
        a.publish(first)
        b.publish(TranscriptFinalEvent(call_sid="CA2", t=2, speaker="caller", text="billing", confidence=0.9))
        a.publish(CallEndedEvent(call_sid="CA1", t=3, reason="stop", path=("menu",)))
        got_a = [await next_event(on_a) for _ in range(3)]
        got_b = [await next_event(on_b) for _ in range(3)]
        assert {e.call_sid for e in got_a} == {e.call_sid for e in got_b} == {"CA1", "CA2"}
        assert got_a[0] == first  # local events arrive at once, as published
        assert next(e for e in got_b if e.type == "call.ended").path == ("menu",)  # typed again
        only = await next_event(only_ca2_on_a)
        assert only.text == "billing"
        # B publishes after it has seen all of A's messages, so on the channel B's
        # sentinel follows them: once A has it, any echo of A's own events would be queued
        b.publish(CallEndedEvent(call_sid="CA-sentinel", t=4, reason="stop"))
        assert (await next_event(on_a)).call_sid == "CA-sentinel"
        assert (await next_event(on_b)).call_sid == "CA-sentinel"
        assert on_a.queue.empty() and on_b.queue.empty() and only_ca2_on_a.queue.empty()
        assert a.received == 2 and b.received == 2
    finally:
        await a.aclose()
        await b.aclose()


async def test_malformed_messages_on_the_channel_are_ignored(redis_server, redis_prefix, caplog):
    feed = await started(redis_server, redis_prefix)
    raw = aioredis.Redis.from_url(redis_server)
    try:
        sub = feed.subscribe()
        for junk in (b"no-space", b"other {not json", b'other {"type":"nope","call_sid":"CA1","t":1}'):
            await raw.publish(f"{redis_prefix}feed", junk)
        await raw.publish(f"{redis_prefix}feed", b'other {"type":"call.ended","call_sid":"CA9","t":1}')
        event = await next_event(sub)
        assert event.call_sid == "CA9" and feed.malformed == 3
        assert "malformed message" in caplog.text
    finally:
        await raw.aclose()
        await feed.aclose()


async def test_redis_going_away_drops_counts_logs_once_and_reconnects(own_redis, caplog):
    caplog.set_level(logging.INFO, logger="callstream.feed")
    a = await started(own_redis.url, "t:")
    b = await started(own_redis.url, "t:")
    dropped_before = FEED_DROPPED._value.get()
    try:
        local, remote = a.subscribe(), b.subscribe()
        own_redis.stop()
        for i in range(50):  # the media path keeps publishing: never blocks, never raises
            a.publish(TransitionEvent(call_sid="CA1", t=i, from_=None, to="menu"))
            await asyncio.sleep(0)
        for _ in range(500):  # the publisher notices (bounded wait)
            if not a.connected:
                break
            await asyncio.sleep(0.01)
        assert not a.connected
        a.publish(TransitionEvent(call_sid="CA1", t=99, from_=None, to="billing"))
        assert local.queue.qsize() == 51  # this instance still sees its own calls
        assert a.dropped >= 1 and FEED_DROPPED._value.get() - dropped_before >= a.dropped
        unreachable = [r for r in caplog.records if "unreachable" in r.getMessage() and r.levelno == logging.WARNING]
        assert len(unreachable) == 1  # logged once per outage, not per event

        own_redis.start()  # same port
        assert await b.wait_subscribed(10)
        for i in range(500):  # probe until both tasks are back (bounded)
            a.publish(CallEndedEvent(call_sid="CA-probe", t=i, reason="stop"))
            try:
                event = await asyncio.wait_for(remote.queue.get(), 0.05)
            except TimeoutError:
                continue
            if event.call_sid == "CA-probe":
                break
        else:
            pytest.fail("the feed did not come back after Redis restarted")
        assert a.connected
        assert "Redis is back" in caplog.text and "listening to t:feed again" in caplog.text
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_full_buffer_drops_instead_of_growing(redis_server, redis_prefix):
    feed = RedisFeed(redis_server, redis_prefix, max_buffer=5)
    await feed.start()
    try:
        for i in range(20):  # synchronously: the publisher task has no chance to run
            feed.publish(CallEndedEvent(call_sid="CA1", t=i, reason="stop"))
        assert feed.dropped == 15
    finally:
        await feed.aclose()


async def test_closing_ends_the_tasks_even_when_redis_py_swallows_a_cancel(redis_server, redis_prefix, caplog):
    # a cancel landing while redis-py's pubsub is subscribing is sometimes
    # swallowed (its task runs on): closing mid-subscribe must still finish
    rng = random.Random(7)
    for _ in range(30):
        feed = RedisFeed(redis_server, redis_prefix)
        starting = asyncio.create_task(feed.start())
        while not feed._tasks:  # connected: the listener is about to subscribe
            await asyncio.sleep(0)
        for _ in range(rng.randrange(12)):  # a few loop turns into subscribing
            await asyncio.sleep(0)
        await asyncio.wait_for(feed.aclose(), 10)
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
    assert "did not stop" not in caplog.text
