"""A live-feed subscriber that stops reading never slows the media path.

A real `GET /ops/events` client connects with a tiny receive buffer and then
never reads. Filler events (other calls' transcripts) fill its TCP buffers and
then its bounded queue; a call then runs in lockstep through the same server:
it ends exactly as it does with no such subscriber, its events are dropped
for that subscriber (and counted in callstream_feed_dropped_total), and the
server keeps answering /healthz and /metrics.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from urllib.parse import urlsplit

import aiohttp
from server import RunningServer, running_server

from agent.events import TranscriptFinalEvent, TransitionEvent
from agent.fake_twilio import outcome_of

FILLER_SID = "CA" + "f" * 32
MAX_FILLER = 20_000  # ~40 MB of events: far past any socket buffer here


async def one_call(server: RunningServer) -> tuple[list[str], list[str], float]:
    """menu → support by key 2; the path, the call updates (the room is named
    after the call), and the wall time."""
    started = time.perf_counter()
    async with server.call() as call:
        await call.silence(6000)
        await call.dtmf("2")
        await call.silence(2000)
        await call.stop()
    for _ in range(100):
        if server.feed_types(call.call_sid)[-1:] == ["call.ended"]:
            break
        await asyncio.sleep(0.02)
    path = [e.to for e in server.of_type(call.call_sid, TransitionEvent)]
    updates = [outcome_of(u) for u in server.rest.calls[call.call_sid].updates]
    return path, updates, time.perf_counter() - started


def stalled_subscriber(base: str) -> socket.socket:
    """Subscribe to the whole feed, and never read a byte of it."""
    parts = urlsplit(base)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    sock.connect((parts.hostname, parts.port))
    sock.sendall(f"GET /ops/events?token=ops-secret HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode())
    return sock


async def metric(http: aiohttp.ClientSession, base: str, name: str) -> float:
    async with http.get(f"{base}/metrics") as resp:
        text = await resp.text()
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert found, name
    return float(found.group(1))


async def test_a_subscriber_that_stops_reading_never_slows_a_call():
    async with running_server() as server, aiohttp.ClientSession() as http:
        baseline = await one_call(server)
        sock = stalled_subscriber(server.base)
        try:
            feed = server.services.feed
            published = stalled_batches = 0
            while stalled_batches < 3 and published < MAX_FILLER:
                before = feed.dropped
                for _ in range(50):
                    feed.publish(TranscriptFinalEvent(call_sid=FILLER_SID, t=0, text="filler " * 300))
                published += 50
                # stalled: a whole batch dropped though the writer had time to drain
                stalled_batches = stalled_batches + 1 if feed.dropped - before == 50 else 0
                await asyncio.sleep(0.05 if feed.dropped else 0.002)
            assert stalled_batches == 3, "the stalled subscriber never filled up"
            dropped_before = await metric(http, server.base, "callstream_feed_dropped_total")
            feed_dropped = feed.dropped

            path, updates, wall_s = await one_call(server)

            assert path == baseline[0] == ["menu", "support"]
            assert [u.split(":")[0] for u in updates] == [u.split(":")[0] for u in baseline[1]] == ["conference"]
            assert feed.dropped > feed_dropped  # the call's own events were dropped for it
            assert await metric(http, server.base, "callstream_feed_dropped_total") > dropped_before
            async with http.get(f"{server.base}/healthz") as resp:
                assert resp.status == 200
            print(f"call with no subscriber {baseline[2]:.2f} s, with a stalled one {wall_s:.2f} s "
                  f"({published} filler events, {feed.dropped} dropped)")
        finally:
            sock.close()
