"""The call's record: its live-feed events as they happen, and at the end the
`CallRecord` handed to the archive queue.

Theory of operation
-------------------
Every feed event a session publishes goes through its `CallJournal`, which
stamps it with the call SID and the wall clock and keeps a copy: the archive
stores the same events the feed showed. When the call is over the session
builds the record (`call_record`) from what `start` said about the stream
(`StreamOrigin`), the dialog's path and slots — those of a sensitive state
masked — and the journal, and queues it (`archive_call`) BEFORE it publishes
`call.ended`: whoever acts on call.ended (replay, ops) may stop the server at
once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from agent.dialog import DialogEngine
from agent.events import FeedEvent
from agent.feed import Feed
from agent.ports import ArchiveQueue, CallRecord
from agent.session_state import CallState, CallStats
from media.recording import CallRecording


@dataclass(frozen=True)
class StreamOrigin:
    """What `start` said about the stream, as the archive keeps it."""

    stream_sid: str = ""
    account_sid: str = ""
    from_: str = ""  # masked
    to: str = ""  # masked
    started_at_ms: int = 0  # wall clock
    continuation: bool = False  # a resumed stream of the call (archived in its own sub-folder)


class CallJournal:
    """The call's feed events: published live, kept for the archive's record."""

    def __init__(self, state: CallState, feed: Feed) -> None:
        self._state = state
        self._feed = feed
        self.events: list[FeedEvent] = []

    def event(self, kind: type[FeedEvent], **fields: object) -> FeedEvent:
        """A feed event of this call, kept for the archive's record."""
        event = kind(call_sid=self._state.call_sid, t=int(time.time() * 1000), **fields)
        self.events.append(event)
        return event

    def publish(self, kind: type[FeedEvent], **fields: object) -> None:
        self._feed.publish(self.event(kind, **fields))

    def publish_event(self, event: FeedEvent) -> None:
        """Publish an event made (and kept) earlier with `event`."""
        self._feed.publish(event)


def call_record(
    state: CallState,
    origin: StreamOrigin,
    flow: str,
    engine: DialogEngine | None,
    journal: CallJournal,
    stats: CallStats,
    malformed: dict[str, int],
    recording: CallRecording,
) -> CallRecord:
    """The finished call as the archive stores it; slots of a sensitive state masked."""
    slots = {}
    if engine is not None:
        hidden = engine.sensitive_slots
        slots = {k: "***" if k in hidden else v for k, v in engine.slots.items()}
    return CallRecord(
        call_sid=state.call_sid,
        stream_sid=origin.stream_sid,
        account_sid=origin.account_sid,
        flow=flow,
        from_=origin.from_,
        to=origin.to,
        started_at_ms=origin.started_at_ms,
        duration_ms=state.now_ms,
        end_reason=state.end_reason,
        outcome=state.outcome,
        path=tuple(engine.path) if engine is not None else (),
        slots=slots,
        events=tuple(journal.events),
        bargein_ms=tuple(stats.bargeins),
        response_ms=tuple(stats.response_ms),
        malformed=dict(malformed),
        recording=recording,
        continuation=origin.continuation,
    )


async def archive_call(archive: ArchiveQueue | None, record: CallRecord, log: logging.LoggerAdapter[logging.Logger]) -> None:
    """Hand the finished call to the archive queue (a worker stores it)."""
    if archive is None:
        return
    try:
        await archive.enqueue(record)
    except Exception:
        log.exception("could not enqueue the call for the archive")
