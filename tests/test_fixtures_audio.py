"""The shipped fixture calls: well formed, audible, and exactly regenerable."""

from __future__ import annotations

import importlib
import re
import sys
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CALLS = ROOT / "fixtures" / "calls"
FIXTURES = sorted(CALLS.glob("*.yaml"))
KEYS = {"description", "audio", "params", "caller", "events", "expect", "dial_status"}
OUTCOME = re.compile(r"^(hangup|voicemail|transfer:(\+\d{8,15}|sip:\S+)|conference:\S+)$")


def load_generator() -> Any:
    # importable by name: the generator builds each fixture in a spawned process
    if str(ROOT / "fixtures") not in sys.path:
        sys.path.insert(0, str(ROOT / "fixtures"))
    return importlib.import_module("make_calls")


def read_wav(path: Path) -> tuple[wave._wave_params, np.ndarray]:
    with wave.open(str(path), "rb") as w:
        return w.getparams(), np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


def test_the_required_calls_are_shipped() -> None:
    names = {p.stem for p in FIXTURES}
    assert {
        "billing_dtmf",
        "spoken_support",
        "bargein_agent",
        "silence_fallback",
        "unrecognised_retries",
        "transfer_agent",
        "transfer_no_answer",
    } <= names
    assert names == set(load_generator().FIXTURES)


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_fixture_is_well_formed(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict) and set(doc) <= KEYS
    params, samples = read_wav(path.parent / doc["audio"])
    assert (params.framerate, params.nchannels, params.sampwidth) == (8000, 1, 2)
    length_ms = len(samples) // 8

    assert all(isinstance(k, str) and isinstance(v, str) for k, v in doc["params"].items())
    times = [e["at_ms"] for e in doc.get("events", [])]
    assert times == sorted(times) and all(0 <= t < length_ms for t in times)
    assert all(re.fullmatch(r"[0-9*#A-D]", e["dtmf"]) for e in doc.get("events", []))
    for said in doc.get("caller", []):
        assert set(said) == {"at_ms", "say", "voice", "rate"}
        assert 0 <= said["at_ms"] < length_ms - 1000

    expect = doc["expect"]
    assert OUTCOME.match(expect["outcome"]), expect["outcome"]
    assert expect["path"][0] == "menu"
    assert isinstance(expect["transcript"], str)
    assert expect["transcript"] == " ".join(s["say"] for s in doc.get("caller", []))


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_audio_has_a_line_noise_floor_and_speech_where_the_caller_talks(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    _, samples = read_wav(path.parent / doc["audio"])
    frames = samples[: len(samples) // 160 * 160].astype(np.float64).reshape(-1, 160)
    rms = np.sqrt((frames**2).mean(axis=1))
    assert rms.min() > 5  # never digital silence
    assert np.median(rms) < 100  # mostly a quiet line
    for said in doc.get("caller", []):
        first = said["at_ms"] // 20
        assert rms[first : first + 50].max() > 1000  # the caller is heard within a second


def test_regenerating_a_fixture_gives_identical_bytes(tmp_path: Path) -> None:
    load_generator().main(["--only", "bargein_agent", "--out", str(tmp_path)])
    for suffix in (".wav", ".yaml"):
        fresh = (tmp_path / f"bargein_agent{suffix}").read_bytes()
        assert fresh == (CALLS / f"bargein_agent{suffix}").read_bytes(), suffix
