"""Faults on the media socket, over a real socket: a peer that never starts,
floods, repeats or reorders sequence numbers, echoes marks we never sent,
stops before starting, or vanishes mid-utterance (docs/faults.md)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
import websockets
from doubles import ScriptedSpeechToText
from server import running_server
from synth import caller_audio

from agent.events import CallEndedEvent, TranscriptPartialEvent, TransitionEvent
from agent.fixtures import find_fixtures
from agent.metrics import REGISTRY
from agent.ports import Transcript
from agent.rate_limit import MessageBudget
from agent.replay import paced_budget, replay
from agent.settings import load_settings
from twiml.messages import Connected, Mark, Media, Stop, encode_inbound

SILENCE = b"\xff" * 160
CALLS = Path(__file__).resolve().parent.parent / "fixtures" / "calls"


def malformed(kind: str) -> float:
    return REGISTRY.get_sample_value("callstream_malformed_messages_total", {"kind": kind}) or 0.0


async def closed_with(ws: websockets.ClientConnection, timeout_s: float = 10) -> websockets.frames.Close:
    """Read until the server closes; its close frame."""
    with pytest.raises(websockets.ConnectionClosed) as info:
        async with asyncio.timeout(timeout_s):
            while True:
                await ws.recv()
    assert info.value.rcvd is not None, "closed without a close frame"
    return info.value.rcvd


def logged(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if text in r.getMessage()]


async def ended(server, call_sid: str) -> CallEndedEvent:
    for _ in range(200):
        found = server.of_type(call_sid, CallEndedEvent)
        if found:
            return found[0]
        await asyncio.sleep(0.02)
    raise AssertionError(f"no call.ended for {call_sid}")


# --- the message budget (pure) ------------------------------------------------------


def test_the_budget_pays_a_burst_then_holds_to_the_rate() -> None:
    budget = MessageBudget(100, now=0.0, burst_s=2.0)
    assert sum(budget.take() for _ in range(250)) == 200  # the burst: two seconds' worth
    assert not budget.take_at(0.0)  # no time has passed: nothing earned
    assert budget.take_at(0.5)  # half a second earns 50
    assert sum(budget.take() for _ in range(100)) == 49
    assert not budget.take_at(0.505)  # a fraction of a token is not a token…
    assert budget.take_at(0.51)  # …but it is kept, not lost


def test_a_quiet_budget_refills_to_its_capacity_only() -> None:
    budget = MessageBudget(100, now=0.0)
    for _ in range(200):
        budget.take()
    assert budget.take_at(3600.0)
    assert budget.tokens == budget.capacity - 1


def test_a_stream_at_twilio_pace_is_never_limited() -> None:
    budget = MessageBudget(100, now=0.0)
    now, dropped = 0.0, 0
    for _ in range(50_000):  # 100 messages a second: 50 media + 50 mark echoes, 500 s
        now += 0.01
        if not budget.take() and not budget.take_at(now):
            dropped += 1
    assert dropped == 0


# --- start timeout ------------------------------------------------------------------


@pytest.mark.parametrize("first", [None, "connected"])
async def test_a_socket_that_never_sends_start_is_closed_1008(first, caplog):
    before = malformed("start_timeout")
    async with running_server(start_timeout_s=0.3) as server, websockets.connect(server.stream_url) as ws:
        if first == "connected":
            await ws.send(encode_inbound(Connected("Call", "1.0.0")))
        close = await closed_with(ws)
        await asyncio.sleep(0.1)
        assert server.services.sessions == set()
    assert (close.code, close.reason) == (1008, "no start message")
    assert malformed("start_timeout") == before + 1
    [line] = logged(caplog, "no start message within 0.3 s")
    assert line.levelno == logging.WARNING


async def test_a_started_stream_is_not_timed_out():
    async with running_server(start_timeout_s=0.3) as server, server.call() as call:
        await call.silence(200)
        await asyncio.sleep(0.5)  # past the start timeout: nothing happens to a started stream
        await call.dtmf("1")
        assert [e.to for e in server.of_type(call.call_sid, TransitionEvent)] == ["menu", "billing"]


async def test_stop_without_start_is_counted_and_the_socket_closed_at_the_start_timeout(caplog):
    caplog.set_level(logging.INFO)
    before = malformed("stop_before_start")
    async with running_server(start_timeout_s=0.3) as server, websockets.connect(server.stream_url) as ws:
        await ws.send(encode_inbound(Connected("Call", "1.0.0")))
        await ws.send(encode_inbound(Stop(1, "MZ" + "1" * 32, "AC" + "0" * 32, "CA" + "1" * 32)))
        close = await closed_with(ws)
    assert close.code == 1008
    assert malformed("stop_before_start") == before + 1
    assert logged(caplog, "rejected Twilio message (stop_before_start")
    assert logged(caplog, "stream closed before a start (start_timeout): start_timeout 1, stop_before_start 1")


# --- message rate -------------------------------------------------------------------


async def test_a_flood_is_dropped_counted_then_closed_1008(caplog):
    before = malformed("rate_limited")
    async with running_server(max_messages_per_s=100) as server, server.call(lockstep=False) as call:
        sent = 0
        with pytest.raises(websockets.ConnectionClosed) as info:
            for seq in range(2, 20_000):
                await call.ws.send(encode_inbound(Media(seq, call.stream_sid, "inbound", seq, seq * 20, SILENCE)))
                sent += 1
                if sent % 200 == 0:
                    await asyncio.sleep(0)  # let the close frame in
        close = info.value.rcvd
        assert close is not None and (close.code, close.reason) == (1008, "message rate limit exceeded")
        event = await ended(server, call.call_sid)
    assert event.reason == "rate_limited"
    assert malformed("rate_limited") - before > 100  # more than a second's worth dropped
    [first] = logged(caplog, "messages/s from Twilio's side: dropping")
    [closing] = logged(caplog, "dropped over the rate limit: closing the socket (1008)")
    assert first.call_sid == closing.call_sid == call.call_sid


async def test_a_lockstep_replay_is_exempt_from_the_budget():
    before = malformed("rate_limited")
    async with running_server(max_messages_per_s=100) as server, server.call() as call:
        await call.silence(8000)  # 400 frames + 400 syncs + mark echoes, as fast as we answer
        await call.dtmf("1")
        assert [e.to for e in server.of_type(call.call_sid, TransitionEvent)] == ["menu", "billing"]
    assert malformed("rate_limited") == before


# --- sequence numbers and marks, over the socket --------------------------------------


async def test_duplicate_and_older_sequence_numbers_are_dropped_not_replayed(caplog):
    async with running_server() as server, server.call() as call:
        await call.silence(200)
        session = next(iter(server.services.sessions))
        frames, now_ms = session.metrics.frames_in, session.now_ms
        await call.send_raw(encode_inbound(Media(call.seq, call.stream_sid, "inbound", 99, 9_000, SILENCE)))
        await call.send_raw(encode_inbound(Media(call.seq - 3, call.stream_sid, "inbound", 99, 9_020, SILENCE)))
        await call.sync()
        assert (session.metrics.frames_in, session.now_ms) == (frames, now_ms)  # the timeline did not move
        assert session.conn.errors["sequence_out_of_order"] == 2
        await call.dtmf("1")  # the call goes on
        assert [e.to for e in server.of_type(call.call_sid, TransitionEvent)] == ["menu", "billing"]
    lines = logged(caplog, "rejected Twilio message (sequence_out_of_order")
    assert len(lines) == 2 and all(r.call_sid == call.call_sid for r in lines)


async def test_a_sequence_gap_is_counted_and_the_audio_kept(caplog):
    async with running_server() as server, server.call() as call:
        await call.silence(100)
        session = next(iter(server.services.sessions))
        frames = session.metrics.frames_in
        call.seq += 10  # ten messages lost on the way
        await call.silence(100)
        assert session.metrics.frames_in == frames + 5
        assert session.conn.errors["sequence_gap"] == 1


async def test_a_mark_we_never_sent_is_counted_and_ignored(caplog):
    async with running_server() as server, server.call() as call:
        await call.silence(200)
        await call.mark("never-sent")
        session = next(iter(server.services.sessions))
        assert session.conn.errors["unknown_mark"] == 1
        await call.silence(6000)  # the greeting's real marks still finish it
        await call.dtmf("2")
        assert [e.to for e in server.of_type(call.call_sid, TransitionEvent)] == ["menu", "support"]
    [line] = logged(caplog, "rejected Twilio message (unknown_mark")
    assert line.call_sid == call.call_sid and "never-sent" in line.getMessage()


async def test_messages_after_stop_are_not_read(caplog):
    async with running_server() as server, server.call() as call:
        await call.silence(100)
        await call.stop()
        await call.send_raw(encode_inbound(Mark(call.seq + 1, call.stream_sid, "late")))
        event = await ended(server, call.call_sid)
    assert event.reason == "stop"


# --- Twilio closes the socket mid-utterance -------------------------------------------


class ListArchive:
    def __init__(self) -> None:
        self.records = []

    async def enqueue(self, record):
        self.records.append(record)


@pytest.mark.parametrize("how", ["abort", "close"])
async def test_the_socket_closing_mid_utterance_ends_and_archives_the_call(how, caplog):
    caplog.set_level(logging.INFO)
    archive = ListArchive()
    stt = ScriptedSpeechToText(["never finished"])
    async with running_server(stt=stt, archive=archive) as server:
        async with server.call({"From": "+15551230000"}) as call:
            await call.silence(6000)  # the greeting plays out
            speech = caller_audio(3000, [(0, 3000)])  # the caller talks on and on
            await call.audio(speech[: 8 * 1200])
            stt.streams[0].emit(Transcript("I would like", False, 0.5, 6000, 7200))
            await call.audio(speech[8 * 1200 : 8 * 1500])
            if how == "abort":
                call.ws.transport.abort()  # no stop, no close frame: the TCP connection is gone
            else:
                await call.ws.close()  # a close frame, but no stop
            event = await ended(server, call.call_sid)
        for _ in range(100):
            if archive.records:
                break
            await asyncio.sleep(0.02)
    assert event.reason == "socket_closed"
    [record] = archive.records
    assert record.call_sid == call.call_sid and record.end_reason == "socket_closed"
    stereo = record.recording.stereo()
    assert abs(stereo[8 * 6100 : 8 * 7400, 0].astype(float)).max() > 1000  # the caller's unfinished turn
    assert abs(stereo[8 * 200 : 8 * 3000, 1].astype(float)).max() > 1000  # the greeting
    partials = [e for e in record.events if isinstance(e, TranscriptPartialEvent)]
    assert [p.text for p in partials] == ["I would like"]  # what was recognised of it
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    [line] = logged(caplog, "call ended (socket_closed)")
    assert line.call_sid == call.call_sid


# --- replay paced faster than real time ----------------------------------------------


def test_the_replay_server_budget_scales_with_speed() -> None:
    base = load_settings({}, env_file=None)
    assert paced_budget(base, None) is base  # lockstep: exempt anyway
    assert paced_budget(base, 2.0).max_messages_per_s == 500  # never lowered
    assert paced_budget(base, 20.0).max_messages_per_s == 2000
    assert paced_budget(base.with_overrides(max_messages_per_s=0), 20.0).max_messages_per_s == 0


async def test_a_replay_at_twenty_times_real_time_is_not_rate_limited(caplog):
    before = malformed("rate_limited")
    [result] = await replay(
        find_fixtures([CALLS / "silence_fallback.yaml"]), load_settings({}, env_file=None), speed=20.0
    )
    assert result.passed, (result.failures, result.error)
    assert malformed("rate_limited") == before
    assert not logged(caplog, "messages/s from Twilio's side")
