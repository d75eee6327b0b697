import numpy as np
import pytest

from media.resample import Resampler, resample

PAIRS = [(8000, 16000), (16000, 8000), (22050, 8000), (44100, 8000), (8000, 8000), (48000, 8000)]


def tone(freq: float, rate: int, seconds: float = 0.5, amplitude: float = 10000.0) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return np.round(amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


@pytest.mark.parametrize(("src", "dst"), PAIRS)
def test_output_length(src: int, dst: int) -> None:
    for n in (0, 1, 2, 3, 7, 160, 441, 1001):
        out = resample(np.ones(n, dtype=np.int16), src, dst)
        assert out.dtype == np.int16
        assert abs(len(out) - n * dst / src) <= 1, n


@pytest.mark.parametrize(("src", "dst"), PAIRS)
def test_440_hz_survives(src: int, dst: int) -> None:
    out = resample(tone(440, src), src, dst)
    expected = 10000 * np.sin(2 * np.pi * 440 * np.arange(len(out)) / dst)
    edge = dst // 50  # the signal starts and stops abruptly: skip 20 ms at each end
    err = np.abs(out[edge:-edge] - expected[edge:-edge])
    assert err.max() < 0.0005 * 10000  # < -66 dB: in phase, unit gain, no ripple


def test_passband_is_flat_to_telephone_band() -> None:
    for freq in (300, 1000, 3000, 3400):
        out = resample(tone(freq, 22050), 22050, 8000)[200:-200].astype(np.float64)
        gain = np.sqrt(np.mean(out**2)) / (10000 / np.sqrt(2))
        assert 0.99 < gain < 1.01, freq


def test_6khz_tone_does_not_alias_into_8khz() -> None:
    out = resample(tone(6000, 16000), 16000, 8000)
    # unfiltered decimation would fold it to 2 kHz at full amplitude
    assert np.abs(out[100:-100]).max() <= 10  # below -60 dB


def test_dc_stays_steady_when_upsampling() -> None:
    out = resample(np.full(800, 10000, dtype=np.int16), 8000, 16000)
    assert np.all(out[100:-100] == 10000)


@pytest.mark.parametrize(("src", "dst"), PAIRS)
def test_streaming_in_odd_chunks_equals_one_shot(src: int, dst: int) -> None:
    rng = np.random.default_rng(src + dst)
    signal = rng.integers(-20000, 20000, size=src // 4, dtype=np.int16)
    resampler = Resampler(src, dst)
    pieces, i = [], 0
    while i < len(signal):
        size = int(rng.integers(0, 333))  # includes empty chunks
        pieces.append(resampler.process(signal[i : i + size]))
        i += size
    pieces.append(resampler.flush())
    assert np.array_equal(np.concatenate(pieces), resample(signal, src, dst))


def test_identity_rate_is_a_copy() -> None:
    signal = tone(440, 8000, 0.1)
    out = resample(signal, 8000, 8000)
    assert np.array_equal(out, signal) and out is not signal
    r = Resampler(8000, 8000)
    assert np.array_equal(r.process(signal), signal)
    assert len(r.flush()) == 0


def test_loud_input_clips_instead_of_wrapping() -> None:
    square = np.tile(np.array([32767] * 8 + [-32768] * 8, dtype=np.int16), 100)
    out = resample(square, 8000, 16000)  # Gibbs overshoot reaches ±42 000
    phase = np.arange(len(out)) % 32  # 16 output samples high, then 16 low
    assert np.all(out[(phase >= 2) & (phase < 14)] > 16000)  # wrapping would go negative
    assert np.all(out[(phase >= 18) & (phase < 30)] < -16000)
    assert out.max() == 32767 and out.min() == -32768


def test_rejects_bad_rates() -> None:
    with pytest.raises(ValueError, match="positive"):
        Resampler(0, 8000)
