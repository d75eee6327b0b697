"""The embedded call store: per-call state and idempotency keys in memory.

It implements the `CallStore` port (agent/ports.py); a Redis store replaces it
when REDIS_URL is set, so a resumed stream may land on another instance.
Time comes from an injectable clock so expiry is testable without sleeping.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable


class MemoryStore:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._states: dict[str, tuple[float, dict[str, object]]] = {}
        self._claims: dict[str, float] = {}

    async def load(self, call_sid: str) -> dict[str, object] | None:
        entry = self._states.get(call_sid)
        if entry is None:
            return None
        expires, state = entry
        if expires <= self._clock():
            del self._states[call_sid]
            return None
        return copy.deepcopy(state)

    async def save(self, call_sid: str, state: dict[str, object], ttl_s: int) -> None:
        self._expire()
        self._states[call_sid] = (self._clock() + ttl_s, copy.deepcopy(state))

    async def claim_once(self, key: str, ttl_s: int) -> bool:
        now = self._clock()
        expires = self._claims.get(key)
        if expires is not None and expires > now:
            return False
        self._claims[key] = now + ttl_s
        return True

    def _expire(self) -> None:
        now = self._clock()
        for sid in [s for s, (exp, _) in self._states.items() if exp <= now]:
            del self._states[sid]
        for key in [k for k, exp in self._claims.items() if exp <= now]:
            del self._claims[key]
