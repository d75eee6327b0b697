"""The shared call store on Redis (REDIS_URL): a resumed stream may land on any instance.

Implements the `CallStore` port (agent/ports.py). Keys, under a configurable
prefix (CALLSTREAM_REDIS_PREFIX, default `callstream:`), all expire:

- `{prefix}call:{CallSid}` — the dialog snapshot as JSON, `SET … EX ttl`;
- `{prefix}claim:{key}` — webhook idempotency, `SET … NX EX ttl`: the first
  claim within the TTL wins, on whichever instance it arrives.

A command that fails because Redis went away is tried once more after a short
pause, then raises `StoreUnavailable` (retryable): the session logs it with the
call SID and goes on (a resume after that would start the flow over).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
import redis.asyncio as aioredis

from agent.redis_conn import REDIS_DOWN

RETRY_PAUSE_S = 0.1


class StoreUnavailable(Exception):
    """Redis did not answer; the call may go on without the shared state."""

    retryable = True


class RedisStore:
    def __init__(self, client: aioredis.Redis, prefix: str = "callstream:") -> None:
        self._redis = client
        self.prefix = prefix

    def _call_key(self, call_sid: str) -> str:
        return f"{self.prefix}call:{call_sid}"

    async def load(self, call_sid: str) -> dict[str, object] | None:
        raw = await self._twice(self._redis.get, self._call_key(call_sid))
        if raw is None:
            return None
        state = orjson.loads(raw)
        return state if isinstance(state, dict) else None

    async def save(self, call_sid: str, state: dict[str, object], ttl_s: int) -> None:
        await self._twice(self._redis.set, self._call_key(call_sid), orjson.dumps(state), ex=ttl_s)

    async def claim_once(self, key: str, ttl_s: int) -> bool:
        # SET NX: one atomic command, so two instances cannot both win
        won = await self._twice(self._redis.set, f"{self.prefix}claim:{key}", b"1", nx=True, ex=ttl_s)
        return bool(won)

    async def _twice(self, command: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return await command(*args, **kwargs)
        except REDIS_DOWN:
            await asyncio.sleep(RETRY_PAUSE_S)
        try:
            return await command(*args, **kwargs)
        except REDIS_DOWN as exc:
            raise StoreUnavailable(f"Redis unavailable: {exc}") from exc

    async def aclose(self) -> None:
        await self._redis.aclose()
