import math

import numpy as np
import pytest
import webrtcvad
from synth import noise, pcm, voiced

from agent.bench.bargein_audio import floor_frames, noise_clip
from media import mulaw
from media.frames import split_frames
from media.turns import SpeechEnded, SpeechStarted, TurnDetector
from media.vad import VoiceActivity, frame_dbfs

RATE = 8000


def frames(x: np.ndarray, frame_ms: int = 20) -> list[bytes]:
    data, size = pcm(x), 2 * RATE * frame_ms // 1000
    return [data[i : i + size] for i in range(0, len(data) - size + 1, size)]


def test_frame_dbfs_levels() -> None:
    assert frame_dbfs(bytes(320)) == -math.inf
    assert frame_dbfs(pcm(np.full(160, -32768.0))) == 0.0
    assert frame_dbfs(pcm(np.tile([1000.0, -1000.0], 80))) == pytest.approx(
        20 * math.log10(1000 / 32768)
    )
    sine = 32767 * np.sin(2 * np.pi * 400 * np.arange(160) / RATE)  # whole periods
    assert frame_dbfs(pcm(sine)) == pytest.approx(-3.01, abs=0.01)
    assert frame_dbfs(pcm(noise(160, -50.0))) == pytest.approx(-50.0, abs=1.0)


def test_voiced_signal_is_speech() -> None:
    # after 300 ms of a -60 dBFS line: a second of steady vowel is speech throughout
    vad = VoiceActivity()
    verdicts = [vad.is_speech(f) for f in frames(np.concatenate([noise(2400, -60.0), voiced(8000, -25.0)]))]
    assert not any(verdicts[:15]) and all(verdicts[16:])
    assert all(VoiceActivity(warmup_ms=0).is_speech(f) for f in frames(voiced(8000, -25.0))[1:])
    # a sound present from the first frame is the line's floor (the warm-up measures it)
    assert not any(VoiceActivity().is_speech(f) for f in frames(voiced(8000, -25.0)))


def test_line_noise_coming_on_fools_webrtcvad_but_not_the_gate() -> None:
    # Digital silence, then -50 dBFS hiss (comfort noise switching on, a line
    # getting noisier): webrtcvad takes seconds to adapt and calls it speech.
    hush = frames(noise(8000, -90.0, seed=2))
    hiss = frames(noise(8000, -50.0))
    raw = webrtcvad.Vad(2)
    assert sum(raw.is_speech(f, RATE) for f in hush + hiss) > 45  # of 100
    vad = VoiceActivity()
    assert not any(vad.is_speech(f) for f in hush + hiss)


def test_comfort_noise_and_silence_are_not_speech() -> None:
    vad = VoiceActivity()
    hum = 32768 * 10 ** (-50 / 20) * np.sqrt(2) * np.sin(2 * np.pi * 60 * np.arange(8000) / RATE)
    comfort = noise(8000, -52.0, seed=1) + hum
    assert not any(vad.is_speech(f) for f in frames(comfort))
    assert not any(vad.is_speech(f) for f in frames(np.zeros(8000)))


def test_voice_below_the_floor_is_not_speech() -> None:
    quiet = frames(np.concatenate([noise(8000, -90.0, seed=2), voiced(4000, -50.0)]))
    raw = webrtcvad.Vad(2)
    assert all([raw.is_speech(f, RATE) for f in quiet][50:])  # webrtcvad hears a voice
    assert not any(VoiceActivity().is_speech(f) for f in quiet)  # too faint to be the caller


def test_energy_floor_is_a_strict_threshold() -> None:
    frame = frames(voiced(1600, -30.0))[5]
    level = frame_dbfs(frame)
    assert VoiceActivity(energy_floor_dbfs=level - 0.01, warmup_ms=0).is_speech(frame)
    assert not VoiceActivity(energy_floor_dbfs=level + 0.01, warmup_ms=0).is_speech(frame)


@pytest.mark.parametrize("frame_ms", [10, 20, 30])
def test_frame_lengths_and_rates(frame_ms: int) -> None:
    for rate in (8000, 16000):
        vad = VoiceActivity(sample_rate=rate, warmup_ms=0)
        signal = voiced(rate // 2, -25.0)
        size = 2 * rate * frame_ms // 1000
        chunks = [pcm(signal)[i : i + size] for i in range(size * 2, size * 6, size)]
        assert all(vad.is_speech(c) for c in chunks)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="aggressiveness"):
        VoiceActivity(aggressiveness=4)
    with pytest.raises(ValueError, match="8000"):
        VoiceActivity(sample_rate=11025)
    with pytest.raises(ValueError, match="got 318 bytes"):
        VoiceActivity().is_speech(bytes(318))


