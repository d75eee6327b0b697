"""`callstream tail` against a real server: a subprocess following the live feed."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import secrets
import signal
import sys
from pathlib import Path

from server import running_server
from starlette.applications import Starlette
from starlette.responses import StreamingResponse
from starlette.routing import Route

from agent.serving import base_url_of, bound_socket, serve_in_background
from agent.tail import format_event, tail

ROOT = Path(__file__).resolve().parent.parent


async def start_tail(*args: str, token: str | None = "ops-secret") -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if k != "CALLSTREAM_OPS_TOKEN"}
    if token is not None:
        env["CALLSTREAM_OPS_TOKEN"] = token
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent.cli", "tail", *args,
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )


async def read_until(stream: asyncio.StreamReader, needle: str, timeout_s: float = 20.0) -> list[str]:
    lines: list[str] = []

    async def read() -> None:
        while True:
            line = (await stream.readline()).decode()
            if not line:
                raise AssertionError(f"stream ended before {needle!r}: {lines}")
            lines.append(line.rstrip("\n"))
            if needle in line:
                return

    await asyncio.wait_for(read(), timeout_s)
    return lines


async def test_tail_follows_one_call_with_transcripts_on_their_own_lines():
    sid = "CA" + secrets.token_hex(16)
    async with running_server() as server:
        proc = await start_tail("--url", server.base, "--call", sid)
        try:
            assert proc.stdout is not None and proc.stderr is not None
            await read_until(proc.stderr, "following")
            async with server.call({"From": "+15551230000"}) as other:  # another call: filtered out
                await other.silence(100)
                await other.stop()
            async with server.call({"From": "+15551230000"}, call_sid=sid) as call:
                await call.silence(6200)
                await call.dtmf("1")
                await call.silence(3000)
                for digit in "481516":
                    await call.dtmf(digit)
                await call.silence(3000)
                await call.stop()
            lines = await read_until(proc.stdout, "ended")
            proc.send_signal(signal.SIGINT)
            assert await asyncio.wait_for(proc.wait(), 20) == 130
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    text = "\n".join(lines)
    assert sid in lines[0] and "started" in lines[0] and "+1555***0000" in lines[0]
    assert other.call_sid[-4:] not in text
    assert any("AGENT   Thanks for calling Acme" in line for line in lines)
    assert any("AGENT   Please enter your six digit account number." in line for line in lines)
    assert "state   menu → billing (billing)" in text and "481516" not in text
    assert "action  slot name=account value=***" in text and "menu → billing → billing_done" in lines[-1]


async def test_tail_exit_codes():
    async with running_server() as server:
        proc = await start_tail("--url", server.base, token="wrong")
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 2 and b"HTTP 401" in err
    proc = await start_tail("--url", server.base)  # the server is gone
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1 and b"cannot reach" in err
    proc = await start_tail(token=None)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2 and b"CALLSTREAM_OPS_TOKEN" in err


async def test_tail_follows_again_when_the_feed_ends():
    served = 0

    async def events(request):
        nonlocal served
        served += 1

        async def body():
            yield b": connected\n\n"
            yield b'event: call.ended\ndata: {"type":"call.ended","call_sid":"CA1","t":1,"reason":"stop","path":[],"duration_ms":0}\n\n'

        return StreamingResponse(body(), media_type="text/event-stream")

    sock = bound_socket()
    out, err = io.StringIO(), io.StringIO()
    async with serve_in_background(Starlette(routes=[Route("/ops/events", events)]), sock):
        task = asyncio.create_task(tail(base_url_of(sock), "t", out=out, err=err, backoff_s=(0.01, 0.05)))
        try:
            for _ in range(1000):  # bounded: until it has followed the feed three times
                if out.getvalue().count("ended") >= 3:
                    break
                await asyncio.sleep(0.01)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert out.getvalue().count("ended") >= 3 and served >= 3
    assert "feed lost (the server ended the feed); reconnecting" in err.getvalue()


def test_event_lines():
    final = {"type": "transcript.final", "call_sid": "CA0123456789abcdef", "t": 0, "speaker": "agent",
             "text": "Hello.", "interrupted": True, "heard_ms": 420}
    assert format_event(final).endswith("CA01…cdef  AGENT   Hello.  [cut after 420 ms]")
    assert "\033[1m" in format_event(final, color=True)
    assert format_event({"type": "action", "call_sid": "CA1", "t": 0, "action": "say"}) is None
    assert "bargein" not in format_event({"type": "bargein", "call_sid": "CA1", "t": 0, "latency_ms": 80, "heard_ms": 5})
    assert "future.thing" in format_event({"type": "future.thing", "call_sid": "CA1", "t": 0})
