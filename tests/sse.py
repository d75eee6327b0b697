"""Reading the live feed as a client does: `GET /ops/events` over a real socket."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson


class FeedReader:
    """Collects every SSE event of one `/ops/events` connection."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.raw = bytearray()
        self._changed = asyncio.Condition()

    async def _read(self, resp: aiohttp.ClientResponse) -> None:
        async for line in resp.content:
            self.raw += line
            if line.startswith(b"data: "):
                async with self._changed:
                    self.events.append(orjson.loads(line[6:]))
                    self._changed.notify_all()

    async def wait_for(self, done: Callable[[list[dict[str, Any]]], bool], timeout_s: float = 10.0) -> None:
        async def until() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: done(self.events))

        await asyncio.wait_for(until(), timeout_s)

    def of(self, call_sid: str, kind: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.events if e["call_sid"] == call_sid and (kind is None or e["type"] == kind)]


@contextlib.asynccontextmanager
async def reading_feed(base: str, token: str = "ops-secret", call_sid: str | None = None) -> AsyncIterator[FeedReader]:
    """Connected (the server's `: connected` comment read) before the block runs."""
    reader = FeedReader()
    params = {"call_sid": call_sid} if call_sid else {}
    async with aiohttp.ClientSession() as http, http.get(
        f"{base}/ops/events", params=params, headers={"X-Ops-Token": token}
    ) as resp:
        assert resp.status == 200, resp.status
        assert (await resp.content.readline()).startswith(b": connected")
        task = asyncio.create_task(reader._read(resp))
        try:
            yield reader
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                await task
