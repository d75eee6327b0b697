"""POST /twilio/status: signed, processed once per (CallSid, CallStatus,
SequenceNumber), and a final status ends a stream that is still open."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest
from server import running_server

from agent.events import CallEndedEvent, CallStatusEvent

TOKEN = "status-token"
CALL = "CA" + "4" * 32


def status_form(status: str, sequence: str = "1", call_sid: str = CALL, **extra: str) -> dict[str, str]:
    return {
        "AccountSid": "AC" + "5" * 32,
        "ApiVersion": "2010-04-01",
        "CallSid": call_sid,
        "CallStatus": status,
        "SequenceNumber": sequence,
        "CallbackSource": "call-progress-events",
        "Direction": "outbound-api",
        "From": "+15557770000",
        "To": "sip:alice@pbx.example.com",
        "Timestamp": "Mon, 23 Nov 2026 14:00:00 +0000",
        **extra,
    }


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait (bounded) for something the server does beside the request."""
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


async def test_a_retried_status_callback_is_processed_once(caplog):
    caplog.set_level(logging.INFO)
    async with running_server(twilio_auth_token=TOKEN) as server:
        first = await server.post("/twilio/status", status_form("ringing"))
        again = await server.post("/twilio/status", status_form("ringing"))
        answered = await server.post("/twilio/status", status_form("in-progress", "2"))
    assert first == again == answered == (204, "")
    events = server.of_type(CALL, CallStatusEvent)
    assert [(e.status, e.sequence) for e in events] == [("ringing", "1"), ("in-progress", "2")]
    handled = [r for r in caplog.records if r.name == "callstream.status" and "call ringing" in r.getMessage()]
    assert len(handled) == 1 and handled[0].call_sid == CALL  # type: ignore[attr-defined]
    assert "already handled" in caplog.text
    assert "alice@" not in caplog.text and "+15557770000" not in caplog.text  # masked


async def test_completed_carries_the_duration():
    async with running_server() as server:
        assert (await server.post("/twilio/status", status_form("completed", "3", CallDuration="42")))[0] == 204
    [event] = server.of_type(CALL, CallStatusEvent)
    assert event.to_dict()["type"] == "call.status" and event.duration_s == 42


async def test_status_callback_needs_the_signature():
    async with running_server(twilio_auth_token=TOKEN) as server:
        status, body = await server.post("/twilio/status", status_form("ringing"), signed=False)
    assert status == 403 and "Signature" in body
    assert server.of_type(CALL, CallStatusEvent) == []


async def test_status_callback_without_a_call_is_400():
    async with running_server() as server:
        status, _ = await server.post("/twilio/status", {"CallStatus": "ringing"})
    assert status == 400


async def test_a_final_status_ends_a_stream_whose_peer_went_quiet(caplog):
    """Twilio says the call is over, but the socket neither stops nor closes
    (the peer stopped reading): the session must not hang on it."""
    async with running_server() as server, server.call() as call:
        await call.silence(200)
        call.ws.transport.pause_reading()  # it will not even answer a close frame
        status, _ = await server.post("/twilio/status", status_form("completed", call_sid=call.call_sid))
        assert status == 204
        await until(lambda: not server.services.sessions)
        call.ws.transport.resume_reading()
    [ended] = server.of_type(call.call_sid, CallEndedEvent)
    assert ended.reason == "status:completed"
    assert "still open: ending it" in caplog.text


async def test_a_stream_that_stops_right_after_the_final_status_keeps_its_own_end():
    async with running_server() as server, server.call() as call:
        await call.silence(100)
        assert (await server.post("/twilio/status", status_form("completed", call_sid=call.call_sid)))[0] == 204
        await call.stop()  # Twilio's stop, just after the callback
        await until(lambda: not server.services.sessions)
    [ended] = server.of_type(call.call_sid, CallEndedEvent)
    assert ended.reason == "stop"


async def test_a_progress_status_leaves_the_stream_alone():
    async with running_server() as server, server.call() as call:
        await call.silence(100)
        assert (await server.post("/twilio/status", status_form("in-progress", call_sid=call.call_sid)))[0] == 204
        await call.silence(100)
        assert len(server.services.sessions) == 1
        await call.stop()


def test_the_ops_view_does_not_bring_a_call_back_to_life_for_a_late_status():
    from agent.events import CallStartedEvent, TransferResultEvent
    from agent.ops import CallBook

    book = CallBook()
    book.apply(CallStartedEvent(call_sid=CALL, t=1, from_="+1555***0000"))
    book.apply(CallEndedEvent(call_sid=CALL, t=2, reason="hangup"))
    book.apply(TransferResultEvent(call_sid=CALL, t=3, status="completed"))
    book.apply(CallStatusEvent(call_sid=CALL, t=4, status="completed", sequence="3"))
    assert book.live() == [] and [c["call_sid"] for c in book.recent()] == [CALL]


@pytest.mark.redis
async def test_a_status_callback_retried_on_another_instance_is_processed_once(redis_server, redis_prefix):
    """Two instances on one Redis (claim_once is SET NX): Twilio's retry may
    reach the other instance behind the load balancer; still handled once."""
    from agent.settings import load_settings
    from agent.wiring import build_shared_state

    settings = load_settings({}, env_file=None).with_overrides(redis_url=redis_server, redis_prefix=redis_prefix)
    store_a, feed_a = await build_shared_state(settings)
    store_b, feed_b = await build_shared_state(settings)
    try:
        async with running_server(store=store_a) as a, running_server(store=store_b) as b:
            assert (await a.post("/twilio/status", status_form("completed", "4")))[0] == 204
            assert (await b.post("/twilio/status", status_form("completed", "4")))[0] == 204
        assert len(a.of_type(CALL, CallStatusEvent)) + len(b.of_type(CALL, CallStatusEvent)) == 1
    finally:
        for part in (feed_a, feed_b, store_a, store_b):
            await part.aclose()
