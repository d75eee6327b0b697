"""CALLSTREAM_SPEECH=twiml: the agent listens on a one-way stream and speaks by
updating the live call with `<Say>`; Twilio's callbacks drive the prompts.
Real server, real sockets, the real twilio client against the fake REST API."""

from __future__ import annotations

import contextlib
from xml.etree import ElementTree

import websockets
from doubles import ScriptedSpeechToText
from server import running_server
from synth import caller_audio

from agent.events import BargeInEvent, CallUpdateFailedEvent, TranscriptFinalEvent, TransitionEvent
from agent.fake_twilio import outcome_of

TOKEN = "twiml-token"
GREETING = "Thanks for calling Acme. Say billing, support or agent, or press 1, 2 or 0."


def form(call_sid: str, **extra: str) -> dict[str, str]:
    return {"CallSid": call_sid, "AccountSid": "AC" + "5" * 32, "CallStatus": "in-progress", **extra}


def verbs(twiml: str) -> list[str]:
    return [v.tag for v in ElementTree.fromstring(twiml)]


def said_url(server, say_id: int) -> str:
    return f"{server.base}/twilio/said?say_id={say_id}"


def path(server, sid: str) -> list[str]:
    return [e.to for e in server.of_type(sid, TransitionEvent) if e.from_ != e.to]


async def test_the_webhook_forks_a_one_way_stream_and_holds():
    async with running_server(speech="twiml") as server:
        _, twiml = await server.post("/twilio/voice", form("CA" + "1" * 32, From="+15551230000"))
    root = ElementTree.fromstring(twiml)
    assert verbs(twiml) == ["Start", "Gather", "Redirect"]
    stream = root.find("./Start/Stream")
    assert stream is not None and stream.get("name") == "callstream" and stream.get("url") == server.stream_url
    assert {p.get("name"): p.get("value") for p in stream} == {"From": "+15551230000", "CallSid": "CA" + "1" * 32}
    gather = root.find("Gather")
    assert gather is not None and gather.attrib == {
        "action": f"{server.base}/twilio/keys", "input": "dtmf", "method": "POST", "numDigits": "1", "timeout": "10",
    }  # fmt: skip
    assert root[2].text == f"{server.base}/twilio/continue"


async def test_the_agent_speaks_by_call_updates_and_learns_when_a_prompt_ends():
    async with running_server(speech="twiml", twilio_auth_token=TOKEN) as server, server.call() as call:
        await call.silence(100)
        sid = call.call_sid
        [update] = server.rest.calls[sid].updates
        gather = ElementTree.fromstring(update["Twiml"]).find("Gather")
        assert gather is not None and gather.get("action") == said_url(server, 1)
        assert gather.get("actionOnEmptyResult") == "true" and gather.get("numDigits") == "1"
        say = gather.find("Say")
        assert say is not None and say.text == GREETING and say.get("voice") == "Polly.Joanna"
        await call.silence(5000)  # Twilio renders it
        status, twiml = await server.post("/twilio/said?say_id=1", form(sid, Digits=""))
        assert status == 200 and verbs(twiml) == ["Gather", "Redirect"]  # hold, listening
        await call.silence(200)
        assert call.kinds() == []  # no media, mark or clear on a one-way stream
        unsigned, _ = await server.post("/twilio/said?say_id=1", form(sid), signed=False)
        assert unsigned == 403
        await call.stop()
    [turn] = [e for e in server.of_type(sid, TranscriptFinalEvent) if e.speaker == "agent"]
    assert turn.text == GREETING and not turn.interrupted
    assert 3000 <= turn.heard_ms <= 4100  # said at ~5.1 s, sent at ~0.02 s, minus the Gather's second


async def test_a_key_during_a_prompt_cuts_it_and_the_answer_carries_what_follows():
    async with running_server(speech="twiml") as server, server.call() as call:
        await call.silence(1000)
        sid = call.call_sid
        _, twiml = await server.post("/twilio/said?say_id=1", form(sid, Digits="2"))
        # support: its prompt comes back as the answer (no REST), then the conference
        assert verbs(twiml) == ["Say", "Redirect"] and "support bridge" in twiml
        assert len(server.rest.calls[sid].updates) == 1  # only the greeting went by REST
        await call.silence(2500)
        _, twiml = await server.post("/twilio/said?say_id=2", form(sid))
        assert verbs(twiml) == ["Stop", "Dial"]
        assert outcome_of({"Twiml": twiml}) == f"conference:support-{sid}"
        stop = ElementTree.fromstring(twiml).find("./Stop/Stream")
        assert stop is not None and stop.get("name") == "callstream"
        await call.stop()
    [bargein] = server.of_type(sid, BargeInEvent)
    assert bargein.latency_ms == 0 and 900 <= bargein.heard_ms <= 1100
    turns = [e for e in server.of_type(sid, TranscriptFinalEvent) if e.speaker == "agent"]
    assert turns[0].interrupted and turns[0].text == "Thanks for"  # ~1 s of the greeting, by the estimate
    assert path(server, sid) == ["menu", "support"]


