"""Two server instances on one real Redis: a call handed on by instance A resumes
on instance B, and the live feed of either shows every call."""

from __future__ import annotations

from xml.etree import ElementTree

import aiohttp
import pytest
from server import running_server
from sse import reading_feed

from agent.fake_twilio import outcome_of
from agent.settings import load_settings
from agent.wiring import build_shared_state

pytestmark = pytest.mark.redis


def ended(sid: str, n: int = 1):
    return lambda events: sum(e["type"] == "call.ended" and e["call_sid"] == sid for e in events) >= n


async def test_a_transfer_on_one_instance_resumes_on_the_other(redis_server, redis_prefix):
    settings = load_settings({}, env_file=None).with_overrides(redis_url=redis_server, redis_prefix=redis_prefix)
    store_a, feed_a = await build_shared_state(settings)
    store_b, feed_b = await build_shared_state(settings)
    try:
        async with (
            running_server(store=store_a, feed=feed_a) as a,
            running_server(store=store_b, feed=feed_b) as b,
            reading_feed(a.base) as on_a,
            reading_feed(b.base) as on_b,
        ):
            # stream 1 on A: the caller asks for an agent; the snapshot is saved, the call transferred
            async with a.call({"From": "+15551230000", "To": "+15559870000"}) as first:
                await first.silence(6200)  # the greeting plays out
                await first.dtmf("0")
                await first.silence(3000)  # "Transferring you to an agent." then the REST update
                sid = first.call_sid
                assert [outcome_of(u) for u in a.rest.calls[sid].updates] == ["transfer:+14155550100"]
                await first.stop()
            # nobody answers: Twilio asks B (the load balancer's choice) what to do next
            form = {"CallSid": sid, "DialCallStatus": "no-answer", "From": "+15551230000", "To": "+15559870000"}
            async with aiohttp.ClientSession() as http, http.post(f"{b.base}/twilio/dial-result", data=form) as resp:
                twiml = await resp.text()
            params = {p.get("name"): p.get("value") for p in ElementTree.fromstring(twiml).iter("Parameter")}
            assert params["transfer_status"] == "no-answer"
            # stream 2 on B, same CallSid: it continues at the transfer's on_fail state
            async with b.call(params, call_sid=sid) as second:
                await second.silence(4000)  # "Please leave a message after the tone." then the REST update
                assert [outcome_of(u) for u in b.rest.calls[sid].updates] == ["voicemail"]
                await second.stop()
            # and a call of B's own
            async with b.call({"From": "+15550001111"}) as other:
                await other.silence(200)
                await other.stop()
            for reader in (on_a, on_b):
                await reader.wait_for(lambda ev: ended(sid, 2)(ev) and ended(other.call_sid)(ev))
                transitions = [(e["from"], e["to"], e["intent"]) for e in reader.of(sid, "dialog.transition")]
                assert transitions == [
                    (None, "menu", None), ("menu", "operator", "agent"), ("operator", "voicemail", "transfer_failed"),
                ]
                assert [e["action"] for e in reader.of(sid, "action") if e["action"] != "say"][-2:] == [
                    "transfer", "voicemail",
                ]
                assert reader.of(other.call_sid, "call.started")
            # both ops views know the whole call, whichever instance served which stream
            for server in (a, b):
                async with aiohttp.ClientSession() as http, http.get(
                    f"{server.base}/ops/calls/{sid}", headers={"X-Ops-Token": "ops-secret"}
                ) as resp:
                    body = await resp.json()
                assert body["summary"]["path"] == ["menu", "operator", "voicemail"]
                assert body["state"]["state"] == "voicemail" and body["state"]["path"][-1] == "voicemail"
        assert b.events and all(e.call_sid in (sid, other.call_sid) for e in b.events)
    finally:
        for part in (feed_a, feed_b, store_a, store_b):
            await part.aclose()


async def test_redis_going_away_mid_call_does_not_break_the_call(own_redis, caplog):
    settings = load_settings({}, env_file=None).with_overrides(redis_url=own_redis.url, redis_prefix="t:")
    store, feed = await build_shared_state(settings)
    try:
        async with running_server(store=store, feed=feed) as server, reading_feed(server.base) as local:
            async with server.call() as call:
                await call.silence(6200)
                own_redis.stop()
                await call.dtmf("0")  # menu → operator: the snapshot cannot be saved
                await call.silence(3000)
                assert [outcome_of(u) for u in server.rest.calls[call.call_sid].updates] == [
                    "transfer:+14155550100"
                ]
                await call.stop()
            await local.wait_for(ended(call.call_sid))  # this instance's feed still works
        failures = [r for r in caplog.records if "could not save the dialog state" in r.getMessage()]
        assert failures and all(r.call_sid == call.call_sid for r in failures)
    finally:
        await feed.aclose()
        await store.aclose()
