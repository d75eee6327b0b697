"""The small ports the call session talks to; one file per vendor implements one.

A port is a `typing.Protocol`. `agent/wiring.py` picks the implementation from
settings (embedded defaults need no credentials). Adapters never see a
CallSession: they get plain values and report back through a callback or an
async iterator.

Times (`*_ms`) are on the call's media timeline: milliseconds of caller audio
since the stream started, the same clock the session runs on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Protocol

from agent.events import FeedEvent
from media.recording import CallRecording

# --- speech to text ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Transcript:
    """A recognition result for the caller's speech.

    `is_final` results do not change any more; a partial may be followed by
    others. `end_of_turn` marks the final that closes the caller's turn (the
    provider heard the end of the utterance, or the session asked it to end).
    """

    text: str
    is_final: bool
    confidence: float
    start_ms: int
    end_ms: int
    end_of_turn: bool = False


@dataclass(frozen=True, slots=True)
class SpeechStartedHint:
    """The provider's own voice activity detector heard speech begin.

    `barge_in`: the provider's detector is trusted to cut the agent off
    (Deepgram's `SpeechStarted`); the session then barges in as for its own
    VAD. The offline recognizer's onset detector is a cheap copy of the
    session's own and says False.
    """

    at_ms: int
    barge_in: bool = False


@dataclass(frozen=True, slots=True)
class SttFailure:
    """The provider failed for this call; `retryable` says if it may come back."""

    reason: str
    retryable: bool


SttEvent = Transcript | SpeechStartedHint | SttFailure


class SttStream(Protocol):
    """One call's streaming recognizer."""

    def set_phrases(self, phrases: Sequence[str]) -> None:
        """Bias recognition toward the phrases the current dialog state expects."""

    def feed(self, mulaw: bytes, pcm16: bytes, now_ms: int) -> None:
        """Hand over one 20 ms frame (both encodings). Synchronous and cheap:
        called on the per-frame path, so it only buffers."""

    def end_turn(self, now_ms: int) -> None:
        """The session's turn detector heard the caller stop: produce the
        turn's final `Transcript` (with `end_of_turn=True`), even if empty."""

    async def flush(self) -> None:
        """Return once every event for audio fed so far has been delivered
        (replay lockstep uses this for deterministic decisions)."""

    async def aclose(self) -> None:
        """Stop; no events are delivered afterwards."""


class SpeechToText(Protocol):
    name: str

    async def open_stream(
        self, call_sid: str, on_event: Callable[[SttEvent], None]
    ) -> SttStream:
        """Start recognizing one call. `on_event` is called on the event loop."""


# --- text to speech ---------------------------------------------------------


class TextToSpeech(Protocol):
    name: str

    def synthesize(self, text: str, voice: str, language: str) -> AsyncIterator[bytes]:
        """Yield the prompt as 8 kHz mu-law audio, in chunks of any size, as
        soon as each is ready. `voice` is the flow's Polly voice name."""


# --- call control (Twilio REST) -----------------------------------------------


class CallControlError(Exception):
    """Twilio refused or failed a call update; `code` is Twilio's error code."""

    def __init__(self, message: str, *, code: int | None = None, retryable: bool = False):
        super().__init__(message)
        self.code = code
        self.retryable = retryable


class CallControl(Protocol):
    async def update_twiml(self, call_sid: str, twiml: str) -> None:
        """Replace what the live call is doing with `twiml`."""

    async def hang_up(self, call_sid: str) -> None:
        """End the live call."""


# --- call state store -----------------------------------------------------------


class CallStore(Protocol):
    """Per-call state that must outlive one WebSocket (resume after a transfer)."""

    async def load(self, call_sid: str) -> dict[str, object] | None: ...

    async def save(self, call_sid: str, state: dict[str, object], ttl_s: int) -> None: ...

    async def claim_once(self, key: str, ttl_s: int) -> bool:
        """True the first time `key` is claimed within `ttl_s` (idempotency)."""
        ...


# --- the archive ---------------------------------------------------------------------


@dataclass(frozen=True)
class CallRecord:
    """Everything the archive keeps of one finished call, already redacted:
    numbers masked, sensitive slots as `***`, transcripts as published on the
    live feed (DESIGN.md "Archive")."""

    call_sid: str
    stream_sid: str
    account_sid: str
    flow: str
    from_: str  # masked
    to: str  # masked
    started_at_ms: int  # unix ms
    duration_ms: int  # media timeline
    end_reason: str
    outcome: str | None
    path: tuple[str, ...]
    slots: Mapping[str, str]  # sensitive values redacted
    events: tuple[FeedEvent, ...]  # transcripts, barge-ins, transitions, actions
    bargein_ms: tuple[int, ...]
    response_ms: tuple[float, ...]
    malformed: Mapping[str, int]
    recording: CallRecording
    # a later stream of the same call (resumed after a failed transfer or a
    # voicemail): stored in a sub-folder named by its stream SID
    continuation: bool = False


@dataclass(frozen=True)
class RecordingJob:
    """A Twilio recording to fetch and store beside its call (POST /twilio/recording)."""

    call_sid: str
    recording_sid: str
    account_sid: str
    kind: str  # voicemail | transfer | conference | call: names the stored file
    day: str  # yyyy-mm-dd of the call's folder
    duration_s: int | None = None
    channels: int | None = None
    source: str = ""  # Twilio's RecordingSource: RecordVerb, DialVerb, Conference…


class ArchiveQueue(Protocol):
    async def enqueue(self, record: CallRecord) -> None:
        """Hand a finished call over durably; a worker stores it later.
        Must return quickly: the session only enqueues."""

    async def enqueue_recording(self, job: RecordingJob) -> None:
        """Hand over a Twilio recording to fetch, durably; a worker stores it."""


class ArchiveStore(Protocol):
    """Where archived calls end up: a folder, an S3 bucket.

    Blocking calls: the worker runs them on a thread. Keys are relative
    (`2024/05/01/CA…/audio.wav`); each `put` is atomic (a reader sees the whole
    object or none) and idempotent (the same key and bytes again is harmless).
    """

    def put(self, key: str, data: bytes, content_type: str) -> None: ...

    def exists(self, key: str) -> bool: ...

    def location(self, key: str) -> str:
        """Where `key` is, for people: a path or an s3:// URL."""
        ...

    def days(self) -> list[date]:
        """The `{yyyy}/{mm}/{dd}` folders present."""
        ...

    def delete_day(self, day: date) -> int:
        """Delete everything under one day; the number of objects removed."""
        ...
