"""Live feed events (DESIGN.md "Live feed events"): one JSON object per SSE message.

A tagged union of frozen dataclasses; `type` is the tag. Everything that
reaches an event has already been redacted: sensitive slot values and DTMF in
sensitive states never get here in clear.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import orjson


@dataclass(frozen=True, slots=True)
class FeedEvent:
    type: ClassVar[str] = "event"
    call_sid: str
    t: int  # unix ms

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, **asdict(self)}

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())


@dataclass(frozen=True, slots=True)
class CallStartedEvent(FeedEvent):
    type: ClassVar[str] = "call.started"
    stream_sid: str = ""
    from_: str = ""  # masked
    to: str = ""  # masked
    flow: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = FeedEvent.to_dict(self)
        d["from"] = d.pop("from_")
        return d


@dataclass(frozen=True, slots=True)
class TranscriptPartialEvent(FeedEvent):
    type: ClassVar[str] = "transcript.partial"
    speaker: str = "caller"
    text: str = ""


@dataclass(frozen=True, slots=True)
class TranscriptFinalEvent(FeedEvent):
    type: ClassVar[str] = "transcript.final"
    speaker: str = "caller"  # caller | agent
    text: str = ""
    start_ms: int = 0
    end_ms: int = 0
    confidence: float | None = None
    interrupted: bool = False
    heard_ms: int | None = None  # agent turns: how much the caller heard


@dataclass(frozen=True, slots=True)
class BargeInEvent(FeedEvent):
    type: ClassVar[str] = "bargein"
    latency_ms: int = 0  # speech onset → clear sent, on the media timeline
    say_id: int = 0
    heard_ms: int = 0


@dataclass(frozen=True, slots=True)
class TransitionEvent(FeedEvent):
    type: ClassVar[str] = "dialog.transition"
    from_: str | None = None
    to: str = ""
    intent: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = FeedEvent.to_dict(self)
        d["from"] = d.pop("from_")
        return d


@dataclass(frozen=True, slots=True)
class ActionEvent(FeedEvent):
    type: ClassVar[str] = "action"
    action: str = ""  # say | transfer | conference | voicemail | hangup | dtmf | slot
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CallEndedEvent(FeedEvent):
    type: ClassVar[str] = "call.ended"
    reason: str = ""
    path: tuple[str, ...] = ()
    duration_ms: int = 0


@dataclass(frozen=True, slots=True)
class CallStatusEvent(FeedEvent):
    """A Twilio call status callback (initiated, ringing, in-progress, completed,
    busy, no-answer, failed, canceled), published once however often Twilio
    retries it."""

    type: ClassVar[str] = "call.status"
    status: str = ""
    sequence: str = ""  # Twilio's SequenceNumber ("" when it sends none)
    direction: str = ""
    duration_s: int | None = None  # CallDuration, on completed


@dataclass(frozen=True, slots=True)
class TransferResultEvent(FeedEvent):
    """How a transfer's `<Dial>` ended (Twilio's DialCallStatus at
    /twilio/dial-result): answered/completed, or busy, no-answer, failed,
    canceled, after which the agent resumes on a new stream."""

    type: ClassVar[str] = "call.transfer_result"
    status: str = ""


@dataclass(frozen=True, slots=True)
class CallUpdateFailedEvent(FeedEvent):
    """A REST update of the live call failed for good (after retries); `then`
    says what happens to the caller instead."""

    type: ClassVar[str] = "call.update_failed"
    action: str = ""  # transfer | conference | voicemail | hangup | say | hold
    code: int | None = None  # Twilio error code (20003, 20429, 21211, …)
    message: str = ""
    then: str = ""  # continue_by_webhook | caller_gone | next_callback


@dataclass(frozen=True, slots=True)
class ArchiveStoredEvent(FeedEvent):
    type: ClassVar[str] = "archive.stored"
    location: str = ""


EVENT_TYPES: dict[str, type[FeedEvent]] = {
    cls.type: cls
    for cls in (
        CallStartedEvent,
        TranscriptPartialEvent,
        TranscriptFinalEvent,
        BargeInEvent,
        TransitionEvent,
        ActionEvent,
        CallEndedEvent,
        CallStatusEvent,
        TransferResultEvent,
        CallUpdateFailedEvent,
        ArchiveStoredEvent,
    )
}


@dataclass(frozen=True, slots=True)
class LatencyEvent(FeedEvent):
    """A measured latency of the call, for the ops page (an extension of the
    DESIGN.md list). `name` is `response`: caller turn final → first agent
    audio sent (wall ms)."""

    type: ClassVar[str] = "latency"
    name: str = ""
    ms: float = 0.0


EVENT_TYPES[LatencyEvent.type] = LatencyEvent

_RENAMED = {"from": "from_"}


def event_from_dict(data: dict[str, Any]) -> FeedEvent:
    """The event `to_dict` made (another instance published it over Redis).
    Raises ValueError for an unknown type or fields that are not its own."""
    kind = EVENT_TYPES.get(str(data.get("type")))
    if kind is None:
        raise ValueError(f"unknown feed event type {data.get('type')!r}")
    fields = {_RENAMED.get(k, k): v for k, v in data.items() if k != "type"}
    if isinstance(fields.get("path"), list):
        fields["path"] = tuple(fields["path"])
    try:
        return kind(**fields)
    except TypeError as exc:
        raise ValueError(f"not a {kind.type} event: {exc}") from None
