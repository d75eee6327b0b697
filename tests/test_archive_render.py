"""The archive's files from a call record, and archive jobs as bytes (pure)."""

from __future__ import annotations

import io
import wave
from datetime import date

import numpy as np
import orjson
import pytest
from archive_helpers import CALL_SID, sample_record

from agent.archive_jobs import (
    JobDecodeError,
    decode_job,
    encode_job,
    event_from_dict,
    peek_call_sid,
)
from agent.archive_render import (
    CALL_FILES,
    call_folder,
    record_folder,
    render_call,
    render_vtt,
    safe_part,
    transcript_turns,
)
from agent.events import CallStartedEvent, TransitionEvent
from agent.ports import CallRecord, RecordingJob
from media.wav import _parse


def test_files_are_the_contract_in_order_with_call_json_last():
    files = render_call(sample_record())
    assert tuple(files) == CALL_FILES == ("audio.wav", "transcript.json", "transcript.vtt", "call.json")


def test_the_folder_is_the_utc_day_and_the_call_and_a_continuation_gets_its_own():
    record = sample_record()
    assert record_folder(record) == f"2024/05/01/{CALL_SID}"
    later = sample_record(started_at_ms=record.started_at_ms - 1)  # 23:59:59.999 the day before
    assert record_folder(later).startswith("2024/04/30/")
    resumed = sample_record(continuation=True)
    assert record_folder(resumed) == f"2024/05/01/{CALL_SID}/MZ{'2' * 32}"


def test_sids_from_outside_cannot_climb_out_of_the_folder():
    assert safe_part("../../etc") == "______etc"
    assert call_folder("CA/../x", date(2024, 5, 1)) == "2024/05/01/CA____x"
    assert safe_part("") == "unknown"


def test_audio_is_stereo_8k_caller_left_agent_right_time_aligned():
    files = render_call(sample_record())
    with wave.open(io.BytesIO(files["audio.wav"])) as w:
        assert (w.getnchannels(), w.getframerate(), w.getsampwidth()) == (2, 8000, 2)
    samples = _parse(files["audio.wav"]).samples
    caller, agent = samples[:, 0].astype(float), samples[:, 1].astype(float)
    assert len(samples) == 4000 * 8
    assert np.abs(caller[: 8 * 1000]).max() < 50  # silent until the caller speaks at 1.0 s
    assert np.abs(caller[8 * 1000 : 8 * 1800]).max() > 4000
    assert np.abs(agent[: 8 * 1200]).max() > 4000  # the greeting up to the barge-in
    assert np.abs(agent[8 * 1200 : 8 * 2000]).max() < 50  # cleared: nothing
    assert np.abs(agent[8 * 2000 : 8 * 3000]).max() > 4000


def test_transcript_turns_keep_what_was_heard_of_an_interrupted_prompt():
    turns = transcript_turns(sample_record())
    assert [t["speaker"] for t in turns] == ["agent", "caller", "agent"]
    cut = turns[0]
    assert cut["interrupted"] is True
    assert cut["text"] == "Thanks for calling Acme. Say billing or agent."
    assert cut["heard_text"] == "Thanks for calling" and cut["heard_ms"] == 1200
    assert turns[1] == {"speaker": "caller", "start_ms": 1000, "end_ms": 1800, "text": "agent <now> & then", "confidence": 0.91}
    assert turns[2]["interrupted"] is False and turns[2]["text"] == "Transferring you."
    body = orjson.loads(render_call(sample_record())["transcript.json"])
    assert body["call_sid"] == CALL_SID and body["turns"] == turns


