"""`callstream bench webhook`: POST /twilio/voice latency at a fixed request rate.

DESIGN.md "Performance": `POST /twilio/voice`: p99 ≤ 5 ms at 200 requests/s.

The server is a separate `callstream serve` process on loopback
(agent/bench/webhook_server.py) with TWILIO_AUTH_TOKEN set, so every request
is signed (twilio's RequestValidator, over the form Twilio sends for an
inbound call) and the signature is checked. The load is open-loop: request i
is due at t0 + i/rps whatever happened to the ones before, and its latency
runs from that due time to the end of the response body, so a slow answer
delays nobody's clock (no coordinated omission). Connections are kept alive
(aiohttp), opened as the load needs them. `send lag` (due time → the client
actually starting the request) is the client's own share of the latency,
reported so it can be told apart from the server's. Every answer must be a
200 TwiML `<Connect><Stream>`; anything else is an error, counted by kind.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import time
from collections import Counter
from dataclasses import dataclass
from urllib.parse import urlencode

import aiohttp
import orjson

from agent.bench.stats import Summary, summarize
from agent.bench.webhook_server import ServerProcess, server_process
from twiml.signature import sign

TARGET_P99_MS = 5.0
TARGET_RPS = 200
DISTINCT_CALLS = 256  # distinct signed forms, reused round-robin
TIMEOUT_S = 5.0


@dataclass(frozen=True)
class SignedForm:
    body: bytes
    signature: str


@dataclass(frozen=True)
class Outcome:
    due: float  # perf_counter the request was due
    sent_lag_ms: float
    latency_ms: float
    error: str | None  # None: 200 TwiML with <Connect><Stream>


@dataclass(frozen=True)
class HandlerTime:
    """The route's share, from the server's histogram (agent/app.py `timed`):
    form, signature, TwiML; not the HTTP stack around it."""

    count: int
    mean_ms: float
    within_ms: dict[str, float]  # bucket bound → fraction of requests at or under it

    def as_dict(self) -> dict[str, object]:
        return {"count": self.count, "mean": round(self.mean_ms, 3), "fraction_within_ms": self.within_ms}

    def line(self) -> str:
        shares = ", ".join(f"≤{bound} ms {share:.1%}" for bound, share in self.within_ms.items())
        return f"n={self.count} mean={self.mean_ms:.3f}ms ({shares})"


def _voice_histogram(metrics_text: str) -> dict[str, float]:
    """`sum`, `count` and `le=…` buckets of callstream_webhook_latency_ms{route="voice"}."""
    values: dict[str, float] = {}
    for line in metrics_text.splitlines():
        if not line.startswith("callstream_webhook_latency_ms") or 'route="voice"' not in line:
            continue
        name, value = line.rsplit(" ", 1)
        if name.startswith("callstream_webhook_latency_ms_bucket"):
            values[name.split('le="', 1)[1].split('"', 1)[0]] = float(value)
        elif name.startswith("callstream_webhook_latency_ms_sum"):
            values["sum"] = float(value)
        elif name.startswith("callstream_webhook_latency_ms_count"):
            values["count"] = float(value)
    return values


async def _handler_histogram(http: aiohttp.ClientSession, base: str) -> dict[str, float]:
    async with http.get(base + "/metrics") as resp:
        return _voice_histogram(await resp.text())


def handler_time(before: dict[str, float], after: dict[str, float]) -> HandlerTime | None:
    count = after.get("count", 0.0) - before.get("count", 0.0)
    if count <= 0:
        return None
    within: dict[str, float] = {
        bound: round((after[bound] - before.get(bound, 0.0)) / count, 4)
        for bound in ("0.5", "1.0", "2.0", "5.0")
        if bound in after
    }
    return HandlerTime(int(count), (after.get("sum", 0.0) - before.get("sum", 0.0)) / count, within)


@dataclass(frozen=True)
class WebhookReport:
    rps: float
    seconds: float
    requests: int
    ok: int
    errors: dict[str, int]
    latency: Summary  # due time → response body read (ok requests)
    send_lag: Summary
    achieved_rps: float
    server_cpu_ms_per_request: float
    baseline: Summary | None = None  # GET /healthz at the same rate: client + HTTP stack floor
    handler: HandlerTime | None = None  # the server's own callstream_webhook_latency_ms

    @property
    def meets_target(self) -> bool:
        return not self.errors and self.latency.p99 <= TARGET_P99_MS

    def as_dict(self) -> dict[str, object]:
        return {
            "benchmark": "webhook",
            "rps": self.rps,
            "seconds": self.seconds,
            "requests": self.requests,
            "ok": self.ok,
            "errors": self.errors,
            "latency_ms": self.latency.as_dict(),
            "send_lag_ms": self.send_lag.as_dict(),
            "achieved_rps": round(self.achieved_rps, 1),
            "server_cpu_ms_per_request": round(self.server_cpu_ms_per_request, 3),
            "baseline_healthz_ms": self.baseline.as_dict() if self.baseline else None,
            "server_handler_ms": self.handler.as_dict() if self.handler else None,
            "target": {"p99_ms": TARGET_P99_MS, "rps": TARGET_RPS},
            "meets_target": self.meets_target,
        }

    def text(self) -> str:
        errors = ", ".join(f"{k}={v}" for k, v in sorted(self.errors.items())) or "none"
        return "\n".join(
            [
                f"POST /twilio/voice, open loop at {self.rps:g} req/s for {self.seconds:g} s "
                f"(achieved {self.achieved_rps:.1f} req/s), signed, keep-alive",
                f"  requests {self.requests}, ok {self.ok}, errors: {errors}",
                f"  latency (due time → response): {self.latency.line()}",
                f"  client send lag (due → sent):  {self.send_lag.line()}",
                f"  server CPU per request: {self.server_cpu_ms_per_request:.3f} ms",
                *([f"  server handler time (its own metric): {self.handler.line()}"] if self.handler else []),
                *([f"  baseline GET /healthz, same load: {self.baseline.line()}"] if self.baseline else []),
                f"  target p99 ≤ {TARGET_P99_MS:g} ms at {TARGET_RPS} req/s: "
                + ("met" if self.meets_target else "NOT met"),
            ]
        )


def voice_form(call_sid: str, account_sid: str) -> dict[str, str]:
    """The form Twilio POSTs for an inbound call (Twilio, "TwiML Voice: request parameters")."""
    caller, called = "+15551230000", "+15559870000"
    place = {"City": "SAN FRANCISCO", "Country": "US", "State": "CA", "Zip": "94103"}
    form = {
        "AccountSid": account_sid,
        "ApiVersion": "2010-04-01",
        "CallSid": call_sid,
        "CallStatus": "ringing",
        "CallToken": secrets.token_hex(24),
        "Called": called,
        "Caller": caller,
        "Direction": "inbound",
        "From": caller,
        "To": called,
    }
    for who in ("Called", "Caller", "From", "To"):
        form.update({who + key: value for key, value in place.items()})
    return form


def signed_forms(auth_token: str, url: str, n: int) -> list[SignedForm]:
    account_sid = "AC" + secrets.token_hex(16)
    forms = []
    for _ in range(n):
        form = voice_form("CA" + secrets.token_hex(16), account_sid)
        forms.append(SignedForm(urlencode(form).encode(), sign(auth_token, url, form)))
    return forms


async def _request(http: aiohttp.ClientSession, url: str, form: SignedForm | None, due: float) -> Outcome:
    """POST the signed form (None: GET the URL, the baseline)."""
    started = time.perf_counter()
    error: str | None = None
    try:
        if form is None:
            async with http.get(url) as resp:
                await resp.read()
                error = None if resp.status == 200 else f"http_{resp.status}"
            return Outcome(due, (started - due) * 1000, (time.perf_counter() - due) * 1000, error)
        headers = {"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": form.signature}
        async with http.post(url, data=form.body, headers=headers) as resp:
            body = await resp.read()
            if resp.status != 200:
                error = f"http_{resp.status}"
            elif not resp.headers.get("content-type", "").startswith("text/xml") or b"<Stream" not in body:
                error = "not_stream_twiml"
    except (aiohttp.ClientError, TimeoutError) as exc:
        error = type(exc).__name__
    done = time.perf_counter()
    return Outcome(due, (started - due) * 1000, (done - due) * 1000, error)


async def open_loop(
    http: aiohttp.ClientSession, url: str, forms: list[SignedForm] | None, rps: float, seconds: float
) -> list[Outcome]:
    """Start request i at t0 + i/rps (never waiting for earlier answers)."""
    n = max(1, round(rps * seconds))
    tasks: list[asyncio.Task[Outcome]] = []
    t0 = time.perf_counter() + 0.05
    for i in range(n):
        due = t0 + i / rps
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        form = forms[i % len(forms)] if forms else None
        tasks.append(asyncio.create_task(_request(http, url, form, due)))
    return list(await asyncio.gather(*tasks))


async def measure(
    server: ServerProcess, rps: float, seconds: float, warmup_s: float, *, baseline: bool = False
) -> WebhookReport:
    url = server.base + "/twilio/voice"
    forms = signed_forms(server.auth_token, url, DISTINCT_CALLS)
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as http:
        if warmup_s > 0:
            await open_loop(http, url, forms, rps, warmup_s)
        histogram_before = await _handler_histogram(http, server.base)
        cpu_before = server.cpu_s()
        started = time.perf_counter()
        outcomes = await open_loop(http, url, forms, rps, seconds)
        elapsed = time.perf_counter() - started
        cpu_used = server.cpu_s() - cpu_before
        handler = handler_time(histogram_before, await _handler_histogram(http, server.base))
        floor = None
        if baseline:
            checks = await open_loop(http, server.base + "/healthz", None, rps, seconds)
            floor = summarize([o.latency_ms for o in checks if o.error is None])
    ok = [o for o in outcomes if o.error is None]
    errors = Counter(o.error for o in outcomes if o.error is not None)
    return WebhookReport(
        rps=rps,
        seconds=seconds,
        requests=len(outcomes),
        ok=len(ok),
        errors=dict(errors),
        latency=summarize([o.latency_ms for o in ok]),
        send_lag=summarize([o.sent_lag_ms for o in outcomes]),
        achieved_rps=len(outcomes) / elapsed if elapsed > 0 else 0.0,
        server_cpu_ms_per_request=cpu_used * 1000 / max(1, len(outcomes)),
        baseline=floor,
        handler=handler,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rps", type=float, default=TARGET_RPS, help="requests per second (default %(default)s)")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured duration (default %(default)s)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load first, not counted (default %(default)s)")
    parser.add_argument(
        "--baseline", action="store_true",
        help="then GET /healthz at the same rate and duration: the client and HTTP stack's own floor",
    )
    parser.add_argument("--log-level", default="INFO", help="the server's LOG_LEVEL (default INFO, as in production)")


def run(args: argparse.Namespace) -> int:
    if args.rps <= 0 or args.seconds <= 0 or args.warmup < 0:
        raise SystemExit("--rps and --seconds must be positive, --warmup not negative")
    with server_process(log_level=args.log_level) as server:
        report = asyncio.run(measure(server, args.rps, args.seconds, args.warmup, baseline=args.baseline))
    print(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode() if args.json else report.text())
    return 0 if not report.errors else 1
