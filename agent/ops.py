"""What the ops page shows: live calls and recent ones, folded from the live feed.

`CallBook` is a pure fold over feed events (no I/O, no clock of its own): the
app feeds it every event of its feed subscription — with Redis that is every
instance's calls — and the ops routes read it. It only ever holds what the
feed carried, which is already redacted (sensitive slots and DTMF in
sensitive states are `***` before they are published).

A call is live from its first event to `call.ended`; a resumed stream (same
CallSid, after a failed transfer or a voicemail) brings it back to live with
its transcript so far. Everything is bounded: transcript lines per call,
recent calls, and live calls that stopped reporting (an instance that died
mid-call never sends `call.ended`) are retired after `idle_ms`.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from agent.events import (
    ActionEvent,
    ArchiveStoredEvent,
    BargeInEvent,
    CallEndedEvent,
    CallStartedEvent,
    CallStatusEvent,
    FeedEvent,
    LatencyEvent,
    TranscriptFinalEvent,
    TranscriptPartialEvent,
    TransferResultEvent,
    TransitionEvent,
)

MAX_LINES = 200
HAND_ON = ("transfer", "conference", "voicemail", "hangup")


@dataclass
class CallView:
    call_sid: str
    first_t: int
    last_t: int
    live: bool = True
    started_t: int | None = None
    ended_t: int | None = None
    from_: str = ""
    to: str = ""
    flow: str = ""
    state: str | None = None
    path: list[str] = field(default_factory=list)
    outcome: str | None = None
    end_reason: str | None = None
    partial: str = ""
    lines: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_LINES))
    bargein_ms: list[int] = field(default_factory=list)
    response_ms: list[float] = field(default_factory=list)
    archive: str | None = None

    def to_dict(self, *, transcript: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {
            "call_sid": self.call_sid,
            "live": self.live,
            "started_t": self.started_t if self.started_t is not None else self.first_t,
            "ended_t": self.ended_t,
            "last_t": self.last_t,
            "from": self.from_,
            "to": self.to,
            "flow": self.flow,
            "state": self.state,
            "path": list(self.path),
            "outcome": self.outcome,
            "end_reason": self.end_reason,
            "bargein_ms": list(self.bargein_ms),
            "response_ms": list(self.response_ms),
            "archive": self.archive,
        }
        if transcript:
            d["partial"] = self.partial
            d["transcript"] = list(self.lines)
        return d


class CallBook:
    def __init__(self, max_recent: int = 100, max_live: int = 5000, idle_ms: int = 3_600_000) -> None:
        self._live: dict[str, CallView] = {}
        self._recent: OrderedDict[str, CallView] = OrderedDict()  # oldest first
        self._max_recent = max_recent
        self._max_live = max_live
        self._idle_ms = idle_ms
        self._pruned_at = 0

    # --- the fold -----------------------------------------------------------------
    def apply(self, event: FeedEvent) -> None:
        if isinstance(event, ArchiveStoredEvent):
            self._archived(event)
            return
        if isinstance(event, CallStatusEvent | TransferResultEvent):
            # Twilio's callbacks outside a stream (a status often comes after
            # call.ended): they never make a call live again
            live = self._live.get(event.call_sid)
            if live is not None:
                live.last_t = max(live.last_t, event.t)
            return
        view = self._live_view(event)
        view.last_t = max(view.last_t, event.t)
        match event:
            case CallStartedEvent():
                view.started_t = view.started_t or event.t
                view.from_, view.to, view.flow = event.from_, event.to, event.flow
            case TranscriptPartialEvent():
                view.partial = event.text
            case TranscriptFinalEvent():
                if event.speaker == "caller":
                    view.partial = ""
                if event.text:
                    view.lines.append(
                        {"t": event.t, "speaker": event.speaker, "text": event.text, "interrupted": event.interrupted}
                    )
            case BargeInEvent():
                view.bargein_ms.append(event.latency_ms)
            case TransitionEvent():
                if event.from_ != event.to:  # a resume re-enters its state: not a new step
                    view.path.append(event.to)
                view.state = event.to
            case ActionEvent() if event.action in HAND_ON:
                view.outcome = event.action
            case LatencyEvent() if event.name == "response":
                view.response_ms.append(round(event.ms, 1))
            case CallEndedEvent():
                view.live, view.ended_t, view.end_reason = False, event.t, event.reason
                view.partial = ""
                del self._live[view.call_sid]
                self._remember(view)

    def _live_view(self, event: FeedEvent) -> CallView:
        sid = event.call_sid
        view = self._live.get(sid)
        if view is None:
            view = self._recent.pop(sid, None)  # a resumed stream: the call is live again
            if view is None:
                view = CallView(sid, first_t=event.t, last_t=event.t)
            view.live, view.ended_t, view.end_reason = True, None, None
            self._live[sid] = view
            if len(self._live) > self._max_live:
                oldest = min(self._live.values(), key=lambda v: v.last_t)
                self._retire(oldest, "lost")
        return view

    def _archived(self, event: ArchiveStoredEvent) -> None:
        view = self._live.get(event.call_sid) or self._recent.get(event.call_sid)
        if view is None:
            view = CallView(event.call_sid, first_t=event.t, last_t=event.t, live=False)
            self._remember(view)
        view.archive = event.location

    def _remember(self, view: CallView) -> None:
        self._recent.pop(view.call_sid, None)
        self._recent[view.call_sid] = view
        while len(self._recent) > self._max_recent:
            self._recent.popitem(last=False)

    def _retire(self, view: CallView, reason: str) -> None:
        del self._live[view.call_sid]
        view.live, view.end_reason = False, reason
        self._remember(view)

    def prune(self, now_ms: int) -> None:
        """Retire live calls with no event for `idle_ms` (their instance died).
        Scans at most once a minute (cheap to call on every event)."""
        if now_ms - self._pruned_at < 60_000:
            return
        self._pruned_at = now_ms
        for view in [v for v in self._live.values() if now_ms - v.last_t > self._idle_ms]:
            self._retire(view, "lost")

    # --- reading ----------------------------------------------------------------------
    def live(self) -> list[dict[str, Any]]:
        """Live calls, oldest first, with their transcripts so far."""
        views = sorted(self._live.values(), key=lambda v: v.first_t)
        return [v.to_dict() for v in views]

    def recent(self) -> list[dict[str, Any]]:
        """Finished calls, most recent first, without transcripts."""
        return [v.to_dict(transcript=False) for v in reversed(self._recent.values())]

    def get(self, call_sid: str) -> dict[str, Any] | None:
        view = self._live.get(call_sid) or self._recent.get(call_sid)
        return view.to_dict() if view is not None else None
