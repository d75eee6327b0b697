"""Fixture call files: loading, errors, expectations and WER."""

import re

import pytest

from agent.fixtures import (
    CallResult,
    Expectation,
    FixtureError,
    check_expectations,
    load_fixture,
    percentile,
    word_error_rate,
)


def write(tmp_path, text, wav=True):
    if wav:
        (tmp_path / "a.wav").write_bytes(b"RIFF")
    path = tmp_path / "call.yaml"
    path.write_text(text)
    return path


def test_loads_the_design_md_example(tmp_path):
    path = write(
        tmp_path,
        """
audio: a.wav
params: {From: "+15551230000"}
events:
  - {at_ms: 4200, dtmf: "1"}
  - {at_ms: 900, dtmf: "23"}
expect:
  outcome: hangup
  path: [menu, billing, billing_done]
  transcript: "billing"
  max_bargein_ms: 150
""",
    )
    f = load_fixture(path)
    assert f.name == "call"
    assert f.params == {"From": "+15551230000"}
    assert [(e.at_ms, e.digits) for e in f.events] == [(900, "23"), (4200, "1")]
    assert f.expect == Expectation("hangup", ("menu", "billing", "billing_done"), "billing", 150)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("params: {}", "`audio`"),
        ("audio: missing.wav", "not found"),
        ("audio: a.wav\nexpcet: {}", "unknown keys"),
        ("audio: a.wav\nevents: [{at_ms: 1, dtmf: x}]", "not DTMF"),
        ("audio: a.wav\nevents: [{dtmf: '1'}]", "events[0]"),
        ("audio: a.wav\nexpect: {outcom: hangup}", "unknown expect keys"),
        ("- a list", "mapping"),
        ("audio: [unclosed", "cannot read"),
    ],
)
def test_malformed_fixtures_name_file_and_problem(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(FixtureError, match=re.escape(message)) as info:
        load_fixture(path)
    assert str(path) in str(info.value)


def test_word_error_rate():
    assert word_error_rate("billing", "billing") == 0.0
    assert word_error_rate("technical support", "support") == 0.5
    assert word_error_rate("agent please", "an agent please now") == 1.0
    assert word_error_rate("I need billing.", "i need BILLING") == 0.0
    assert word_error_rate("", "") == 0.0
    assert word_error_rate("", "hello") == 1.0


def test_expectations_report_each_mismatch():
    result = CallResult(fixture="f", call_sid="CA1", outcome="conference:support-CA1", path=["menu", "support"])
    ok = Expectation(outcome="conference:support-{call_sid}", path=("menu", "support"))
    assert check_expectations(result, ok) == []
    bad = Expectation(outcome="hangup", path=("menu",), max_bargein_ms=100)
    failures = check_expectations(result, bad)
    assert len(failures) == 3
    assert "expected a barge-in" in failures[2]
    result.bargein_ms = [90, 140]
    assert "140 ms" in check_expectations(result, Expectation(max_bargein_ms=100))[0]


def test_transcript_wer_is_recorded_and_optionally_bounded():
    result = CallResult(fixture="f", call_sid="CA1", caller_transcript=["technical"])
    assert check_expectations(result, Expectation(transcript="technical support")) == []
    assert result.wer == 0.5
    assert check_expectations(result, Expectation(transcript="technical support", max_wer=0.2))


def test_percentile():
    assert percentile([5, 1, 3], 50) == 3
    assert percentile([1, 2, 3, 4, 100], 95) == 100
