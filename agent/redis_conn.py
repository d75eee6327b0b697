"""Connecting to Redis (REDIS_URL): bounded timeouts, a clear refusal at start-up.

Every client the shared store and feed use comes from here, so they all have a
bounded connect and read timeout: an unreachable Redis is an error within
about a second, never a hang. `check_reachable` runs before the server binds
(`callstream serve`) and turns "cannot connect" into a ConfigError that names
REDIS_URL, with the password masked.
"""

from __future__ import annotations

import contextlib
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from agent.settings import ConfigError

CONNECT_TIMEOUT_S = 1.0
COMMAND_TIMEOUT_S = 2.0

# what "Redis went away" looks like from redis-py (OSError covers refused sockets)
REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError, OSError)


def masked_url(url: str) -> str:
    """REDIS_URL for a log or an error message: no password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


def client(url: str) -> aioredis.Redis:
    """An asyncio client with bounded timeouts and no hidden retries: callers
    decide what a failure means (the store retries once, the feed drops)."""
    return aioredis.Redis.from_url(
        url,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_timeout=COMMAND_TIMEOUT_S,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=15,
    )


def _refusal(url: str, exc: BaseException) -> ConfigError:
    return ConfigError(
        f"REDIS_URL={masked_url(url)}: cannot reach Redis ({exc}). Start Redis there, "
        "fix REDIS_URL, or unset it to use the embedded in-process store and feed."
    )


def check_reachable(url: str) -> None:
    """Before binding: PING with the same bounded timeouts, or a ConfigError."""
    try:
        sync = redis.Redis.from_url(
            url, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=COMMAND_TIMEOUT_S
        )
    except ValueError as exc:  # a URL redis-py cannot parse
        raise ConfigError(f"REDIS_URL={masked_url(url)}: {exc}") from None
    try:
        sync.ping()
    except (redis.RedisError, OSError) as exc:
        raise _refusal(url, exc) from None
    finally:
        with contextlib.suppress(Exception):
            sync.close()


async def connect(url: str) -> aioredis.Redis:
    """A client that answered PING, or a ConfigError naming REDIS_URL."""
    try:
        conn = client(url)
    except ValueError as exc:
        raise ConfigError(f"REDIS_URL={masked_url(url)}: {exc}") from None
    try:
        await conn.ping()
    except (redis.RedisError, OSError) as exc:
        await conn.aclose()
        raise _refusal(url, exc) from None
    return conn