def test_webvtt_cues_with_voices_escaped_text_and_valid_times():
    vtt = render_call(sample_record())["transcript.vtt"].decode()
    assert vtt.startswith("WEBVTT\n\n")
    assert "1\n00:00:00.000 --> 00:00:01.200\n<v Agent>Thanks for calling [interrupted]\n" in vtt
    assert "2\n00:00:01.000 --> 00:00:01.800\n<v Caller>agent &lt;now&gt; &amp; then\n" in vtt
    assert "3\n00:00:02.000 --> 00:00:03.000\n<v Agent>Transferring you.\n" in vtt
    # a zero-length turn still gets an end after its start; an empty one gets no cue
    odd = render_vtt(
        [
            {"speaker": "caller", "start_ms": 3_723_004, "end_ms": 3_723_004, "text": "hi"},
            {"speaker": "caller", "start_ms": 10, "end_ms": 20, "text": ""},
        ]
    )
    assert odd == "WEBVTT\n\n1\n01:02:03.004 --> 01:02:03.005\n<v Caller>hi\n"


def test_call_json_has_metadata_path_slots_latencies_and_every_event():
    meta = orjson.loads(render_call(sample_record())["call.json"])
    assert meta["call_sid"] == CALL_SID
    assert meta["from"] == "+1555***0000" and meta["to"] == "+1555***0001"
    assert meta["started_at"] == "2024-05-01T00:00:00.000Z"
    assert meta["path"] == ["menu", "operator"]
    assert meta["outcome"] == "transfer:+14155550100" and meta["end_reason"] == "call_updated"
    assert meta["slots"] == {"account": "***"}
    assert meta["latency"] == {"bargein_ms": [60], "response_ms": [3.25]}
    assert meta["malformed"] == {"bad_json": 2}
    assert meta["turns"] == {"caller": 1, "agent": 2, "interrupted": 1}
    assert meta["recording"]["channels"] == {"left": "caller", "right": "agent"}
    assert meta["recording"]["duration_ms"] == 4000
    assert meta["events"][0]["type"] == "call.started"
    assert meta["events"][0]["from"] == "+1555***0000"
    assert meta["files"] == list(CALL_FILES)


def test_a_call_job_round_trips_through_bytes():
    record = sample_record(continuation=True)
    data = encode_job(record)
    back = decode_job(data)
    assert isinstance(back, CallRecord)
    assert back.recording.caller_mulaw() == record.recording.caller_mulaw()
    assert back.recording.agent_mulaw() == record.recording.agent_mulaw()
    assert back.events == record.events
    assert (back.path, back.bargein_ms, back.response_ms, back.continuation) == (
        record.path, record.bargein_ms, record.response_ms, True,
    )
    assert render_call(back) == render_call(record)
    assert peek_call_sid(data) == CALL_SID
    # mu-law on the wire: about half the rendered 16-bit stereo WAV
    assert len(data) < len(render_call(record)["audio.wav"]) * 0.6


def test_a_recording_job_round_trips():
    job = RecordingJob(CALL_SID, "RE" + "a" * 32, "AC" + "b" * 32, "voicemail", "2024-05-01", 12, 1, "RecordVerb")
    assert decode_job(encode_job(job)) == job
    assert peek_call_sid(encode_job(job)) == CALL_SID


@pytest.mark.parametrize(
    "data",
    [b"", b"nope", b"CSJOB1\n\x00\x00\x00\x05{bad}", b"CSJOB1\n\x00\x00\x00\x02{}",
     b'CSJOB1\n\x00\x00\x00\x1a{"kind":"x","blobs":[]}'],
)
def test_damaged_jobs_fail_with_a_decode_error(data):
    with pytest.raises(JobDecodeError):
        decode_job(data)
    truncated = encode_job(sample_record())[:-10]
    with pytest.raises(JobDecodeError, match="truncated"):
        decode_job(truncated)


def test_events_come_back_with_from_renamed_and_unknown_keys_ignored():
    started = event_from_dict({"type": "call.started", "call_sid": "CA1", "t": 5, "from": "+1", "extra": 1})
    assert started == CallStartedEvent(call_sid="CA1", t=5, from_="+1")
    moved = event_from_dict(TransitionEvent(call_sid="CA1", t=1, from_="a", to="b").to_dict())
    assert moved == TransitionEvent(call_sid="CA1", t=1, from_="a", to="b")
