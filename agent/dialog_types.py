"""What goes into the dialog engine and what comes out of it.

The engine (`agent/dialog.py`) is pure: `handle(event, now_ms) -> list[Action]`
and `next_deadline() -> int | None`. The call session turns audio, DTMF and
marks into these events and carries out the actions. Times are milliseconds on
the call's media timeline.
"""

from __future__ import annotations

from dataclasses import dataclass

# --- events: what happened on the call ----------------------------------------


@dataclass(frozen=True, slots=True)
class CallStarted:
    """The stream started. `resume_state` continues a call at that state
    (after a failed transfer, or a stream reconnect) instead of `start`."""

    resume_state: str | None = None


@dataclass(frozen=True, slots=True)
class CallerSpeechStarted:
    """The caller started talking (pauses the no-input timer)."""


@dataclass(frozen=True, slots=True)
class CallerSpeechFinal:
    """The caller finished a turn; `text` is the transcript, maybe empty."""

    text: str
    confidence: float


@dataclass(frozen=True, slots=True)
class CallerSpeechAbandoned:
    """What began as speech was too short to be a turn (a click, a cough) and
    nothing was recognised: not a failed attempt; the no-input timer restarts."""


@dataclass(frozen=True, slots=True)
class DtmfPressed:
    digit: str  # one of 0-9 * # A-D


@dataclass(frozen=True, slots=True)
class PromptFinished:
    """Everything of `Say(say_id)` was played to the caller (all marks back)."""

    say_id: int


@dataclass(frozen=True, slots=True)
class PromptInterrupted:
    """The caller barged in on `Say(say_id)` after hearing `heard_ms` of it."""

    say_id: int
    heard_ms: int


@dataclass(frozen=True, slots=True)
class TransferFailed:
    """A transfer ended without being answered (`status`: no-answer, busy, failed, canceled)."""

    status: str


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed; sent when `now_ms >= engine.next_deadline()`."""


Event = (
    CallStarted
    | CallerSpeechStarted
    | CallerSpeechFinal
    | CallerSpeechAbandoned
    | DtmfPressed
    | PromptFinished
    | PromptInterrupted
    | TransferFailed
    | Tick
)

# --- actions: what the session must do ------------------------------------------


@dataclass(frozen=True, slots=True)
class Say:
    """Speak `text`. `log_text` is the same with sensitive slot values masked:
    the only form that may be logged, published or archived."""

    say_id: int
    state: str
    text: str
    log_text: str
    voice: str
    language: str
    barge_in: bool
    listens: bool = False  # the state waits for the caller after this prompt


@dataclass(frozen=True, slots=True)
class Listen:
    """What the caller may say or press now: bias speech recognition with
    `phrases`; `sensitive` means DTMF and speech here must not be logged."""

    state: str
    phrases: tuple[str, ...]
    sensitive: bool = False


@dataclass(frozen=True, slots=True)
class Transition:
    from_state: str | None
    to_state: str
    # the intent name, or "no_match" / "no_input" / "fallback" / "collected" /
    # "next" / "transfer_failed" / "resume" / "resume_unknown"
    intent: str | None


@dataclass(frozen=True, slots=True)
class SlotFilled:
    name: str
    value: str
    sensitive: bool

    @property
    def log_value(self) -> str:
        return "***" if self.sensitive else self.value


@dataclass(frozen=True, slots=True)
class Transfer:
    state: str
    to: str  # E.164 number or sip: URI
    timeout_s: int
    record: bool
    on_fail: str | None


@dataclass(frozen=True, slots=True)
class Conference:
    state: str
    room: str  # already formatted ({call_sid} filled in)
    record: bool


@dataclass(frozen=True, slots=True)
class Voicemail:
    state: str
    max_s: int
    next: str | None


@dataclass(frozen=True, slots=True)
class HangUp:
    state: str
    reason: str  # "completed" (a hangup state), "no_fallback", "transfer_failed", "dead_end"


Action = Say | Listen | Transition | SlotFilled | Transfer | Conference | Voicemail | HangUp
