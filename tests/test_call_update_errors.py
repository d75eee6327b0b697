"""When a REST call update fails: a defined outcome for each Twilio error,
through the real twilio client against the local fake REST API.

The agent hands the call on by REST. If Twilio refuses for good (20003 bad
credentials, 21211, 20429 or 5xx after the retries), the hand-on is kept and
the stream closed; Twilio then runs the `<Redirect>` after `<Connect>` and
/twilio/continue answers with the hand-on, so the caller still gets the
transfer. 21220 means the caller is gone: nothing to continue.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from xml.etree import ElementTree

import pytest
import websockets
from server import running_server

from agent.events import CallEndedEvent, CallUpdateFailedEvent
from agent.fake_twilio import outcome_of

TOKEN = "update-token"
TRANSFER = "transfer:+14155550100"


def form(call_sid: str) -> dict[str, str]:
    return {"CallSid": call_sid, "AccountSid": "AC" + "5" * 32, "CallStatus": "in-progress", "From": "+15551230000"}


async def transfer_with(server, call) -> None:
    """Press 0 (agent): "Transferring you to an agent." then the update; the
    server may close the stream meanwhile."""
    await call.dtmf("0")
    with contextlib.suppress(websockets.ConnectionClosed):
        await call.silence(3000)


@pytest.mark.parametrize(
    ("status", "code", "times"),
    [(401, 20003, 1), (400, 21211, 1), (429, 20429, 5), (503, 20500, 5)],
    ids=["20003-auth", "21211-invalid-number", "20429-rate-limit-persists", "5xx-persists"],
)
async def test_a_failed_transfer_update_continues_by_webhook(status, code, times, caplog):
    caplog.set_level(logging.INFO)
    async with running_server(twilio_auth_token=TOKEN) as server:
        async with server.call() as call:
            message = "The 'To' number +15005550001 is not valid"  # Twilio quotes numbers
            server.rest.fail_next(status, code, message, times=times, call_sid=call.call_sid)
            await transfer_with(server, call)
        sid = call.call_sid
        assert server.rest.calls[sid].updates == []  # Twilio never took it
        [failed] = server.of_type(sid, CallUpdateFailedEvent)
        assert (failed.action, failed.code, failed.then) == ("transfer", code, "continue_by_webhook")
        [ended] = server.of_type(sid, CallEndedEvent)
        assert ended.reason == "call_update_failed"
        logged = [r for r in caplog.records if "could not update the call" in r.getMessage()]
        assert logged and logged[0].call_sid == sid and str(code) in logged[0].getMessage()  # type: ignore[attr-defined]
        assert "+1500***0001" in failed.message and "+15005550001" not in caplog.text
        # Twilio runs what follows <Connect>: the transfer still happens
        status_code, twiml = await server.post("/twilio/continue", form(sid))
        assert status_code == 200 and outcome_of({"Twiml": twiml}) == TRANSFER
        assert "dial-result" in twiml
        # it is used once: a later stream end gets the apology
        _, again = await server.post("/twilio/continue", form(sid))
        assert [v.tag for v in ElementTree.fromstring(again)] == ["Say", "Hangup"]


async def test_a_rate_limit_that_clears_is_retried_and_transfers():
    async with running_server() as server, server.call() as call:
        server.rest.fail_next(429, 20429, "Too Many Requests", times=2, call_sid=call.call_sid)
        await transfer_with(server, call)
        await call.stop()
    sid = call.call_sid
    assert [outcome_of(u) for u in server.rest.calls[sid].updates] == [TRANSFER]
    assert server.of_type(sid, CallUpdateFailedEvent) == []


async def test_21220_the_caller_is_gone_nothing_continues(caplog):
    caplog.set_level(logging.INFO)
    async with running_server() as server:
        async with server.call() as call:
            server.rest.calls[call.call_sid].status = "completed"  # hung up meanwhile
            await transfer_with(server, call)
        sid = call.call_sid
        [failed] = server.of_type(sid, CallUpdateFailedEvent)
        assert (failed.code, failed.then) == (21220, "caller_gone")
        assert server.of_type(sid, CallEndedEvent)[0].reason == "caller_gone"
        _, twiml = await server.post("/twilio/continue", form(sid))
    assert [v.tag for v in ElementTree.fromstring(twiml)] == ["Say", "Hangup"]
    assert "21220" in caplog.text


async def test_without_call_control_the_hand_on_goes_by_webhook():
    async with running_server(call_control=False) as server:
        async with server.call() as call:
            await transfer_with(server, call)
        _, twiml = await server.post("/twilio/continue", form(call.call_sid))
    assert outcome_of({"Twiml": twiml}) == TRANSFER


async def test_a_stream_that_ends_with_nothing_pending_apologises_and_hangs_up(caplog):
    async with running_server(twilio_auth_token=TOKEN) as server:
        _, twiml = await server.post("/twilio/continue", form("CA" + "2" * 32))
        unsigned, _ = await server.post("/twilio/continue", form("CA" + "2" * 32), signed=False)
    root = ElementTree.fromstring(twiml)
    assert [v.tag for v in root] == ["Say", "Hangup"] and "sorry" in (root[0].text or "")
    assert unsigned == 403
    assert "nothing to continue with" in caplog.text


async def test_the_voice_webhook_continues_after_the_stream():
    async with running_server() as server:
        _, twiml = await server.post("/twilio/voice", form("CA" + "3" * 32))
    root = ElementTree.fromstring(twiml)
    assert [v.tag for v in root] == ["Connect", "Redirect"]
    assert root[1].text == f"{server.base}/twilio/continue" and root[1].get("method") == "POST"


# --- SIP callers and SIP transfers -----------------------------------------------------------


async def test_a_sip_caller_is_accepted_end_to_end_and_masked(caplog):
    caplog.set_level(logging.INFO)
    sip_form = form("CA" + "4" * 32) | {"From": "sip:alice@example.com", "To": "sip:support@acme.example.com"}
    async with running_server() as server:
        _, twiml = await server.post("/twilio/voice", sip_form)
        stream = ElementTree.fromstring(twiml).find("./Connect/Stream")
        assert stream is not None
        parameters = {p.get("name", ""): p.get("value", "") for p in stream.iter("Parameter")}
        assert parameters["From"] == "sip:alice@example.com" and parameters["To"] == "sip:support@acme.example.com"
        async with server.call(parameters) as call:
            await call.silence(200)
            await call.stop()
    [started] = [e for e in server.events if e.type == "call.started" and e.call_sid == call.call_sid]
    assert (started.from_, started.to) == ("sip:al***@example.com", "sip:su***@acme.example.com")
    assert "alice@" not in caplog.text and "support@acme" not in caplog.text


async def test_a_transfer_to_a_sip_address_dials_sip(tmp_path):
    flow = tmp_path / "sip.yaml"
    acme = (Path(__file__).parent.parent / "fixtures/flows/acme.yaml").read_text()
    flow.write_text(acme.replace('"+14155550100"', '"sip:desk@pbx.example.com"'))
    async with running_server(flow_path=str(flow)) as server, server.call() as call:
        await transfer_with(server, call)
        await call.stop()
    [update] = server.rest.calls[call.call_sid].updates
    dial = ElementTree.fromstring(update["Twiml"]).find("Dial")
    assert dial is not None and [(n.tag, n.text) for n in dial] == [("Sip", "sip:desk@pbx.example.com")]
    assert outcome_of(update) == "transfer:sip:desk@pbx.example.com"
