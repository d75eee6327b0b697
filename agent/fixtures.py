"""Fixture calls (DESIGN.md "Fixture call format"): loading, checking results, WER.

A fixture is a YAML file beside its caller WAV: `audio`, `params` (Stream
customParameters), `events` (DTMF at media times), `expect` (outcome, path,
transcript, max_bargein_ms), and how the simulated Twilio plays the parts
Twilio decides: `dial_status` (how a transfer's `<Dial>` ends: busy,
no-answer, failed…; default answered) and `follow_record` (run a voicemail
`<Record>`'s action when the caller goes quiet; default: the call ends
there). Keys the generator uses (`caller`, `description`) are allowed and
ignored here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

FIXTURE_KEYS = {
    "audio", "params", "events", "expect", "caller", "description", "dial_status", "follow_record",
}  # fmt: skip
DIAL_STATUSES = ("answered", "completed", "busy", "no-answer", "failed", "canceled")
EXPECT_KEYS = {"outcome", "path", "transcript", "max_bargein_ms", "max_wer"}


class FixtureError(Exception):
    """A fixture file is malformed; the message names the file and the problem."""


@dataclass(frozen=True)
class DtmfEvent:
    at_ms: int
    digits: str


@dataclass(frozen=True)
class Expectation:
    outcome: str | None = None
    path: tuple[str, ...] | None = None
    transcript: str | None = None
    max_bargein_ms: int | None = None
    max_wer: float | None = None


@dataclass(frozen=True)
class Fixture:
    name: str
    path: Path
    audio_path: Path
    params: Mapping[str, str]
    events: tuple[DtmfEvent, ...]
    expect: Expectation
    dial_status: str | None = None  # how a <Dial> ends (DialCallStatus); None: answered
    follow_record: bool = False  # run a <Record action> when the caller goes quiet


def load_fixture(path: str | Path) -> Fixture:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise FixtureError(f"{path}: cannot read fixture: {exc}") from None
    if not isinstance(raw, dict):
        raise FixtureError(f"{path}: a fixture is a YAML mapping")
    unknown = set(raw) - FIXTURE_KEYS
    if unknown:
        raise FixtureError(f"{path}: unknown keys {sorted(unknown)}")
    if "audio" not in raw:
        raise FixtureError(f"{path}: `audio` (the caller WAV) is required")
    audio_path = (path.parent / str(raw["audio"])).resolve()
    if not audio_path.is_file():
        raise FixtureError(f"{path}: audio file {audio_path} not found")
    params = raw.get("params") or {}
    if not isinstance(params, dict):
        raise FixtureError(f"{path}: `params` must be a mapping")
    events = []
    for i, event in enumerate(raw.get("events") or []):
        if not isinstance(event, dict) or "at_ms" not in event or "dtmf" not in event:
            raise FixtureError(f"{path}: events[{i}] must be {{at_ms: N, dtmf: \"1\"}}")
        digits = str(event["dtmf"])
        if not re.fullmatch(r"[0-9*#A-D]+", digits):
            raise FixtureError(f"{path}: events[{i}].dtmf {digits!r} is not DTMF digits")
        events.append(DtmfEvent(int(event["at_ms"]), digits))
    expect_raw = raw.get("expect") or {}
    if not isinstance(expect_raw, dict):
        raise FixtureError(f"{path}: `expect` must be a mapping")
    unknown = set(expect_raw) - EXPECT_KEYS
    if unknown:
        raise FixtureError(f"{path}: unknown expect keys {sorted(unknown)}")
    dial_status = str(raw["dial_status"]) if raw.get("dial_status") else None
    if dial_status is not None and dial_status not in DIAL_STATUSES:
        raise FixtureError(f"{path}: dial_status {dial_status!r}: use one of {', '.join(DIAL_STATUSES)}")
    follow_record = raw.get("follow_record", False)
    if not isinstance(follow_record, bool):
        raise FixtureError(f"{path}: follow_record must be true or false")
    expect_path = expect_raw.get("path")
    expect = Expectation(
        outcome=str(expect_raw["outcome"]) if "outcome" in expect_raw else None,
        path=tuple(str(p) for p in expect_path) if expect_path is not None else None,
        transcript=str(expect_raw["transcript"]) if "transcript" in expect_raw else None,
        max_bargein_ms=int(expect_raw["max_bargein_ms"]) if "max_bargein_ms" in expect_raw else None,
        max_wer=float(expect_raw["max_wer"]) if "max_wer" in expect_raw else None,
    )
    return Fixture(
        name=path.stem,
        path=path,
        audio_path=audio_path,
        params={str(k): str(v) for k, v in params.items()},
        events=tuple(sorted(events, key=lambda e: e.at_ms)),
        expect=expect,
        dial_status=dial_status,
        follow_record=follow_record,
    )


def find_fixtures(targets: Iterable[str | Path]) -> list[Fixture]:
    """Fixture files named directly, or every `*.yaml` in the directories named."""
    found: list[Fixture] = []
    for target in targets:
        p = Path(target)
        if p.is_dir():
            found.extend(load_fixture(f) for f in sorted(p.glob("*.yaml")))
        else:
            found.append(load_fixture(p))
    if not found:
        raise FixtureError(f"no fixture calls found in {[str(t) for t in targets]}")
    return found


# --- word error rate --------------------------------------------------------------


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def word_error_rate(reference: str, hypothesis: str) -> float:
    """(substitutions + deletions + insertions) / reference words (Levenshtein on words)."""
    ref, hyp = words(reference), words(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    previous = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        current = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h))
        previous = current
    return previous[-1] / len(ref)


# --- expectations -------------------------------------------------------------------


@dataclass
class CallResult:
    """What a replayed call did, as the simulated Twilio and the live feed saw it."""

    fixture: str
    call_sid: str
    outcome: str | None = None
    path: list[str] = field(default_factory=list)
    caller_transcript: list[str] = field(default_factory=list)
    agent_turns: list[dict[str, Any]] = field(default_factory=list)
    bargein_ms: list[int] = field(default_factory=list)
    response_ms: list[int] = field(default_factory=list)
    end_reason: str | None = None
    duration_ms: int = 0
    wall_s: float = 0.0
    wer: float | None = None
    failures: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def passed(self) -> bool:
        return not self.failures and self.error is None


def check_expectations(result: CallResult, expect: Expectation) -> list[str]:
    failures = []
    if expect.outcome is not None:
        wanted = expect.outcome.replace("{call_sid}", result.call_sid)
        if result.outcome != wanted:
            failures.append(f"outcome {result.outcome!r}, expected {wanted!r}")
    if expect.path is not None and tuple(result.path) != expect.path:
        failures.append(f"path {list(result.path)}, expected {list(expect.path)}")
    if expect.transcript is not None:
        result.wer = word_error_rate(expect.transcript, " ".join(result.caller_transcript))
        if expect.max_wer is not None and result.wer > expect.max_wer:
            failures.append(f"WER {result.wer:.2f} above {expect.max_wer:.2f}")
    if expect.max_bargein_ms is not None:
        if not result.bargein_ms:
            failures.append("expected a barge-in, none happened")
        elif max(result.bargein_ms) > expect.max_bargein_ms:
            failures.append(
                f"barge-in took {max(result.bargein_ms)} ms, limit {expect.max_bargein_ms} ms"
            )
    return failures


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return float(ordered[k])
