"""The shared call store on a real redis-server."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from agent.redis_conn import check_reachable, client, connect, masked_url
from agent.settings import ConfigError
from agent.store_redis import RedisStore, StoreUnavailable

pytestmark = pytest.mark.redis


async def test_state_round_trips_with_a_ttl_under_the_prefix(redis_server, redis_prefix):
    store = RedisStore(await connect(redis_server), redis_prefix)
    try:
        snapshot = {"version": 1, "state": "billing", "path": ["menu", "billing"], "slots": {"account": "481516"}}
        await store.save("CA1", snapshot, ttl_s=60)
        assert await store.load("CA1") == snapshot
        assert await store.load("CA-unknown") is None
        raw = aioredis.Redis.from_url(redis_server)
        ttl = await raw.ttl(f"{redis_prefix}call:CA1")
        await raw.aclose()
        assert 0 < ttl <= 60
    finally:
        await store.aclose()


async def test_claim_once_wins_once_across_instances(redis_server, redis_prefix):
    a = RedisStore(await connect(redis_server), redis_prefix)
    b = RedisStore(await connect(redis_server), redis_prefix)
    try:
        results = await asyncio.gather(*(s.claim_once("status:CA1:completed", 30) for s in (a, b, a, b)))
        assert sorted(results) == [False, False, False, True]
        assert await a.claim_once("status:CA1:in-progress", 30)
        other = RedisStore(await connect(redis_server), redis_prefix + "other:")
        assert await other.claim_once("status:CA1:completed", 30)  # another prefix, another key space
        await other.aclose()
    finally:
        await a.aclose()
        await b.aclose()


async def test_redis_going_away_raises_store_unavailable_then_recovers(own_redis):
    store = RedisStore(await connect(own_redis.url), "t:")
    try:
        await store.save("CA1", {"state": "menu"}, ttl_s=60)
        own_redis.stop()
        with pytest.raises(StoreUnavailable) as info:
            await asyncio.wait_for(store.save("CA1", {"state": "billing"}, ttl_s=60), 10)
        assert info.value.retryable
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(store.load("CA1"), 10)
        own_redis.start()  # same port, empty (nothing saved to disk)
        await store.save("CA1", {"state": "billing"}, ttl_s=60)
        assert await store.load("CA1") == {"state": "billing"}
    finally:
        await store.aclose()


async def test_unreachable_redis_is_a_config_error_naming_redis_url():
    url = "redis://:hunter2@127.0.0.1:1/0"  # nothing listens on port 1
    with pytest.raises(ConfigError) as info:
        await asyncio.wait_for(connect(url), 10)
    message = str(info.value)
    assert message.startswith("REDIS_URL=redis://:***@127.0.0.1:1/0") and "hunter2" not in message
    with pytest.raises(ConfigError, match="REDIS_URL"):
        check_reachable(url)
    with pytest.raises(ConfigError, match="REDIS_URL"):
        check_reachable("http://not-redis")


def test_masked_url_hides_only_the_password():
    assert masked_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert masked_url("rediss://user:pw@host:6380/1") == "rediss://user:***@host:6380/1"
    client("redis://127.0.0.1:6379/0")  # builds without connecting
