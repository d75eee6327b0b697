"""`callstream replay`: fixture calls through the real server, as Twilio plays them.

Without `--url` the server is started in-process on a free loopback port with
the embedded defaults, a throwaway auth token (so every webhook and upgrade is
signed and checked, as in production), a throwaway ops token for the live
feed, and TWILIO_API_BASE pointed at the local fake REST API. With `--fakes`,
the cloud speech providers the settings choose (CALLSTREAM_STT=deepgram,
CALLSTREAM_TTS=polly) are served by local fakes that speak their protocols
(agent/fake_deepgram.py, agent/fake_polly.py), with throwaway credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from agent.app import create_app
from agent.fake_twilio import FakeCall, FakeTwilioRest
from agent.fixtures import CallResult, Fixture, percentile
from agent.replay_call import ReplayTarget, SimulatedCall
from agent.serving import base_url_of, bound_socket, serve_in_background
from agent.settings import Settings
from agent.tts_cache import CachedTextToSpeech
from agent.tts_espeak import EspeakTextToSpeech


def fake_account_sid() -> str:
    return "AC" + secrets.token_hex(16)


@contextlib.asynccontextmanager
async def speech_fakes(settings: Settings) -> AsyncIterator[Settings]:
    """Serve the chosen cloud speech providers locally; the settings point at them."""
    async with contextlib.AsyncExitStack() as stack:
        if settings.stt == "deepgram":
            from agent.fake_deepgram import FakeDeepgram

            key = settings.deepgram_api_key or secrets.token_hex(16)
            deepgram = await stack.enter_async_context(FakeDeepgram(key).running())
            settings = settings.with_overrides(deepgram_api_key=key, deepgram_url=deepgram.base_url)
        if settings.tts == "polly":
            from agent.fake_polly import FAKE_ACCESS_KEY, FAKE_SECRET_KEY, FakePolly

            polly = FakePolly()
            sock = bound_socket()
            await stack.enter_async_context(serve_in_background(polly.app, sock))
            settings = settings.with_overrides(
                aws_region=settings.aws_region or "us-east-1",
                polly_endpoint_url=base_url_of(sock),
                aws_access_key_id=FAKE_ACCESS_KEY,
                aws_secret_access_key=FAKE_SECRET_KEY,
                aws_session_token=None,
            )
        yield settings


@contextlib.asynccontextmanager
async def local_server(
    settings: Settings, rest_base: str, account_sid: str, auth_token: str, archive: str | None = None
) -> AsyncIterator[tuple[ReplayTarget, Settings]]:
    sock = bound_socket()
    base = base_url_of(sock)
    server_settings = settings.with_overrides(
        public_base_url=base,
        twilio_account_sid=account_sid,
        twilio_auth_token=auth_token,
        twilio_api_base=rest_base,
        ops_token=secrets.token_hex(16),
        archive=archive or "off",  # archive only when asked (`--archive`, or `--out`)
        archive_spool=None,
        redis_url=None,
    )
    app = create_app(server_settings, base)
    async with serve_in_background(app, sock):
        yield (
            ReplayTarget(
                http_base=base,
                public_base_url=base,
                stream_url_override=None,
                account_sid=account_sid,
                auth_token=server_settings.twilio_auth_token,
                ops_token=server_settings.ops_token,
            ),
            server_settings,
        )


def paced_budget(settings: Settings, speed: float | None) -> Settings:
    """The in-process server's message budget for `--speed N` (not lockstep):
    Twilio sends 50 media messages and at most about as many mark echoes per
    second of call, so N times faster is up to 100 * N messages a second.
    Only ever raised; 0 (no limit) stays 0. A server given with --url keeps
    its own CALLSTREAM_MAX_MESSAGES_PER_S (docs/faults.md)."""
    if speed is None or settings.max_messages_per_s == 0:
        return settings
    return settings.with_overrides(max_messages_per_s=max(settings.max_messages_per_s, math.ceil(100 * speed)))


def target_for_url(url: str, settings: Settings, account_sid: str) -> ReplayTarget:
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise ValueError(f"--url {url!r}: give the Media Streams URL, ws://host:port/twilio/media")
    http_base = f"{'https' if parts.scheme == 'wss' else 'http'}://{parts.netloc}"
    return ReplayTarget(
        http_base=http_base,
        public_base_url=(settings.public_base_url or http_base).rstrip("/"),
        stream_url_override=url,
        account_sid=settings.twilio_account_sid or account_sid,
        auth_token=settings.twilio_auth_token,
        ops_token=settings.ops_token,
    )


async def replay(
    fixtures: Sequence[Fixture],
    settings: Settings,
    *,
    url: str | None = None,
    speed: float | None = None,
    out_dir: Path | None = None,
    parallel: int = 2,
    rest_port: int = 0,
    fakes: bool = False,
    log: IO[str] = sys.stderr,
    archive: str | None = None,
) -> list[CallResult]:
    account_sid = settings.twilio_account_sid or fake_account_sid()
    # one throwaway token: the in-process server signs and checks with it, and
    # its REST client authenticates with it against the fake API
    rest_token = secrets.token_hex(16) if url is None else (settings.twilio_auth_token or secrets.token_hex(16))
    rest = FakeTwilioRest(account_sid, rest_token)
    rest_sock = bound_socket(port=rest_port)
    rest_base = base_url_of(rest_sock)
    calls: dict[str, SimulatedCall] = {}

    def on_update(call: FakeCall, update: dict[str, str]) -> None:
        sim = calls.get(call.sid)
        if sim is not None:
            sim.on_rest_update(call, update)

    rest.on_update = on_update
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(serve_in_background(rest.app, rest_sock))
        if url is None:
            if fakes:
                settings = await stack.enter_async_context(speech_fakes(settings))
            target, _ = await stack.enter_async_context(
                local_server(paced_budget(settings, speed), rest_base, account_sid, rest_token, archive)
            )
        else:
            target = target_for_url(url, settings, account_sid)
            rest.account_sid = target.account_sid
            rest.auth_token = settings.twilio_auth_token or rest_token
            print(f"fake Twilio REST API at {rest_base}: start the server with TWILIO_API_BASE={rest_base}", file=log)
        http = await stack.enter_async_context(aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)))
        gate = asyncio.Semaphore(max(1, parallel))
        tts = CachedTextToSpeech(EspeakTextToSpeech())  # Twilio's <Say>, when the agent uses it
        stack.push_async_callback(tts.aclose)

        async def one(fixture: Fixture) -> CallResult:
            async with gate:
                sim = SimulatedCall(fixture, target, rest, http, speed=speed, out_dir=out_dir, tts=tts)
                calls[sim.call_sid] = sim
                return await sim.run()

        return list(await asyncio.gather(*(one(f) for f in fixtures)))


# --- the report ------------------------------------------------------------------------


def summary(results: Sequence[CallResult]) -> dict[str, Any]:
    bargein = [b for r in results for b in r.bargein_ms]
    response = [x for r in results for x in r.response_ms]
    wers = [r.wer for r in results if r.wer is not None]
    return {
        "calls": len(results),
        "passed": sum(r.passed for r in results),
        "failed": sum(not r.passed for r in results),
        "bargein_ms": _stats(bargein),
        "response_ms": _stats(response),
        "mean_wer": round(sum(wers) / len(wers), 3) if wers else None,
    }


def _stats(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "max": max(values),
    }


def report_json(results: Sequence[CallResult]) -> str:
    body = {"calls": [asdict(r) | {"passed": r.passed} for r in results], "summary": summary(results)}
    return orjson.dumps(body, option=orjson.OPT_INDENT_2).decode()


def report_text(results: Sequence[CallResult], speed: float | None) -> str:
    lines = [f"callstream replay: {len(results)} call(s), speed {'max (lockstep)' if speed is None else speed}", ""]
    for r in results:
        verdict = "PASS" if r.passed else "FAIL"
        lines.append(
            f"{verdict} {r.fixture}: {r.outcome or r.end_reason or '-'}  "
            f"path {' → '.join(r.path) or '-'}  ({r.duration_ms / 1000:.1f} s of call in {r.wall_s:.1f} s)"
        )
        caller = " | ".join(r.caller_transcript) or "(nothing recognised)"
        wer = f"  WER {r.wer:.2f}" if r.wer is not None else ""
        lines.append(f"     caller: {caller}{wer}")
        for turn in r.agent_turns:
            cut = f"  [interrupted, heard {turn['heard_ms']} ms]" if turn["interrupted"] else ""
            lines.append(f"     agent:  {turn['text']}{cut}")
        if r.bargein_ms:
            lines.append(f"     barge-in: {', '.join(f'{b} ms' for b in r.bargein_ms)}")
        if r.response_ms:
            lines.append(f"     response (caller stops → agent audio): {', '.join(f'{x} ms' for x in r.response_ms)}")
        if r.error:
            lines.append(f"     ✗ error: {r.error}")
        for failure in r.failures:
            lines.append(f"     ✗ {failure}")
        lines.append("")
    s = summary(results)
    lines.append(f"{s['passed']}/{s['calls']} passed")
    for key, label in (("bargein_ms", "barge-in"), ("response_ms", "response")):
        st = s[key]
        if st:
            lines.append(f"{label}: p50 {st['p50']:.0f} ms, p95 {st['p95']:.0f} ms, max {st['max']:.0f} ms (n={st['n']})")
    if s["mean_wer"] is not None:
        lines.append(f"caller WER: mean {s['mean_wer']:.2f}")
    return "\n".join(lines)
