"""Call recordings: both tracks on the media timeline."""

import numpy as np

from media import mulaw
from media.recording import CallRecording

TONE = mulaw.encode((8000 * np.sin(np.arange(160) / 3)).astype(np.int16))


def test_caller_frames_are_placed_by_timestamp_and_gaps_stay_silent():
    r = CallRecording()
    r.caller(0, TONE)
    r.caller(20, TONE)
    r.caller(60, TONE)  # one frame lost at 40 ms
    assert r.duration_ms == 80
    audio = r.caller_mulaw()
    assert audio[:320] == TONE * 2
    assert audio[320:480] == b"\xff" * 160
    assert audio[480:] == TONE
    assert r.caller_mulaw(20, 40) == TONE


def test_agent_audio_lands_where_it_played():
    r = CallRecording()
    r.caller(0, TONE)
    r.agent(100, TONE)
    stereo = r.stereo()
    assert stereo.shape == (8 * 120, 2)
    assert not stereo[: 8 * 100, 1].any()
    assert stereo[8 * 100 :, 1].any()
    assert (stereo[:160, 0] == mulaw.decode_array(TONE)).all()


def test_a_cap_truncates_instead_of_growing_without_bound():
    r = CallRecording(max_ms=30)
    r.caller(0, TONE)
    r.caller(20, TONE)
    assert r.truncated and r.duration_ms == 30
