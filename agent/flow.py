"""Dialog flows as data: the frozen dataclasses a checked flow file becomes.

The format is DESIGN.md "Flow format (YAML)"; `agent/flow_loader.py` reads and
checks files into these. The dialog engine (`agent/dialog.py`) walks them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

# Matched whole (fullmatch): `$` would let a trailing newline through, `\d` any Unicode digit.
E164 = re.compile(r"\+[1-9][0-9]{1,14}")
SIP_URI = re.compile(r"sip:[^@\s]+@[^@\s]+")

CALL_SID = "call_sid"  # the one placeholder that is not a slot

# Used when the file leaves them out.
DEFAULT_VOICE = "Polly.Joanna"
DEFAULT_LANGUAGE = "en-US"


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a flow file, at a 1-based line."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


class FlowError(Exception):
    """The flow file is not usable; `problems` says where and why."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Defaults:
    no_input_s: float = 6
    max_retries: int = 2
    fallback: str | None = None
    barge_in: bool = True


@dataclass(frozen=True, slots=True)
class Intent:
    name: str
    phrases: tuple[str, ...]
    dtmf: str | None
    next: str


@dataclass(frozen=True, slots=True)
class Collect:
    slot: str
    digits: int | None
    finish_on_key: str | None
    sensitive: bool
    next: str


@dataclass(frozen=True, slots=True)
class TransferSpec:
    to: str  # E.164 or sip: URI
    timeout_s: int = 30
    record: bool = False
    on_fail: str | None = None


@dataclass(frozen=True, slots=True)
class ConferenceSpec:
    room: str  # may contain {call_sid}
    record: bool = False


@dataclass(frozen=True, slots=True)
class VoicemailSpec:
    max_s: int = 120
    next: str | None = None


@dataclass(frozen=True, slots=True)
class State:
    """One state. A checked state has exactly one of intents, collect,
    transfer, conference, voicemail, hangup or next. The override fields are
    None when the state uses the flow's defaults."""

    name: str
    line: int
    say: str | None = None
    intents: tuple[Intent, ...] = ()
    no_match: str | None = None
    no_input: str | None = None
    collect: Collect | None = None
    transfer: TransferSpec | None = None
    conference: ConferenceSpec | None = None
    voicemail: VoicemailSpec | None = None
    hangup: bool = False
    next: str | None = None
    no_input_s: float | None = None
    max_retries: int | None = None
    fallback: str | None = None
    barge_in: bool | None = None

    @property
    def listens(self) -> bool:
        """The state waits for the caller to speak or press keys."""
        return bool(self.intents) or self.collect is not None

    @property
    def only_next(self) -> bool:
        """The state says its prompt (if any) and moves on to `next`."""
        return self.next is not None and not (
            self.listens
            or self.hangup
            or self.transfer is not None
            or self.conference is not None
            or self.voicemail is not None
        )


@dataclass(frozen=True, slots=True)
class Flow:
    name: str
    voice: str
    language: str
    start: str
    defaults: Defaults
    states: Mapping[str, State]
    path: str
