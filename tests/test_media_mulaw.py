import warnings
from types import ModuleType

import numpy as np
import pytest

from media import mulaw

ALL_CODES = bytes(range(256))
ALL_SAMPLES = np.arange(-32768, 32768, dtype=np.int16)


@pytest.fixture(scope="module")
def audioop() -> ModuleType:
    """The reference codec: stdlib audioop on ≤ 3.12, the audioop-lts package on ≥ 3.13."""
    with warnings.catch_warnings():
        # 3.11 and 3.12 warn "'audioop' is deprecated and slated for removal in Python 3.13"
        warnings.simplefilter("ignore", DeprecationWarning)
        return pytest.importorskip("audioop")


def test_decode_all_codes_bit_exact(audioop: ModuleType) -> None:
    assert mulaw.decode(ALL_CODES) == audioop.ulaw2lin(ALL_CODES, 2)


def test_encode_all_samples_bit_exact(audioop: ModuleType) -> None:
    pcm = ALL_SAMPLES.astype("<i2").tobytes()
    expected = audioop.lin2ulaw(pcm, 2)
    assert mulaw.encode(pcm) == expected
    assert mulaw.encode(ALL_SAMPLES) == expected


def test_negative_zero_collapses_like_audioop(audioop: ModuleType) -> None:
    # 0x7F ("-0") and 0xFF ("+0") both decode to 0, which encodes to 0xFF.
    for code in (0x7F, 0xFF):
        assert audioop.lin2ulaw(audioop.ulaw2lin(bytes([code]), 2), 2) == b"\xff"


def test_decode_array_matches_decode() -> None:
    samples = mulaw.decode_array(ALL_CODES)
    assert samples.dtype == np.int16
    assert samples.tobytes() == mulaw.decode(ALL_CODES)
    assert mulaw.DECODE_TABLE[0xFF] == 0 and mulaw.DECODE_TABLE[0x7F] == 0
    assert mulaw.DECODE_TABLE[0x00] == -32124 and mulaw.DECODE_TABLE[0x80] == 32124


def test_encode_decode_round_trip_on_codes() -> None:
    round_trip = mulaw.encode(mulaw.decode(ALL_CODES))
    changed = {c: round_trip[c] for c in range(256) if round_trip[c] != c}
    assert changed == {0x7F: 0xFF}


def test_decode_encode_round_trip_within_quantisation() -> None:
    x = ALL_SAMPLES.astype(np.int64)
    y = mulaw.decode_array(mulaw.encode(ALL_SAMPLES)).astype(np.int64)
    err = np.abs(y - x)
    inside = np.abs(x) <= 32124  # the largest mu-law magnitude; beyond it G.711 clips
    # G.711 keeps 4 mantissa bits per segment: the step is |x|/16 at most, the
    # error half a step, plus 4 from dropping the two low bits (14-bit codec).
    assert np.all(err[inside] <= (np.abs(x[inside]) + 132) // 32 + 4)
    assert np.all(err[~inside] <= 32768 - 32124)
    assert np.all(np.diff(y) >= 0)  # quantisation is monotonic


def test_inputs_bytes_ndarray_and_empty() -> None:
    samples = np.array([0, 1000, -1000, 32767, -32768], dtype=np.int16)
    assert mulaw.encode(samples) == mulaw.encode(samples.astype("<i2").tobytes())
    assert mulaw.encode(samples.astype(">i2")) == mulaw.encode(samples)  # byte order handled
    assert mulaw.encode(samples[::2]) == mulaw.encode(samples[::2].copy())  # strided view
    assert mulaw.encode(b"") == b"" and mulaw.decode(b"") == b""
    assert mulaw.decode(bytearray(b"\xff\x00")) == mulaw.decode(b"\xff\x00")
    assert len(mulaw.decode(bytes(160))) == 320
