"""Whole calls through the real server over real sockets (speech doubles)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest
import websockets
from doubles import ScriptedSpeechToText, ToneTextToSpeech
from server import running_server
from synth import caller_audio

from agent.events import ActionEvent, BargeInEvent, TranscriptFinalEvent, TransitionEvent
from agent.fake_twilio import outcome_of
from twiml.messages import OutboundClear, OutboundMark, OutboundMedia


def path(server, sid):
    return [e.to for e in server.of_type(sid, TransitionEvent) if e.from_ != e.to]


async def test_dtmf_menu_and_sensitive_digits_end_in_a_hangup(caplog):
    caplog.set_level(logging.INFO)
    async with running_server() as server, server.call({"From": "+15551230000"}) as call:
        await call.silence(200)
        assert "OutboundMedia" in call.kinds() and "OutboundMark" in call.kinds()
        await call.silence(6000)  # the greeting plays out; its marks come back
        await call.dtmf("1")
        await call.silence(3000)
        for digit in "481516":
            await call.dtmf(digit)
            await call.silence(200)
        await call.silence(3000)
        assert server.rest.calls[call.call_sid].updates == [
            {"Status": "completed"}
        ]
        await call.stop()
        await asyncio.sleep(0.2)
    sid = call.call_sid
    assert path(server, sid) == ["menu", "billing", "billing_done"]
    slot = [e for e in server.of_type(sid, ActionEvent) if e.action == "slot"]
    assert slot[0].detail == {"name": "account", "value": "***"}
    everything = " ".join(str(e.to_dict()) for e in server.events) + caplog.text
    assert "481516" not in everything
    digits = [e.detail["digit"] for e in server.of_type(sid, ActionEvent) if e.action == "dtmf"]
    assert digits == ["1", "*", "*", "*", "*", "*", "*"]
    assert "+15551230000" not in caplog.text  # phone numbers masked in logs


async def test_barge_in_clears_within_the_budget_and_transfers():
    stt = ScriptedSpeechToText(["agent please"])
    async with running_server(stt=stt) as server, server.call() as call:
        onset = 1500
        await call.audio(caller_audio(3000, [(onset, 700)]))
        clears = call.at(OutboundClear)
        assert len(clears) == 1
        latency = clears[0] - onset
        assert 0 < latency <= 120, latency
        await call.silence(4000)  # "Transferring you to an agent." then the REST update
        sid = call.call_sid
        updates = server.rest.calls[sid].updates
        assert [outcome_of(u) for u in updates] == ["transfer:+14155550100"]
        assert 'action="' + server.base + '/twilio/dial-result"' in updates[0]["Twiml"]
    bargein = server.of_type(sid, BargeInEvent)
    assert len(bargein) == 1 and bargein[0].latency_ms == latency
    agent_turns = [e for e in server.of_type(sid, TranscriptFinalEvent) if e.speaker == "agent"]
    assert agent_turns[0].interrupted and 0 < agent_turns[0].heard_ms < 2000
    assert agent_turns[0].text and "Thanks for calling Acme" in agent_turns[0].text
    assert path(server, sid) == ["menu", "operator"]


async def test_outbound_audio_is_paced_about_a_second_ahead():
    tts = ToneTextToSpeech(ms_per_char=60)  # the greeting: ~4.6 s of audio
    async with running_server(tts=tts) as server, server.call() as call:
        await call.silence(20)
        sent_ms = sum(len(m.payload) for _, m in call.received if isinstance(m, OutboundMedia)) // 8
        assert 800 <= sent_ms <= 1200
        marks = [m for _, m in call.received if isinstance(m, OutboundMark)]
        medias = [m for _, m in call.received if isinstance(m, OutboundMedia)]
        assert len(marks) == len(medias)  # a mark after each chunk
        await call.silence(2000)
        sent_ms = sum(len(m.payload) for _, m in call.received if isinstance(m, OutboundMedia)) // 8
        assert 2800 <= sent_ms <= 3300


async def test_silence_reprompts_then_falls_back():
    async with running_server() as server, server.call() as call:
        await call.silence(40_000)
    sid = call.call_sid
    kinds = [(e.from_, e.to, e.intent) for e in server.of_type(sid, TransitionEvent)]
    assert kinds[:3] == [(None, "menu", None), ("menu", "menu", "no_input"), ("menu", "menu", "no_input")]
    assert kinds[3] == ("menu", "operator", "fallback")
    assert [outcome_of(u) for u in server.rest.calls[sid].updates] == ["transfer:+14155550100"]


async def test_unrecognised_speech_retries_then_succeeds():
    stt = ScriptedSpeechToText(["order a pizza", "technical support"])
    async with running_server(stt=stt) as server, server.call() as call:
        await call.silence(6000)
        await call.audio(caller_audio(1500, [(200, 600)]))
        await call.silence(5000)
        await call.audio(caller_audio(1500, [(200, 600)], seed=1))
        await call.silence(3000)
    sid = call.call_sid
    kinds = [(e.from_, e.to, e.intent) for e in server.of_type(sid, TransitionEvent)]
    assert ("menu", "menu", "no_match") in kinds and ("menu", "support", "support") in kinds
    assert [outcome_of(u) for u in server.rest.calls[sid].updates] == [f"conference:support-{sid}"]
    caller = [e.text for e in server.of_type(sid, TranscriptFinalEvent) if e.speaker == "caller"]
    assert caller == ["order a pizza", "technical support"]


async def test_a_click_is_not_a_turn():
    """A burst too short to be speech spends no attempt and is not sent to the dialog."""
    stt = ScriptedSpeechToText([])
    async with running_server(stt=stt) as server, server.call() as call:
        await call.silence(6000)
        await call.audio(caller_audio(800, [(100, 100)]))  # 100 ms: under min_turn_ms
        await call.silence(3000)
    sid = call.call_sid
    assert [e.intent for e in server.of_type(sid, TransitionEvent)] == [None]


async def test_synthesis_failure_skips_the_prompt_and_the_call_goes_on(caplog):
    tts = ToneTextToSpeech(fail_on="Thanks for calling")
    async with running_server(tts=tts) as server, server.call() as call:
        await call.silence(100)
        await call.dtmf("2")
        await call.silence(3000)
    assert "speech synthesis failed" in caplog.text
    assert [outcome_of(u) for u in server.rest.calls[call.call_sid].updates] == [
        f"conference:support-{call.call_sid}"
    ]


async def test_without_call_control_the_stream_is_closed_instead(caplog):
    async with running_server(call_control=False) as server, server.call() as call:
        await call.dtmf("0")
        with pytest.raises(websockets.ConnectionClosed) as info:
            await call.silence(4000)
        assert info.value.rcvd.code == 1000
    assert "call control is off" in caplog.text


async def test_call_already_ended_at_twilio_closes_the_stream(caplog):
    caplog.set_level(logging.INFO)
    async with running_server() as server, server.call() as call:
        server.rest.calls[call.call_sid].status = "completed"
        await call.dtmf("2")
        with contextlib.suppress(websockets.ConnectionClosed):  # the server closes the stream
            await call.silence(4000)
    assert "21220" in caplog.text


async def test_dtmf_during_the_greeting_barges_in():
    async with running_server() as server, server.call() as call:
        await call.silence(500)
        await call.dtmf("2")
        assert call.at(OutboundClear) == [500]
        await call.silence(3000)
    assert path(server, call.call_sid) == ["menu", "support"]


class ListArchive:
    """An ArchiveQueue double that keeps what the session hands over."""

    def __init__(self):
        self.records = []

    async def enqueue(self, record):
        self.records.append(record)


async def test_the_finished_call_goes_to_the_archive_with_both_tracks():
    archive = ListArchive()
    stt = ScriptedSpeechToText(["agent please"])
    async with running_server(stt=stt, archive=archive) as server, server.call({"From": "+15551230000"}) as call:
        await call.audio(caller_audio(3000, [(1500, 700)]))
        await call.silence(4000)
        await call.stop()
        await asyncio.sleep(0.3)
    [record] = archive.records
    assert record.call_sid == call.call_sid and record.from_ == "+1555***0000"
    assert record.path == ("menu", "operator") and record.outcome == "transfer:+14155550100"
    assert record.bargein_ms == (record.bargein_ms[0],) and 0 < record.bargein_ms[0] <= 120
    stereo = record.recording.stereo()
    clear_ms = call.at(OutboundClear)[0]
    agent = stereo[:, 1].astype(float)
    assert abs(agent[: 8 * (clear_ms - 100)]).max() > 1000  # the greeting played until the clear
    assert abs(agent[8 * (clear_ms + 20) : 8 * (clear_ms + 600)]).max() == 0  # nothing after it
    assert abs(stereo[8 * 1600 : 8 * 2100, 0].astype(float)).max() > 1000  # the caller's speech
    kinds = {type(e).__name__ for e in record.events}
    assert {"TranscriptFinalEvent", "BargeInEvent", "TransitionEvent"} <= kinds


async def test_metrics_count_calls_frames_and_bargeins():
    import aiohttp

    async with running_server(stt=ScriptedSpeechToText(["agent"])) as server:
        async with server.call() as call:
            await call.audio(caller_audio(2500, [(1000, 600)]))
            await call.send_raw("{bad json")
            await call.sync()
            await call.stop()
        await asyncio.sleep(0.3)
        async with aiohttp.ClientSession() as http, http.get(f"{server.base}/metrics") as resp:
            text = await resp.text()
    assert resp.status == 200
    for name in (
        "callstream_calls_active 0.0",
        "callstream_frames_in_total",
        'callstream_malformed_messages_total{kind="bad_json"}',
        "callstream_bargein_latency_ms_count",
        "callstream_tts_first_audio_ms_count",
        'callstream_calls_total{reason="stop"}',
        "callstream_frame_lateness_ms_count",
        "callstream_event_loop_lag_ms_count",
    ):
        assert name in text, name
    for family in (  # every family of agent/metrics.py is exposed
        "calls_active", "calls_total", "frames_in_total", "messages_out_total", "malformed_messages_total",
        "bargein_latency_ms", "response_latency_ms", "stt_final_latency_ms", "tts_first_audio_ms",
        "webhook_latency_ms", "archive_queue_depth", "archive_failures_total", "frame_lateness_ms",
        "event_loop_lag_ms", "feed_dropped_total",
    ):
        assert f"# TYPE callstream_{family} " in text, family
