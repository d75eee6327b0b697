"""Webhook bad input, fuzzed over a real server (uvicorn on a loopback socket).

Every POST route under /twilio/ gets arbitrary bodies, content types,
charsets, query strings, and huge, duplicate, missing or strange fields, with
signatures off and on (then half the requests are correctly signed, so the
fuzz reaches the handlers). The outcome is always one the route defines —
200/204, 400, 403 or 413 — never a 5xx, and nothing is logged as an error or
with a traceback.

The server runs in a thread of its own with its own event loop for the
module, so hypothesis drives it from plain synchronous tests.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from server import RunningServer, running_server

from agent.webhook_form import MAX_WEBHOOK_BYTES
from twiml.signature import sign

TOKEN = "fuzz-auth-token"
ROUTES = (
    "/twilio/voice",
    "/twilio/status",
    "/twilio/dial-result",
    "/twilio/continue",
    "/twilio/said",
    "/twilio/keys",
    "/twilio/hangup",
    "/twilio/recording",
)
DEFINED = {200, 204, 400, 403, 413}
FIELDS = (
    "CallSid", "AccountSid", "From", "To", "CallStatus", "SequenceNumber", "CallDuration", "Direction",
    "Digits", "DialCallStatus", "DialCallSid", "RecordingSid", "RecordingStatus", "RecordingDuration",
    "RecordingChannels", "RecordingSource", "RecordingStartTime", "Timestamp", "ApiVersion",
)
QUERY_KEYS = ("say_id", "resume_state", "call_sid", "kind", "day", "started_ms", "x")
FUZZ = settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)

# Values Twilio sends and values it never would: SIDs, E.164 and SIP, statuses,
# unicode digits ("²".isdigit() is True), controls, surrogate-free junk, huge.
values = st.one_of(
    st.sampled_from(
        [
            "", "CA" + "a" * 32, "AC" + "5" * 32, "RE" + "1" * 32, "+15551230000", "sip:alice@example.com",
            "completed", "no-answer", "busy", "failed", "in-progress", "ringing", "answered", "absent",
            "1", "0", "-1", "²", "٣", "99999999999999999999", "1e9", "call", "voicemail", "transfer",
            "menu", "goodbye", "../../etc", "2026-11-29", "*#", "1234#",
        ]
    ),
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=1000, max_size=4000),
)
# A form Twilio could send (every field a route needs, valid), which the fuzzed
# fields then add to or override (the last value of a name wins): this reaches
# past the first "is CallSid there?" check of each handler.
TWILIO_FORM = [
    ("CallSid", "CA" + "a" * 32), ("AccountSid", "AC" + "5" * 32), ("From", "+15551230000"),
    ("To", "+15559870000"), ("CallStatus", "completed"), ("SequenceNumber", "3"), ("CallDuration", "12"),
    ("DialCallStatus", "no-answer"), ("Digits", "1"), ("RecordingSid", "RE" + "1" * 32),
    ("RecordingStatus", "completed"), ("RecordingDuration", "7"), ("RecordingChannels", "2"),
]
fields = st.lists(st.tuples(st.sampled_from(FIELDS) | st.text(max_size=12), values), max_size=12)
content_types = st.sampled_from(
    [
        "application/x-www-form-urlencoded",
        "application/x-www-form-urlencoded; charset=utf-8",
        "application/x-www-form-urlencoded; charset=utf-16",
        "application/x-www-form-urlencoded; charset=nonsense",
        "multipart/form-data; boundary=fuzzboundary",
        "multipart/form-data",
        "text/plain",
        "application/json",
        "",
    ]
) | st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30).map(
    str.strip  # what an HTTP client sends
)


@dataclass(frozen=True)
class Ask:
    route: str
    query: str
    content_type: str
    body: bytes
    sign: bool


def multipart(pairs: list[tuple[str, str]]) -> bytes:
    parts = [
        f'--fuzzboundary\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode("utf-8", "replace")
        for k, v in pairs
    ]
    return b"".join(parts) + b"--fuzzboundary--\r\n"


@st.composite
def asks(draw: st.DrawFn) -> Ask:
    route = draw(st.sampled_from(ROUTES))
    query = urlencode(draw(st.lists(st.tuples(st.sampled_from(QUERY_KEYS), values.filter(lambda v: len(v) < 200)), max_size=3)))
    content_type = draw(content_types)
    kind = draw(st.sampled_from(["twilio", "twilio", "form", "multipart", "bytes"]))
    pairs = draw(fields)
    if kind == "twilio":
        body = urlencode(TWILIO_FORM + pairs).encode()
    elif kind == "form":
        body = urlencode(pairs).encode()
    elif kind == "multipart":
        body = multipart(pairs)
    else:
        body = draw(st.binary(max_size=2000))
    return Ask(route, query, content_type, body, draw(st.booleans()))


@dataclass
class Served:
    server: RunningServer
    problems: list[logging.LogRecord]


class Problems(logging.Handler):
    """Collects error lines and tracebacks from any thread."""

    def __init__(self, sink: list[logging.LogRecord]) -> None:
        super().__init__(logging.DEBUG)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.sink.append(record)


@pytest.fixture(scope="module", params=[None, TOKEN], ids=["unsigned", "signed"])
def served(request: pytest.FixtureRequest) -> Iterator[Served]:
    box: dict[str, object] = {}
    ready = threading.Event()

    def serve() -> None:
        async def main() -> None:
            stop = asyncio.Event()
            async with running_server(twilio_auth_token=request.param) as server:
                box.update(server=server, loop=asyncio.get_running_loop(), stop=stop)
                ready.set()
                await stop.wait()

        try:
            asyncio.run(main())
        finally:
            ready.set()

    thread = threading.Thread(target=serve, name="fuzz-server", daemon=True)
    thread.start()
    assert ready.wait(30) and "server" in box, "the server did not start"
    problems: list[logging.LogRecord] = []
    handler = Problems(problems)
    watched = [logging.getLogger(name) for name in ("", "uvicorn", "uvicorn.error")]
    for logger in watched:
        logger.addHandler(handler)
    try:
        yield Served(box["server"], problems)  # type: ignore[arg-type]
    finally:
        for logger in watched:
            logger.removeHandler(handler)
        loop: asyncio.AbstractEventLoop = box["loop"]  # type: ignore[assignment]
        loop.call_soon_threadsafe(box["stop"].set)  # type: ignore[attr-defined]
        thread.join(30)


def send(served: Served, http: httpx.Client, ask: Ask) -> httpx.Response:
    server = served.server
    url = server.base + ask.route + (f"?{ask.query}" if ask.query else "")
    headers = {"content-type": ask.content_type} if ask.content_type else {}
    token = server.settings.twilio_auth_token
    if token and ask.sign:
        # sign what a urlencoded form parses to: right for the forms, wrong (403) for the rest
        params = dict(parse_qsl(ask.body.decode("latin-1"), keep_blank_values=True))
        headers["X-Twilio-Signature"] = sign(token, url, params)
    return http.post(url, content=ask.body, headers=headers)


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


FORM = "application/x-www-form-urlencoded"


def twilio_form(**changes: str) -> bytes:
    return urlencode(TWILIO_FORM + list(changes.items())).encode()


@FUZZ
@given(ask=asks())
# found by this fuzz: '²'.isdigit() is True, int('²') raises (was a 500)
@example(ask=Ask("/twilio/status", "", FORM, twilio_form(CallDuration="²"), True))
@example(ask=Ask("/twilio/said", "say_id=%C2%B2", FORM, twilio_form(), True))
@example(ask=Ask("/twilio/recording", "day=%C2%B2&kind=x", FORM, twilio_form(RecordingDuration="²"), True))
def test_no_webhook_input_gets_a_5xx_or_logs_an_error(served: Served, http: httpx.Client, ask: Ask) -> None:
    before = len(served.problems)
    response = send(served, http, ask)
    assert response.status_code in DEFINED, (response.status_code, response.text[:200])
    assert served.problems[before:] == [], [r.getMessage() for r in served.problems[before:]]


def test_a_body_over_the_limit_is_413_declared_or_chunked(served: Served, http: httpx.Client) -> None:
    url = served.server.base + "/twilio/voice"
    big = urlencode({"CallSid": "CA" + "1" * 32, "Junk": "x" * MAX_WEBHOOK_BYTES}).encode()
    form = {"content-type": "application/x-www-form-urlencoded"}
    assert http.post(url, content=big, headers=form).status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: Transfer-Encoding: chunked
        for i in range(0, len(big), 4096):
            yield big[i : i + 4096]

    response = http.post(url, content=chunks(), headers=form)
    assert response.status_code == 413 and "webhook body over" in response.text
    assert served.problems == []


def test_a_body_at_the_limit_is_served(served: Served, http: httpx.Client) -> None:
    prefix = urlencode({"CallSid": "CA" + "1" * 32, "Junk": ""}).encode()
    body = prefix + b"x" * (MAX_WEBHOOK_BYTES - len(prefix))
    response = send(served, http, Ask("/twilio/voice", "", FORM, body, sign=True))
    assert response.status_code == 200 and "<Stream" in response.text


def test_duplicate_fields_take_one_value_and_a_missing_call_sid_is_defined(served: Served, http: httpx.Client) -> None:
    twice = ("CallSid=CA" + "1" * 32 + "&CallStatus=ringing&CallStatus=completed&SequenceNumber=0").encode()
    assert send(served, http, Ask("/twilio/status", "", FORM, twice, sign=True)).status_code == 204
    missing = Ask("/twilio/status", "", FORM, b"CallStatus=completed", sign=True)
    assert send(served, http, missing).status_code == 400
