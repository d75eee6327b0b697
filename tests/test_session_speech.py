"""The session and a recognizer with a mind of its own (Deepgram-like): barge-in
on the recognizer's speech-started hint, turns the recognizer closes before our
turn detector, and falling back to another recognizer when one fails for good.
Real server, real sockets; the recognizer is a double the test drives."""

from __future__ import annotations

import logging

from doubles import ScriptedSpeechToText
from server import running_server
from synth import caller_audio

from agent.events import BargeInEvent, TranscriptFinalEvent, TransitionEvent
from agent.ports import SpeechStartedHint, SttFailure, Transcript
from twiml.messages import OutboundClear


def transitions(server, sid):
    return [(e.from_, e.to, e.intent) for e in server.of_type(sid, TransitionEvent)]


async def test_a_trusted_speech_started_hint_barges_in_once(caplog):
    caplog.set_level(logging.INFO)
    stt = ScriptedSpeechToText([""])
    async with running_server(stt=stt) as server, server.call() as call:
        await call.silence(1000)  # the greeting is playing
        stream = stt.streams[0]
        stream.emit(SpeechStartedHint(at_ms=call.now_ms - 100))  # the offline kind: not trusted
        await call.silence(40)
        assert not call.at(OutboundClear)
        stream.emit(SpeechStartedHint(at_ms=call.now_ms - 100, barge_in=True))
        await call.silence(20)
        assert len(call.at(OutboundClear)) == 1
        await call.audio(caller_audio(1500, [(0, 600)]))  # our VAD hears it too: nothing more to cut
        await call.silence(500)
    sid = call.call_sid
    bargeins = server.of_type(sid, BargeInEvent)
    assert len(bargeins) == 1 and bargeins[0].latency_ms == 100
    assert len(call.at(OutboundClear)) == 1
    assert "barge-in on the recognizer's speech-started hint" in caplog.text


async def test_a_hint_after_our_vad_barged_in_does_nothing_and_a_stale_one_is_ignored():
    stt = ScriptedSpeechToText(["pizza"])
    async with running_server(stt=stt) as server, server.call() as call:
        await call.silence(7000)  # the greeting has played
        await call.audio(caller_audio(1200, [(100, 500)]))  # "pizza": no match, a reprompt starts
        await call.silence(300)
        reprompt_started = call.now_ms - 300
        stream = stt.streams[0]
        stream.emit(SpeechStartedHint(at_ms=reprompt_started - 1000, barge_in=True))  # the old turn's
        await call.silence(200)
        assert not call.at(OutboundClear)
        await call.audio(caller_audio(300, [(0, 300)]))  # VAD barge-in
        stream.emit(SpeechStartedHint(at_ms=call.now_ms - 250, barge_in=True))
        await call.silence(1000)
    assert len(server.of_type(call.call_sid, BargeInEvent)) == 1
    assert len(call.at(OutboundClear)) == 1


async def test_a_turn_the_recognizer_closes_first_counts_once():
    stt = ScriptedSpeechToText([""])  # what answers our detector's end_turn: nothing new
    async with running_server(stt=stt) as server, server.call() as call:
        await call.silence(7000)  # the greeting has played
        speech = caller_audio(1600, [(100, 900)])
        await call.audio(speech[: 800 * 8])  # the caller is mid-word
        stt.streams[0].emit(Transcript("operator", True, 0.9, call.now_ms - 700, call.now_ms, end_of_turn=True))
        await call.audio(speech[800 * 8 :])  # ...our detector hears the end later
        await call.silence(3000)
    sid = call.call_sid
    assert ("menu", "operator", "agent") in transitions(server, sid)
    assert not any(intent in ("no_match", "no_input") for _, _, intent in transitions(server, sid))
    caller = [e.text for e in server.of_type(sid, TranscriptFinalEvent) if e.speaker == "caller"]
    assert caller == ["operator"]


async def test_a_recognizer_failing_for_good_hands_the_call_to_the_fallback(caplog):
    primary = ScriptedSpeechToText([])
    fallback = ScriptedSpeechToText(["technical support"])
    async with running_server(stt=primary, stt_fallback=fallback) as server, server.call() as call:
        await call.silence(2000)
        primary.streams[0].emit(SttFailure("deepgram: refused", retryable=True))
        await call.silence(20)
        assert not fallback.streams  # a retryable failure is the provider's to mend
        primary.streams[0].emit(SttFailure("deepgram: refused", retryable=False))
        await call.silence(5000)
        assert primary.streams[0].closed and len(fallback.streams) == 1
        assert fallback.streams[0].phrases[-1][:2] == ("billing", "bill")  # the state's phrases carried over
        await call.audio(caller_audio(1500, [(200, 600)]))
        await call.silence(3000)
    sid = call.call_sid
    assert ("menu", "support", "support") in transitions(server, sid)
    assert "falling back to scripted" in caplog.text