def caller_audio(
    onset_ms: int, speech_ms: int, total_ms: int, extra: np.ndarray | None = None
) -> bytes:
    """Mu-law telephone audio: a -60 dBFS noise floor with one voiced burst."""
    x = noise(total_ms * 8, -60.0, seed=onset_ms)
    a, b = onset_ms * 8, (onset_ms + speech_ms) * 8
    ramp = np.arange(b - a)
    # 15 ms attack, 30 ms release
    envelope = np.minimum(1.0, np.minimum(ramp / 120, (b - a - ramp) / 240))
    if b > a:
        x[a:b] += voiced(b - a, -22.0) * envelope
    if extra is not None:
        x[: len(extra)] += extra
    return mulaw.encode(np.clip(np.round(x), -32768, 32767).astype(np.int16))


def detect(codes: bytes) -> list[SpeechStarted | SpeechEnded]:
    """VAD and turn detector wired as agent/session.py wires them."""
    vad = VoiceActivity()
    turns = TurnDetector(voicing=vad.periodic)
    events = []
    for i, frame in enumerate(split_frames(codes)):
        event = turns.process(vad.is_speech(mulaw.decode(frame)), 20 * (i + 1))
        if event is not None:
            events.append(event)
    return events


@pytest.mark.parametrize("onset_ms", [500, 507, 513, 530])
def test_turn_detection_on_synthetic_speech(onset_ms: int) -> None:
    events = detect(caller_audio(onset_ms, 800, 2500))
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded]
    started, ended = events
    assert isinstance(started, SpeechStarted) and isinstance(ended, SpeechEnded)
    assert 0 < started.at_ms - onset_ms <= 100  # barge-in budget: detection well inside 120 ms
    assert abs(started.onset_ms - onset_ms) <= 20
    assert abs(ended.last_voiced_ms - (onset_ms + 800)) <= 40
    assert ended.at_ms == ended.last_voiced_ms + 700 and not ended.too_short


def test_clicks_and_short_bursts_do_not_start_a_turn() -> None:
    extra = np.zeros(16000)
    extra[4000:4040] = 30000  # a 5 ms line pop
    extra[8000:8320] = noise(320, -20.0)  # a 40 ms crackle
    extra[12000] = -32000  # one-sample click
    assert detect(caller_audio(0, 0, 2000, extra)) == []


# --- the call's noise floor (bench `bargein`'s noise fixtures, agent/bench/bargein_audio.py) ---


def mulaw_of(x: np.ndarray) -> bytes:
    return mulaw.encode(np.clip(np.round(x), -32768, 32767).astype(np.int16))


def floor_after(codes: bytes, vad: VoiceActivity | None = None) -> float:
    vad = vad or VoiceActivity()
    for frame in split_frames(codes):
        vad.is_speech(mulaw.decode(frame))
    return vad.noise_floor_dbfs


def test_noise_floor_follows_the_line() -> None:
    # the warm-up measures hiss present from the start of the call
    vad = VoiceActivity()
    assert vad.noise_floor_dbfs == pytest.approx(-90.0)
    assert floor_after(mulaw_of(noise(1600, -40.0)), vad) == pytest.approx(-40.0, abs=1.5)
    # it goes away: a quarter of the way down per frame, at the line's floor within a second
    assert floor_after(mulaw_of(noise(8000, -60.0, seed=1)), vad) == pytest.approx(-60.0, abs=1.5)
    # a lost packet (one frame of digital silence) lowers it 1.25 dB, not to nothing
    before = vad.noise_floor_dbfs
    vad.is_speech(bytes(320))
    assert vad.noise_floor_dbfs == pytest.approx(before + 10 * math.log10(0.75), abs=0.01)
    # a line getting noisier mid-call: the floor rises 10 dB/s, never above the level
    vad = VoiceActivity()
    floor_after(mulaw_of(noise(4000, -60.0)), vad)
    start = vad.noise_floor_dbfs
    assert floor_after(mulaw_of(noise(8000, -30.0, seed=3)), vad) == pytest.approx(start + 10.0, abs=1.0)
    assert floor_after(mulaw_of(noise(40000, -30.0, seed=4)), vad) == pytest.approx(-30.0, abs=1.5)


def test_floor_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="cannot be negative"):
        VoiceActivity(margin_db=-1.0)
    with pytest.raises(ValueError, match="cannot be negative"):
        VoiceActivity(warmup_ms=-20)


def detect_after_floor(codes: bytes) -> list[SpeechStarted | SpeechEnded]:
    """As bench `bargein`'s calls: one frame of the -62 dBFS line floor, then `codes`."""
    return detect(floor_frames(1)[:160] + codes)


