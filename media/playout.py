"""The playout tracker: what Twilio has queued and what the caller has heard.

Theory of operation
-------------------
Twilio plays the audio we send in order and, per its Media Streams docs,
"sends back a mark event when the audio that preceded it has been played".
We follow every chunk of agent audio with a mark, so:

* a chunk whose mark came back was heard in full;
* chunks whose marks are outstanding are queued (or playing) at Twilio;
* after we send `clear`, Twilio "empties the buffered audio" and echoes every
  pending mark at once — those chunks were *not* heard.

Marks give certainty but arrive late; pacing needs an estimate of how much
audio is queued right now. Twilio starts playing as soon as audio arrives, so
sending `d` ms at media time `now` moves the estimated end of playout to
`max(end, now) + d`, and `queued_ms(now) = end - now`.

Chunk states: SENT → PLAYED (mark echoed) or SENT → CLEARED (clear sent
before its mark came back; its echo is then only acknowledged).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum


class ChunkState(Enum):
    SENT = "sent"
    PLAYED = "played"
    CLEARED = "cleared"


@dataclass(slots=True)
class Chunk:
    mark: str
    say_id: int
    duration_ms: int
    state: ChunkState = ChunkState.SENT


@dataclass(frozen=True, slots=True)
class MarkEcho:
    """A mark came back. `played` is False when its chunk had been cleared."""

    say_id: int
    duration_ms: int
    played: bool


class PlayoutTracker:
    """One stream's agent audio as Twilio holds it, on the media timeline."""

    def __init__(self) -> None:
        self._pending: deque[Chunk] = deque()  # SENT or CLEARED, in send order
        self._by_mark: dict[str, Chunk] = {}
        self._heard_ms: dict[int, int] = {}
        self._sent_ms: dict[int, int] = {}
        self._end_ms = 0

    # --- sending -------------------------------------------------------------
    def sent(self, mark: str, say_id: int, duration_ms: int, now_ms: int) -> None:
        """A chunk of `duration_ms` audio was sent, followed by mark `mark`."""
        if mark in self._by_mark:
            raise ValueError(f"mark {mark!r} already in flight")
        chunk = Chunk(mark, say_id, duration_ms)
        self._pending.append(chunk)
        self._by_mark[mark] = chunk
        self._sent_ms[say_id] = self._sent_ms.get(say_id, 0) + duration_ms
        self._end_ms = max(self._end_ms, now_ms) + duration_ms

    def queued_ms(self, now_ms: int) -> int:
        """Estimated audio still queued at Twilio (for pacing)."""
        return max(0, self._end_ms - now_ms)

    def clear(self, now_ms: int) -> int:
        """We sent `clear`: every unplayed chunk is dropped. Returns the ms dropped."""
        dropped = 0
        for chunk in self._pending:
            if chunk.state is ChunkState.SENT:
                chunk.state = ChunkState.CLEARED
                dropped += chunk.duration_ms
        self._end_ms = now_ms
        return dropped

    # --- marks coming back ------------------------------------------------------
    def marked(self, name: str) -> MarkEcho | None:
        """Twilio echoed mark `name`; None if we never sent it (or saw it already)."""
        chunk = self._by_mark.pop(name, None)
        if chunk is None:
            return None
        # Twilio plays in order: every earlier chunk has been played (or cleared).
        while self._pending:
            head = self._pending.popleft()
            if head is chunk:
                break
            self._by_mark.pop(head.mark, None)
            self._settle(head)
        self._settle(chunk)
        return MarkEcho(chunk.say_id, chunk.duration_ms, chunk.state is ChunkState.PLAYED)

    def _settle(self, chunk: Chunk) -> None:
        if chunk.state is ChunkState.SENT:
            chunk.state = ChunkState.PLAYED
            self._heard_ms[chunk.say_id] = self._heard_ms.get(chunk.say_id, 0) + chunk.duration_ms

    # --- queries ----------------------------------------------------------------
    @property
    def playing(self) -> bool:
        """Agent audio is queued or playing at Twilio (some mark outstanding)."""
        return any(c.state is ChunkState.SENT for c in self._pending)

    def outstanding(self, say_id: int) -> int:
        """Marks of `say_id` not yet echoed (cleared ones included)."""
        return sum(1 for c in self._pending if c.say_id == say_id)

    def heard_ms(self, say_id: int) -> int:
        """Milliseconds of `say_id` the caller has heard so far (from marks)."""
        return self._heard_ms.get(say_id, 0)

    def sent_ms(self, say_id: int) -> int:
        return self._sent_ms.get(say_id, 0)