async def test_caller_speech_barges_in_by_putting_the_call_on_hold():
    stt = ScriptedSpeechToText(["agent please"])
    async with running_server(speech="twiml", stt=stt) as server, server.call() as call:
        onset = 1500
        await call.audio(caller_audio(3000, [(onset, 700)]))
        sid = call.call_sid
        updates = server.rest.calls[sid].updates
        assert verbs(updates[1]["Twiml"]) == ["Gather", "Redirect"]  # hold: the Say stops
        assert "Transferring you to an agent." in updates[2]["Twiml"]  # the next prompt
        await call.stop()
    [bargein] = server.of_type(sid, BargeInEvent)
    assert 0 < bargein.latency_ms <= 120
    turn = next(e for e in server.of_type(sid, TranscriptFinalEvent) if e.speaker == "agent")
    assert turn.interrupted and abs(turn.heard_ms - (onset + bargein.latency_ms)) <= 60
    assert path(server, sid) == ["menu", "operator"]


async def test_a_barge_in_on_a_hand_on_prompt_holds_then_transfers_in_that_order():
    stt = ScriptedSpeechToText(["agent please", "hello"])
    async with running_server(speech="twiml", stt=stt) as server, server.call() as call:
        await call.audio(caller_audio(3000, [(1500, 700)]))  # "agent please" over the greeting
        await call.audio(caller_audio(1500, [(300, 600)], seed=1))  # talks over "Transferring…"
        await call.silence(300)
        sid = call.call_sid
        updates = server.rest.calls[sid].updates
        await call.stop()
    assert outcome_of(updates[-1]) == "transfer:+14155550100"
    assert verbs(updates[-1]["Twiml"]) == ["Stop", "Dial"]  # the fork stops with the hand-on
    assert path(server, sid) == ["menu", "operator"]


async def test_keys_while_holding_and_stale_callbacks():
    async with running_server(speech="twiml") as server, server.call() as call:
        await call.silence(100)
        sid = call.call_sid
        _, hold = await server.post("/twilio/said?say_id=1", form(sid))
        assert verbs(hold) == ["Gather", "Redirect"]
        _, again = await server.post("/twilio/said?say_id=1", form(sid))  # a retry: nothing new
        assert again == hold
        _, twiml = await server.post("/twilio/keys", form(sid, Digits="1"))
        gather = ElementTree.fromstring(twiml).find("Gather")
        assert gather is not None and gather.get("action") == said_url(server, 2)
        assert "account number" in twiml
        for query in ("", "?say_id=x", "?say_id=" + "9" * 5000):
            bad, _ = await server.post(f"/twilio/said{query}", form(sid))
            assert bad == 400
        await call.stop()
    assert path(server, sid) == ["menu", "billing"]


async def test_a_prompt_whose_update_fails_goes_out_with_the_next_callback():
    async with running_server(speech="twiml") as server:
        server.rest.fail_next(401, 20003, "Authenticate")
        async with server.call() as call:
            await call.silence(100)
            sid = call.call_sid
            assert server.rest.calls[sid].updates == []
            [failed] = server.of_type(sid, CallUpdateFailedEvent)
            assert (failed.action, failed.code, failed.then) == ("say", 20003, "next_callback")
            _, twiml = await server.post("/twilio/continue", form(sid))  # the hold loop comes by
            assert GREETING in twiml and "say_id=1" in twiml
            await call.stop()


async def test_when_the_caller_is_gone_the_stream_ends():
    async with running_server(speech="twiml") as server:
        server.rest.fail_next(400, 21220, "Call is not in-progress. Cannot redirect.")
        async with server.call() as call:
            with contextlib.suppress(websockets.ConnectionClosed):
                await call.silence(200)
        sid = call.call_sid
        _, twiml = await server.post("/twilio/said?say_id=1", form(sid))
    assert verbs(twiml) == ["Say", "Hangup"]  # no session any more: the apology
    [failed] = server.of_type(sid, CallUpdateFailedEvent)
    assert failed.then == "caller_gone"