@pytest.mark.parametrize(
    ("kind", "level"),
    [("hiss", -50.0), ("hiss", -40.0), ("hiss", -30.0), ("hum", -30.0), ("hum", -20.0),
     ("clicks", -20.0), ("clicks", -10.0)],
)
def test_line_noise_from_the_start_of_a_call_never_starts_a_turn(kind: str, level: float) -> None:
    for seed in range(3):
        assert detect_after_floor(noise_clip(kind, level, seed).audio) == []


@pytest.mark.parametrize(
    ("kind", "level", "voice", "onset_frame_ms"),
    [("hiss", -40.0, -32.0, 1040), ("hiss", -30.0, -20.0, 1020), ("hum", -30.0, -20.0, 1020)],
)
def test_speech_over_line_noise_starts_a_turn_in_two_frames(
    kind: str, level: float, voice: float, onset_frame_ms: int
) -> None:
    # 1 s of line noise, then four 200 ms syllables of voice 8-10 dB over it from
    # 1000 ms (media time 1020: one lead frame), 60 ms apart: SpeechStarted at the
    # end of the voice's second frame, one turn through to the last syllable. At
    # 8 dB over -40 dBFS hiss the 15 ms attack leaves the first frame under the
    # floor's 6 dB margin: the run starts a frame later.
    x = mulaw.decode_array(noise_clip(kind, level, 0).audio).astype(np.float64)[: 3 * RATE]
    ramp = np.arange(1600)
    envelope = np.minimum(1.0, np.minimum(ramp / 120, (1600 - ramp) / 240))  # 15 ms attack, 30 ms release
    for k in range(4):
        a = RATE + k * 2080
        x[a : a + 1600] += voiced(1600, voice) * envelope
    events = detect_after_floor(mulaw_of(x))
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded]
    assert events[0] == SpeechStarted(at_ms=onset_frame_ms + 40, onset_ms=onset_frame_ms)
    ended = events[1]
    assert isinstance(ended, SpeechEnded) and not ended.too_short
    assert 1020 + 3 * 260 + 140 <= ended.last_voiced_ms <= 1020 + 3 * 260 + 200


def test_a_noise_step_mid_call_starts_no_turn() -> None:
    # For 60 ms a new steady noise looks like a vowel's onset to webrtcvad and
    # to the floor (both pass every frame here); it is not periodic, so no turn,
    # and the floor absorbs it (10 dB/s). Hum 30 dB over the line from 600 ms.
    hum = mulaw.decode_array(noise_clip("hum", -30.0, 0, ms=6000).audio).astype(np.float64)
    codes = mulaw_of(np.concatenate([noise(4800, -62.0), hum]))
    vad = VoiceActivity()
    gated = [vad.is_speech(mulaw.decode(frame)) for frame in split_frames(codes)]
    assert all(gated[30:33])  # the step passes webrtcvad and the floor
    assert not any(gated[-50:])  # and is the floor three seconds later
    assert detect(codes) == []
    # without the voicing requirement the step is a (false) turn
    vad, turns = VoiceActivity(), TurnDetector()
    events = [turns.process(vad.is_speech(mulaw.decode(f)), 20 * (i + 1)) for i, f in enumerate(split_frames(codes))]
    assert [type(e) for e in events if e is not None] == [SpeechStarted, SpeechEnded]


@pytest.mark.parametrize(("kind", "level"), [("cough", -35.0), ("cough", -25.0), ("breath", -45.0), ("breath", -35.0)])
def test_coughs_and_breaths_start_no_turn(kind: str, level: float) -> None:
    # loud, abrupt, and speech to webrtcvad and the floor: but never periodic
    for seed in range(3):
        assert detect_after_floor(noise_clip(kind, level, seed).audio) == []


def periodic_frames(x: np.ndarray) -> list[bool]:
    vad, out = VoiceActivity(warmup_ms=0), []
    for frame in frames(x):
        vad.is_speech(frame)
        out.append(vad.periodic())
    return out


@pytest.mark.parametrize("f0", [85.0, 130.0, 220.0, 380.0])
def test_voice_is_periodic(f0: float) -> None:
    verdicts = periodic_frames(voiced(8000, -30.0, f0=f0) + noise(8000, -45.0))
    assert verdicts[0] is False  # the call's first frame: nothing before it
    assert all(verdicts[1:])


def test_noise_hum_clicks_and_silence_are_not_periodic() -> None:
    t = np.arange(8000) / RATE
    hum = sum(np.sin(2 * np.pi * 60 * k * t) / k for k in range(1, 11)) * 1000.0
    clicks = noise(8000, -62.0)
    clicks[::1200] += 30000.0
    for x in (noise(8000, -30.0), np.asarray(hum), clicks, np.zeros(8000)):
        assert not any(periodic_frames(x))
