"""The server's Twilio surface: webhooks, signatures, bad input, the ops feed."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from xml.etree import ElementTree

import aiohttp
import orjson
import pytest
import websockets
from server import running_server

from agent.events import CallEndedEvent, TransitionEvent
from agent.lockstep import sync_message
from twiml.messages import Media, encode_inbound
from twiml.signature import sign

TOKEN = "twilio-auth-token"
FORM = {"CallSid": "CA" + "1" * 32, "From": "+15551230000", "To": "+15559870000", "AccountSid": "AC" + "5" * 32}


async def post(url, form, headers=None):
    async with aiohttp.ClientSession() as http, http.post(url, data=form, headers=headers or {}) as resp:
        return resp.status, resp.headers.get("content-type", ""), await resp.text()


async def test_voice_webhook_connects_the_stream_with_parameters():
    async with running_server() as server:
        status, ctype, body = await post(f"{server.base}/twilio/voice", FORM)
    assert status == 200 and ctype.startswith("text/xml")
    stream = ElementTree.fromstring(body).find("./Connect/Stream")
    assert stream is not None and stream.get("url") == server.stream_url
    params = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    assert params == {"From": "+15551230000", "To": "+15559870000", "CallSid": FORM["CallSid"]}


async def test_resume_state_is_passed_to_the_stream():
    async with running_server() as server:
        _, _, body = await post(f"{server.base}/twilio/voice?resume_state=goodbye", FORM)
    params = {p.get("name"): p.get("value") for p in ElementTree.fromstring(body).iter("Parameter")}
    assert params["resume_state"] == "goodbye"


@pytest.mark.parametrize("signature", [None, "", "bm90IGEgc2lnbmF0dXJl"])
async def test_webhook_without_a_valid_signature_is_403(signature, caplog):
    async with running_server(twilio_auth_token=TOKEN) as server:
        headers = {} if signature is None else {"X-Twilio-Signature": signature}
        status, _, body = await post(f"{server.base}/twilio/voice", FORM, headers)
    assert status == 403 and "Signature" in body
    assert any(getattr(r, "call_sid", None) == FORM["CallSid"] for r in caplog.records)  # names the call


async def test_webhook_signature_covers_the_exact_url_and_form():
    async with running_server(twilio_auth_token=TOKEN) as server:
        url = f"{server.base}/twilio/voice?resume_state=goodbye"
        good = sign(TOKEN, url, FORM)
        assert (await post(url, FORM, {"X-Twilio-Signature": good}))[0] == 200
        tampered = dict(FORM, From="+15550000000")
        assert (await post(url, tampered, {"X-Twilio-Signature": good}))[0] == 403
        other_url = f"{server.base}/twilio/voice"
        assert (await post(other_url, FORM, {"X-Twilio-Signature": good}))[0] == 403


async def test_websocket_upgrade_needs_the_signature_of_the_wss_url():
    async with running_server(twilio_auth_token=TOKEN) as server:
        for headers in ({}, {"X-Twilio-Signature": sign(TOKEN, server.stream_url + "?x=1")}):
            with pytest.raises(websockets.InvalidStatus) as info:
                async with websockets.connect(server.stream_url, additional_headers=headers):
                    pass
            assert info.value.response.status_code == 403
        async with server.call() as call:  # signed: accepted
            await call.silence(100)
        assert server.services.sessions == set()


async def test_malformed_messages_are_counted_and_the_call_survives(caplog):
    async with running_server() as server, server.call() as call:
        for raw in (
            "{not json",
            '["a list"]',
            '{"event":"bogus"}',
            orjson.dumps(
                {
                    "event": "media",
                    "streamSid": call.stream_sid,
                    "sequenceNumber": "9",
                    "media": {"track": "inbound", "chunk": "1", "timestamp": "0", "payload": "!!!"},
                }
            ).decode(),
            encode_inbound(Media(99, call.stream_sid, "inbound", 1, 0, b"\xff" * 10)),  # wrong size
            encode_inbound(Media(100, "MZ" + "0" * 32, "inbound", 1, 0, b"\xff" * 160)),  # other stream
            b"\x00\xff binary garbage",
            "x" * 70_000,
        ):
            await call.send_raw(raw)
        await call.sync()
        await call.dtmf("2")  # the call still works
        await call.silence(3000)
        sessions = list(server.services.sessions)
        errors = sessions[0].conn.errors
        await call.stop()
    assert {"bad_json", "not_an_object", "unknown_event", "bad_base64", "bad_size", "stream_sid_mismatch", "too_large"} <= set(errors)
    rejected = [r for r in caplog.records if "rejected Twilio message" in r.getMessage()]
    assert rejected and all(getattr(r, "call_sid", None) == call.call_sid for r in rejected)
    sid = call.call_sid
    assert [e.to for e in server.of_type(sid, TransitionEvent)] == ["menu", "support"]


async def test_a_broken_call_does_not_touch_another():
    async with running_server() as server, server.call() as good, server.call() as bad:
        await bad.send_raw("{garbage")
        await bad.send_raw(encode_inbound(Media(2, bad.stream_sid, "inbound", 1, 0, b"\x00")))
        await good.dtmf("1")
        await good.silence(200)
        await bad.ws.close()
        await good.silence(200)
        assert [e.to for e in server.of_type(good.call_sid, TransitionEvent)] == ["menu", "billing"]


async def test_media_before_start_and_unsupported_format():
    async with running_server() as server, websockets.connect(server.stream_url) as ws:
        await ws.send(encode_inbound(Media(1, "MZ1", "inbound", 1, 0, b"\xff" * 160)))
        start = orjson.loads(Path("fixtures/twilio/start.json").read_bytes())
        start["start"]["mediaFormat"]["sampleRate"] = 16000
        await ws.send(orjson.dumps(start).decode())
        with pytest.raises(websockets.ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), 5)
        assert info.value.rcvd.code == 1003


async def test_sync_messages_are_unknown_without_lockstep():
    async with running_server() as server, server.call(lockstep=False) as call:
        await call.ws.send(sync_message(call.stream_sid, 1))
        await asyncio.sleep(0.2)
        session = next(iter(server.services.sessions))
        assert session.conn.errors["unknown_event"] == 1


async def test_ops_feed_needs_the_token_and_streams_events():
    async with running_server() as server, aiohttp.ClientSession() as http:
        for headers, params in (({}, {}), ({"X-Ops-Token": "wrong"}, {}), ({}, {"token": "nope"})):
            async with http.get(f"{server.base}/ops/events", headers=headers, params=params) as resp:
                assert resp.status == 401
        async with http.get(f"{server.base}/ops/events", params={"token": "ops-secret"}) as resp:
            assert resp.status == 200 and resp.headers["content-type"].startswith("text/event-stream")
            assert (await resp.content.readline()).startswith(b": connected")
            async with server.call() as call:
                await call.dtmf("2")
                await call.silence(100)
                await call.stop()
            seen = []
            while "call.ended" not in seen:
                line = await asyncio.wait_for(resp.content.readline(), 5)
                if line.startswith(b"data: "):
                    event = orjson.loads(line[6:])
                    assert event["call_sid"] == call.call_sid
                    seen.append(event["type"])
    assert seen[0] == "call.started" and "dialog.transition" in seen
    ended = server.of_type(call.call_sid, CallEndedEvent)[0]
    assert ended.reason.startswith("conference") or ended.reason == "stop"


async def test_health_and_readiness():
    async with running_server() as server, aiohttp.ClientSession() as http:
        async with http.get(f"{server.base}/healthz") as resp:
            assert resp.status == 200 and (await resp.json()) == {"ok": True}
        async with http.get(f"{server.base}/readyz") as resp:
            assert resp.status == 200 and (await resp.json())["ready"] is True


async def test_dial_result_resumes_the_agent_when_nobody_answered(caplog):
    caplog.set_level(logging.INFO)
    async with running_server() as server:
        form = dict(FORM, DialCallStatus="no-answer")
        _, _, body = await post(f"{server.base}/twilio/dial-result", form)
        params = {p.get("name"): p.get("value") for p in ElementTree.fromstring(body).iter("Parameter")}
        assert params["transfer_status"] == "no-answer"
        _, _, body = await post(f"{server.base}/twilio/dial-result", dict(FORM, DialCallStatus="completed"))
        assert ElementTree.fromstring(body).find("Hangup") is not None
