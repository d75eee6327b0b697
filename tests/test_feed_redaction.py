"""No sensitive value reaches the live feed: the billing_dtmf fixture call,
replayed through the real server (real offline speech, the local archive),
read over the real SSE endpoint as an ops client reads it."""

from __future__ import annotations

import socket
from pathlib import Path

import aiohttp
from sse import reading_feed

from agent.app import create_app, stream_url
from agent.fixtures import find_fixtures
from agent.replay import replay
from agent.serving import base_url_of, bound_socket, serve_in_background
from agent.settings import load_settings

CALLS = Path(__file__).resolve().parent.parent / "fixtures" / "calls"
ACCOUNT_NUMBER = "481516"  # what billing_dtmf.yaml keys in, into the sensitive slot `account`


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_billing_dtmf_publishes_no_sensitive_value(tmp_path):
    fixture = find_fixtures([CALLS / "billing_dtmf.yaml"])
    keyed = "".join(e.digits for e in fixture[0].events)[1:]
    assert keyed == ACCOUNT_NUMBER
    sock, rest_port = bound_socket(), free_port()
    base = base_url_of(sock)
    settings = load_settings({}, env_file=None).with_overrides(
        public_base_url=base,
        twilio_account_sid="AC" + "3" * 32,
        twilio_auth_token="replay-token",
        twilio_api_base=f"http://127.0.0.1:{rest_port}",
        ops_token="ops-secret",
        archive=str(tmp_path / "archive"),
    )
    async with serve_in_background(create_app(settings, base), sock), reading_feed(base) as feed:
        [result] = await replay(fixture, settings, url=stream_url(base), rest_port=rest_port)
        assert result.passed, (result.failures, result.error)
        await feed.wait_for(lambda ev: any(e["type"] == "call.ended" for e in ev))
        # the archive stores the call and says so on the feed; the ops view links its files
        await feed.wait_for(lambda ev: any(e["type"] == "archive.stored" for e in ev))
        async with aiohttp.ClientSession(headers={"X-Ops-Token": "ops-secret"}) as http:
            async with http.get(f"{base}/ops/calls/{result.call_sid}") as resp:
                archived = (await resp.json())["archive"]
            assert set(archived["files"]) == {"audio.wav", "transcript.json", "transcript.vtt", "call.json"}
            async with http.get(base + archived["files"]["call.json"]) as resp:
                assert resp.status == 200 and ACCOUNT_NUMBER not in await resp.text()
    sid = result.call_sid
    raw = bytes(feed.raw)
    assert ACCOUNT_NUMBER.encode() not in raw
    events = feed.of(sid)
    assert [e["to"] for e in events if e["type"] == "dialog.transition"] == ["menu", "billing", "billing_done"]
    digits = [e["detail"]["digit"] for e in events if e["type"] == "action" and e["action"] == "dtmf"]
    assert digits == ["1", "*", "*", "*", "*", "*", "*"]
    slots = [e["detail"] for e in events if e["type"] == "action" and e["action"] == "slot"]
    assert slots == [{"name": "account", "value": "***"}]
    for event in events:  # nor any digit of it, in any field, once the billing state listens
        if event["type"] in ("transcript.partial", "transcript.final") and event.get("speaker") == "caller":
            assert not any(ch.isdigit() for ch in event["text"]), event
