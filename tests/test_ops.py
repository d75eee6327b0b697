"""The ops view: the CallBook fold (pure), and the ops routes over a real server."""

from __future__ import annotations

import aiohttp
import orjson
from server import running_server
from sse import reading_feed

from agent.events import (
    ActionEvent,
    ArchiveStoredEvent,
    BargeInEvent,
    CallEndedEvent,
    CallStartedEvent,
    LatencyEvent,
    TranscriptFinalEvent,
    TranscriptPartialEvent,
    TransitionEvent,
)
from agent.flow_loader import load_flow
from agent.ops import CallBook
from agent.ops_http import COOKIE, LocalArchiveFiles, cookie_value, redacted_state
from agent.settings import DEFAULT_FLOW

TOKEN = {"X-Ops-Token": "ops-secret"}


# --- the fold ---------------------------------------------------------------------------


def test_a_call_is_live_until_it_ends_then_recent():
    book = CallBook()
    book.apply(CallStartedEvent(call_sid="CA1", t=1000, from_="+1555***0000", to="+1555***1111", flow="acme"))
    book.apply(TransitionEvent(call_sid="CA1", t=1001, from_=None, to="menu"))
    book.apply(TranscriptFinalEvent(call_sid="CA1", t=1002, speaker="agent", text="Thanks for calling.", interrupted=True))
    book.apply(BargeInEvent(call_sid="CA1", t=1003, latency_ms=80))
    book.apply(TranscriptPartialEvent(call_sid="CA1", t=1004, text="bill"))
    assert book.live()[0]["partial"] == "bill"
    book.apply(TranscriptFinalEvent(call_sid="CA1", t=1005, speaker="caller", text="billing"))
    book.apply(LatencyEvent(call_sid="CA1", t=1006, name="response", ms=3.25))
    book.apply(TransitionEvent(call_sid="CA1", t=1006, from_="menu", to="billing", intent="billing"))
    [live] = book.live()
    assert live["from"] == "+1555***0000" and live["state"] == "billing" and live["partial"] == ""
    assert [(x["speaker"], x["text"], x["interrupted"]) for x in live["transcript"]] == [
        ("agent", "Thanks for calling.", True),
        ("caller", "billing", False),
    ]
    assert (live["bargein_ms"], live["response_ms"]) == ([80], [3.2])
    book.apply(ActionEvent(call_sid="CA1", t=1007, action="hangup"))
    book.apply(CallEndedEvent(call_sid="CA1", t=1008, reason="hangup", path=("menu", "billing")))
    assert book.live() == []
    [recent] = book.recent()
    assert recent["outcome"] == "hangup" and recent["end_reason"] == "hangup" and "transcript" not in recent
    assert book.get("CA1")["transcript"][1]["text"] == "billing"
    book.apply(ArchiveStoredEvent(call_sid="CA1", t=2000, location="/archive/2025/01/02/CA1"))
    assert book.get("CA1")["archive"] == "/archive/2025/01/02/CA1"


def test_a_resumed_stream_brings_the_call_back_with_its_transcript():
    book = CallBook()
    book.apply(TransitionEvent(call_sid="CA1", t=1, from_=None, to="operator"))
    book.apply(TranscriptFinalEvent(call_sid="CA1", t=2, speaker="caller", text="agent"))
    book.apply(CallEndedEvent(call_sid="CA1", t=3, reason="transfer"))
    book.apply(CallStartedEvent(call_sid="CA1", t=10))
    book.apply(TransitionEvent(call_sid="CA1", t=11, from_="operator", to="operator", intent="resume"))
    [live] = book.live()
    assert live["path"] == ["operator"] and live["transcript"][0]["text"] == "agent" and book.recent() == []


def test_the_book_is_bounded():
    book = CallBook(max_recent=3, idle_ms=1000)
    for i in range(5):
        book.apply(CallEndedEvent(call_sid=f"CA{i}", t=i, reason="stop"))
    assert [c["call_sid"] for c in book.recent()] == ["CA4", "CA3", "CA2"]
    book.apply(CallStartedEvent(call_sid="CAlost", t=100))
    for i in range(300):
        book.apply(TranscriptFinalEvent(call_sid="CAbusy", t=100 + i, speaker="caller", text=str(i)))
    assert len(book.get("CAbusy")["transcript"]) == 200
    book.prune(100 + 61_000)  # CAlost said nothing for a minute: its instance died
    assert {c["call_sid"] for c in book.live()} == set()
    assert book.get("CAlost")["end_reason"] == "lost"


def test_stored_state_is_shown_with_sensitive_slots_redacted():
    flow = load_flow(str(DEFAULT_FLOW))
    snapshot = {
        "version": 1, "state": "billing_done", "path": ["menu", "billing", "billing_done"],
        "slots": {"account": "481516", "note": "x"}, "sensitive_slots": [], "say_id": 3, "transferring": False,
    }
    shown = redacted_state(snapshot, flow)  # the flow says `account` is sensitive, even if the snapshot does not
    assert shown["slots"] == {"account": "***", "note": "x"} and "481516" not in str(shown)


# --- over HTTP ----------------------------------------------------------------------------


