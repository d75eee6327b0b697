"""A transfer nobody takes comes back: `<Dial action>` → /twilio/dial-result →
a new stream of the same call that resumes at the transfer's `on_fail`."""

from __future__ import annotations

from xml.etree import ElementTree

import pytest
from server import running_server

from agent.events import TransferResultEvent, TransitionEvent
from agent.fake_twilio import outcome_of

TOKEN = "dial-token"


def dial_form(call_sid: str, status: str, **extra: str) -> dict[str, str]:
    return {
        "AccountSid": "AC" + "5" * 32,
        "CallSid": call_sid,
        "CallStatus": "in-progress",
        "DialCallStatus": status,
        "DialCallSid": "CA" + "6" * 32,
        "DialCallDuration": "0",
        "DialBridged": "false",
        "From": "+15551230000",
        "To": "+15559870000",
        **extra,
    }


def stream_parameters(twiml: str) -> tuple[str, dict[str, str]]:
    root = ElementTree.fromstring(twiml)
    stream = root.find("./Connect/Stream")
    assert stream is not None, twiml
    return stream.get("url", ""), {p.get("name", ""): p.get("value", "") for p in stream.iter("Parameter")}


async def test_no_answer_resumes_the_dialog_at_on_fail_on_a_new_stream():
    async with running_server(twilio_auth_token=TOKEN) as server:
        async with server.call({"From": "+15551230000"}) as first:
            await first.dtmf("0")
            await first.silence(3000)  # "Transferring you to an agent." then the REST update
            sid = first.call_sid
            [update] = server.rest.calls[sid].updates
            assert outcome_of(update) == "transfer:+14155550100"
            assert f'action="{server.base}/twilio/dial-result"' in update["Twiml"]
            await first.stop()
        status, twiml = await server.post("/twilio/dial-result", dial_form(sid, "no-answer"))
        assert status == 200
        url, parameters = stream_parameters(twiml)
        assert url == server.stream_url
        assert parameters == {
            "From": "+15551230000", "To": "+15559870000", "CallSid": sid, "transfer_status": "no-answer",
        }  # fmt: skip
        redirect = ElementTree.fromstring(twiml).find("Redirect")
        assert redirect is not None and redirect.text == f"{server.base}/twilio/continue"
        async with server.call(parameters, call_sid=sid) as second:
            await second.silence(4000)  # "Please leave a message after the tone."
            updates = server.rest.calls[sid].updates
            assert [outcome_of(u) for u in updates] == ["transfer:+14155550100", "voicemail"]
            assert f"{server.base}/twilio/voice?resume_state=goodbye" in updates[1]["Twiml"]
            await second.stop()
    moves = [(e.from_, e.to, e.intent) for e in server.of_type(sid, TransitionEvent) if e.from_ != e.to]
    assert moves == [(None, "menu", None), ("menu", "operator", "agent"), ("operator", "voicemail", "transfer_failed")]
    assert [e.status for e in server.of_type(sid, TransferResultEvent)] == ["no-answer"]


async def test_a_retried_dial_result_gets_the_same_answer_once():
    async with running_server(twilio_auth_token=TOKEN) as server:
        sid = "CA" + "7" * 32
        first = await server.post("/twilio/dial-result", dial_form(sid, "busy"))
        again = await server.post("/twilio/dial-result", dial_form(sid, "busy"))
    assert first == again and first[0] == 200
    assert [e.to_dict()["status"] for e in server.of_type(sid, TransferResultEvent)] == ["busy"]


@pytest.mark.parametrize("status", ["busy", "no-answer", "failed", "canceled"])
async def test_every_unanswered_status_resumes(status):
    async with running_server() as server:
        _, twiml = await server.post("/twilio/dial-result", dial_form("CA" + "8" * 32, status))
    assert stream_parameters(twiml)[1]["transfer_status"] == status


@pytest.mark.parametrize(("status", "call_status"), [("completed", "in-progress"), ("answered", "in-progress"), ("canceled", "completed")])
async def test_an_answered_transfer_or_a_gone_caller_hangs_up(status, call_status):
    async with running_server() as server:
        _, twiml = await server.post("/twilio/dial-result", dial_form("CA" + "9" * 32, status, CallStatus=call_status))
    assert [verb.tag for verb in ElementTree.fromstring(twiml)] == ["Hangup"]


async def test_dial_result_needs_the_signature():
    async with running_server(twilio_auth_token=TOKEN) as server:
        status, _ = await server.post("/twilio/dial-result", dial_form("CA" + "1" * 32, "busy"), signed=False)
    assert status == 403


async def test_a_transfer_result_without_a_transfer_in_progress_resumes_the_saved_state(caplog):
    """A late duplicate: the dialog already moved on. The caller must not get silence."""
    async with running_server() as server:
        async with server.call() as first:
            await first.dtmf("1")  # billing: not a transfer
            await first.silence(500)
            sid = first.call_sid
            await first.stop()
        async with server.call({"transfer_status": "no-answer"}, call_sid=sid) as second:
            await second.silence(500)
            assert "OutboundMedia" in second.kinds()  # the agent speaks again
            await second.stop()
    assert "no transfer in progress" in caplog.text
    last = server.of_type(sid, TransitionEvent)[-1]
    assert (last.from_, last.to, last.intent) == ("billing", "billing", "resume")
