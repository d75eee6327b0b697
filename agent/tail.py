"""`callstream tail [--call SID] [--url URL]`: follow the live feed in a terminal.

It reads `GET /ops/events` of a running server with the ops token from
CALLSTREAM_OPS_TOKEN (environment or `.env`; never a command-line argument,
which `ps` would show) and prints one line per event, transcripts first:

    12:03:04  CA5f…9a1c  CALLER  billing
    12:03:05  CA5f…9a1c  AGENT   Please enter your six digit account number.

Outcomes: a refused token exits 2, an unreachable server at start exits 1, a
feed that drops after it was up is followed again with backoff (like
`tail -F`), Ctrl-C exits 130.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import IO, Any

import aiohttp
import orjson
from dotenv import dotenv_values

BOLD, DIM, RESET = "\033[1m", "\033[2m", "\033[0m"


def ops_token_from_env(env_file: str = ".env") -> str | None:
    token = os.environ.get("CALLSTREAM_OPS_TOKEN")
    if not token and Path(env_file).is_file():
        token = dotenv_values(env_file).get("CALLSTREAM_OPS_TOKEN")
    return token or None


def short_sid(call_sid: str) -> str:
    return call_sid if len(call_sid) <= 12 else f"{call_sid[:4]}…{call_sid[-4:]}"


def format_event(event: dict[str, Any], *, color: bool = False) -> str | None:
    """One line for one feed event (None: nothing worth a line)."""
    kind = event.get("type", "?")
    sid = str(event.get("call_sid", "-"))
    t = event.get("t")
    stamp = time.strftime("%H:%M:%S", time.localtime(t / 1000)) if isinstance(t, int | float) else "--:--:--"
    bold, dim, reset = (BOLD, DIM, RESET) if color else ("", "", "")
    head = f"{stamp}  {short_sid(sid)}  "
    match kind:
        case "transcript.final":
            who = str(event.get("speaker", "?")).upper()
            text = event.get("text") or "(nothing understood)"
            cut = f"  [cut after {event.get('heard_ms')} ms]" if event.get("interrupted") else ""
            return f"{head}{bold}{who:<7} {text}{reset}{cut}"
        case "transcript.partial":
            return f"{head}{dim}caller  {event.get('text', '')}…{reset}"
        case "call.started":
            return (
                f"{head}── call {sid} started: {event.get('from') or '?'} → {event.get('to') or '?'}"
                f" (flow {event.get('flow') or '?'})"
            )
        case "call.ended":
            path = " → ".join(event.get("path") or ())
            seconds = (event.get("duration_ms") or 0) / 1000
            return f"{head}── call {sid} ended ({event.get('reason')}) after {seconds:.1f} s: {path}"
        case "dialog.transition":
            intent = f" ({event['intent']})" if event.get("intent") else ""
            return f"{head}{dim}state   {event.get('from') or '·'} → {event.get('to')}{intent}{reset}"
        case "bargein":
            return f"{head}barge-in after {event.get('latency_ms')} ms (caller heard {event.get('heard_ms')} ms)"
        case "action":
            action = event.get("action")
            if action == "say":
                return None  # the agent's words appear as its transcript line
            detail = " ".join(f"{k}={v}" for k, v in (event.get("detail") or {}).items())
            return f"{head}{dim}action  {action} {detail}{reset}".rstrip()
        case "latency":
            return f"{head}{dim}latency {event.get('name')} {event.get('ms')} ms{reset}"
        case "archive.stored":
            return f"{head}archived at {event.get('location')}"
        case _:
            return f"{head}{kind} {orjson.dumps(event).decode()}"


class TailRefused(Exception):
    pass


async def _follow(
    http: aiohttp.ClientSession,
    url: str,
    token: str,
    call_sid: str | None,
    out: IO[str],
    err: IO[str],
    color: bool,
    up: list[bool],
) -> None:
    params = {"call_sid": call_sid} if call_sid else {}
    async with http.get(f"{url}/ops/events", params=params, headers={"X-Ops-Token": token}) as resp:
        if resp.status == 401:
            raise TailRefused("the server refused the ops token (HTTP 401): set CALLSTREAM_OPS_TOKEN to the server's")
        if resp.status != 200:
            raise TailRefused(f"{url}/ops/events answered HTTP {resp.status}")
        up.append(True)
        print(f"callstream tail: following {url}/ops/events" + (f" for {call_sid}" if call_sid else ""),
              file=err, flush=True)
        async for raw in resp.content:
            if not raw.startswith(b"data: "):
                continue
            try:
                event = orjson.loads(raw[6:])
            except orjson.JSONDecodeError:
                continue
            line = format_event(event, color=color)
            if line is not None:
                print(line, file=out, flush=True)


async def tail(
    url: str,
    token: str,
    call_sid: str | None = None,
    *,
    out: IO[str] = sys.stdout,
    err: IO[str] = sys.stderr,
    color: bool = False,
    backoff_s: tuple[float, float] = (0.5, 10.0),
) -> int:
    """Follow the feed until interrupted; the exit code for the CLI."""
    url = url.rstrip("/")
    timeout = aiohttp.ClientTimeout(total=None, connect=5, sock_connect=5, sock_read=45)  # 3 missed heartbeats
    backoff = backoff_s[0]
    connected = False
    async with aiohttp.ClientSession(timeout=timeout) as http:
        while True:
            up: list[bool] = []
            try:
                await _follow(http, url, token, call_sid, out, err, color, up)
                reason = "the server ended the feed"
            except TailRefused as exc:
                print(f"callstream tail: {exc}", file=err)
                return 2
            except (aiohttp.ClientError, OSError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            if up:
                backoff = backoff_s[0]  # it was up: start the backoff over
                connected = True
            if not up and not connected:
                print(f"callstream tail: cannot reach {url} ({reason})", file=err)
                return 1
            print(f"callstream tail: feed lost ({reason}); reconnecting in {backoff:.1f} s", file=err, flush=True)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, backoff_s[1])