async def test_every_ops_route_needs_the_token():
    async with running_server() as server, aiohttp.ClientSession() as http:
        for path in ("/ops/events", "/ops/calls", "/ops/calls/CA1", "/ops/calls/CA1/files/call.json"):
            for headers in ({}, {"X-Ops-Token": "wrong"}, {"Authorization": "Bearer wrong"}):
                async with http.get(server.base + path, headers=headers) as resp:
                    assert resp.status == 401, (path, headers)
            async with http.get(server.base + path, headers={"Cookie": f"{COOKIE}=forged"}) as resp:
                assert resp.status == 401
        async with http.get(server.base + "/ops") as resp:
            assert resp.status == 401 and "<form" in await resp.text()
    async with running_server(ops_token=None) as server, aiohttp.ClientSession() as http:
        async with http.get(server.base + "/ops/calls", headers=TOKEN) as resp:
            assert resp.status == 401  # no token configured: nothing is open
        async with http.get(server.base + "/ops") as resp:
            assert resp.status == 401 and "CALLSTREAM_OPS_TOKEN is not set" in await resp.text()


async def test_login_sets_a_cookie_that_is_not_the_token():
    jar = aiohttp.CookieJar(unsafe=True)  # keep cookies of an IP-address host
    async with running_server() as server, aiohttp.ClientSession(cookie_jar=jar) as http:
        async with http.post(server.base + "/ops/login", data={"token": "nope"}) as resp:
            assert resp.status == 401 and "Wrong token" in await resp.text()
        async with http.post(server.base + "/ops/login", data={"token": "ops-secret"}, allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["Location"] == "/ops"
            cookie = resp.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ops" in cookie
        assert "ops-secret" not in cookie and cookie_value("ops-secret") in cookie
        async with http.get(server.base + "/ops") as resp:  # the session keeps the cookie
            page = await resp.text()
            assert resp.status == 200 and "/ops/static/ops.js" in page
            assert resp.headers["Content-Security-Policy"].startswith("default-src 'self'")
        async with http.get(server.base + "/ops/calls") as resp:
            assert resp.status == 200 and await resp.json() == {"live": [], "recent": []}
        async with http.get(server.base + "/ops?token=ops-secret", allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["Location"] == "/ops"  # the token leaves the URL
        async with http.get(server.base + "/ops/static/ops.js") as resp:
            assert resp.status == 200 and resp.content_type == "text/javascript"
        async with http.get(server.base + "/ops/static/..%2Fops.py") as resp:
            assert resp.status == 404


async def test_a_call_as_ops_see_it(tmp_path):
    archive = tmp_path / "archive"
    async with running_server() as server, aiohttp.ClientSession(headers=TOKEN) as http:
        server.services.archive_files = LocalArchiveFiles(archive)
        async with reading_feed(server.base) as feed, server.call({"From": "+15551230000"}) as call:
            await call.silence(6200)
            await call.dtmf("1")
            await call.silence(3000)
            async with http.get(f"{server.base}/ops/calls") as resp:
                [live] = (await resp.json())["live"]
            assert live["call_sid"] == call.call_sid and live["state"] == "billing"
            assert live["from"] == "+1555***0000"
            assert live["transcript"][0]["text"].startswith("Thanks for calling Acme")
            for digit in "481516":
                await call.dtmf(digit)
                await call.silence(200)
            await call.silence(3000)
            await call.stop()
            await feed.wait_for(lambda ev: any(e["type"] == "call.ended" for e in ev))
        sid = call.call_sid
        async with http.get(f"{server.base}/ops/calls") as resp:
            body = await resp.json()
        assert body["live"] == [] and body["recent"][0]["call_sid"] == sid
        async with http.get(f"{server.base}/ops/calls/{sid}") as resp:
            one = await resp.json()
            text = str(one)
        assert one["summary"]["path"] == ["menu", "billing", "billing_done"]
        assert one["state"]["slots"] == {"account": "***"} and "481516" not in text
        assert one["archive"] is None
        # the archive stores the call (its worker's folder layout): the page links its files
        folder = archive / "2025" / "01" / "02" / sid
        folder.mkdir(parents=True)
        (folder / "call.json").write_text(orjson.dumps({"call_sid": sid}).decode())
        (folder / "secret.txt").write_text("not served")
        async with http.get(f"{server.base}/ops/calls/{sid}") as resp:
            files = (await resp.json())["archive"]["files"]
        assert files == {"call.json": f"/ops/calls/{sid}/files/call.json"}
        async with http.get(server.base + files["call.json"]) as resp:
            assert resp.status == 200 and sid in await resp.text()
        for bad in (f"/ops/calls/{sid}/files/secret.txt", f"/ops/calls/{sid}/files/audio.wav", "/ops/calls/CA..%2F..%2F/files/call.json"):
            async with http.get(server.base + bad) as resp:
                assert resp.status in (400, 404), bad
        async with http.get(f"{server.base}/ops/calls/CAunknown") as resp:
            assert resp.status == 404
        async with http.get(f"{server.base}/ops/calls/not-a-sid!") as resp:
            assert resp.status == 400
