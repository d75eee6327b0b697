"""A sans-I/O Media Streams connection: one per `WS /twilio/media` socket.

Theory of operation
-------------------
The socket adapter hands every text frame to `receive_text(raw)` and gets back
the parsed message for the session to act on, or None when the frame was
rejected. Nothing here raises on what the peer sends: every malformed or
unexpected frame is counted in `errors` by kind and kept in `last_error`. The
session sends with `send_media` / `send_mark` / `send_clear` and writes out
`data_to_send()`. No I/O, no clock, no event loop: tests feed strings in and
read strings out (the shape of websockets' `Protocol` and h11).

States follow Twilio's message order ("connected" ... "start" ... "stop"):

    AWAITING_CONNECTED --connected--> AWAITING_START --start--> STREAMING --stop--> STOPPED
    AWAITING_CONNECTED --start--------------------------------> STREAMING

`connected` is optional (a stream that opens with `start` is fine). Twilio
says of `start`: "It is only sent once at the start of the Stream", so a second
one is rejected. `_TRANSITIONS` below is the whole table: for each state and
message type, the next state or the error kind that rejects the message.

Once STREAMING, every message must carry the started streamSid, and
sequenceNumber ("The first message has a value of 1 and then is incremented
for each subsequent message") must move forward: a jump ahead is counted as
`sequence_gap` and accepted (the audio is still good); a repeated or older
number is `sequence_out_of_order`, rejected for media (a replayed frame would
corrupt the audio timeline) and counted but accepted for the rest. Media must
be one frame (`frame_bytes`) from the inbound track.

A `start` whose mediaFormat is not audio/x-mulaw, 8000 Hz, mono is rejected
(`unsupported_format`, the state stays where it was) and kept in `unusable`:
Twilio sends one start per stream, so that stream will never carry audio we
can use and the session should close the socket.

Marks: each `send_mark(name)` stays pending until Twilio echoes it back. Per
Twilio, `clear` empties the buffered audio and sends back the marks still
pending, so after `send_clear()` those echoes are still expected and accepted.
An echo of a name we never sent (or already got back) is `unknown_mark`.
"""

from __future__ import annotations

from collections import Counter, deque
from enum import Enum
from typing import Final

from twiml.errors import ProtocolError, StreamNotStarted, StreamStopped
from twiml.messages import (
    MAX_MESSAGE_BYTES,
    Connected,
    Dtmf,
    InboundMessage,
    Mark,
    Media,
    Start,
    Stop,
    clear_message,
    mark_message,
    media_message,
    parse_message,
)

FRAME_BYTES: Final = 160  # 20 ms of 8 kHz mu-law

SUPPORTED_FORMAT: Final = ("audio/x-mulaw", 8000, 1)


class StreamState(Enum):
    AWAITING_CONNECTED = "awaiting_connected"
    AWAITING_START = "awaiting_start"
    STREAMING = "streaming"
    STOPPED = "stopped"


_AC = StreamState.AWAITING_CONNECTED
_AS = StreamState.AWAITING_START
_ST = StreamState.STREAMING
_SP = StreamState.STOPPED

_TRANSITIONS: Final[dict[tuple[StreamState, type[InboundMessage]], StreamState | str]] = {
    (_AC, Connected): _AS,
    (_AC, Start): _ST,
    (_AC, Media): "media_before_start",
    (_AC, Dtmf): "dtmf_before_start",
    (_AC, Mark): "mark_before_start",
    (_AC, Stop): "stop_before_start",
    (_AS, Connected): "duplicate_connected",
    (_AS, Start): _ST,
    (_AS, Media): "media_before_start",
    (_AS, Dtmf): "dtmf_before_start",
    (_AS, Mark): "mark_before_start",
    (_AS, Stop): "stop_before_start",
    (_ST, Connected): "duplicate_connected",
    (_ST, Start): "duplicate_start",
    (_ST, Media): _ST,
    (_ST, Dtmf): _ST,
    (_ST, Mark): _ST,
    (_ST, Stop): _SP,
    **{(_SP, kind): "after_stop" for kind in (Connected, Start, Media, Dtmf, Mark, Stop)},
}


class StreamConnection:
    """The protocol state of one Media Streams socket (see the module docstring).

    `receive_text` returns the message when it was accepted (possibly counted,
    e.g. a `sequence_gap`), None when it was rejected; it never raises on peer
    input. `errors` counts every problem by kind, accepted or not (one frame
    can count twice, e.g. a `sequence_gap` on an `unknown_mark`); `last_error`
    is the latest. The send methods raise `StreamNotStarted` / `StreamStopped`
    (local errors) outside STREAMING.
    """

    def __init__(
        self, *, frame_bytes: int = FRAME_BYTES, max_message_bytes: int = MAX_MESSAGE_BYTES
    ) -> None:
        self.state = StreamState.AWAITING_CONNECTED
        self.stream_sid: str | None = None
        self.call_sid: str | None = None
        self.start: Start | None = None
        self.errors: Counter[str] = Counter()
        self.last_error: ProtocolError | None = None
        self.unusable: ProtocolError | None = None
        self._frame_bytes = frame_bytes
        self._max_message_bytes = max_message_bytes
        self._sid = ""  # stream_sid, as a plain str for the per-frame path
        self._last_sequence = 0
        self._pending_marks: deque[str] = deque()
        self._outbox: list[str] = []

    # --- receiving ---------------------------------------------------------

    def receive_text(self, raw: str | bytes) -> InboundMessage | None:
        """Parse and check one frame from Twilio; the message, or None if rejected."""
        try:
            message = parse_message(raw, max_bytes=self._max_message_bytes)
        except ProtocolError as error:
            self._count(error)
            return None
        outcome = _TRANSITIONS[self.state, type(message)]
        if isinstance(outcome, str):
            self._count(ProtocolError(outcome, f"{_event(message)} in {self.state.value}"))
            return None
        if isinstance(message, Start):
            return self._receive_start(message, outcome)
        if isinstance(message, Connected):
            self.state = outcome
            return message
        return self._receive_in_stream(message, outcome)

    def _receive_start(self, start: Start, next_state: StreamState) -> Start | None:
        fmt = start.media_format
        if (fmt.encoding, fmt.sample_rate, fmt.channels) != SUPPORTED_FORMAT:
            error = ProtocolError(
                "unsupported_format",
                f"{fmt.encoding} {fmt.sample_rate} Hz {fmt.channels} channel(s), "
                "need audio/x-mulaw 8000 Hz mono",
            )
            self.unusable = error
            self._count(error)
            return None
        self.state = next_state
        self.start = start
        self.stream_sid = self._sid = start.stream_sid
        self.call_sid = start.call_sid
        self._last_sequence = start.sequence_number
        return start

    def _receive_in_stream(
        self, message: Media | Dtmf | Mark | Stop, next_state: StreamState
    ) -> InboundMessage | None:
        if message.stream_sid != self._sid:
            self._count(
                ProtocolError("stream_sid_mismatch", f"{message.stream_sid[:40]!r} in {self._sid}")
            )
            return None
        sequence = message.sequence_number
        last = self._last_sequence
        if sequence != last + 1:
            detail = f"{sequence} after {last} ({_event(message)})"
            if sequence > last:
                self._count(ProtocolError("sequence_gap", detail))
            else:
                self._count(ProtocolError("sequence_out_of_order", detail))
                if type(message) is Media:
                    return None
        if sequence > last:
            self._last_sequence = sequence

        if type(message) is Media:
            if message.track != "inbound":
                self._count(ProtocolError("unexpected_track", message.track[:40]))
                return None
            if len(message.payload) != self._frame_bytes:
                self._count(
                    ProtocolError(
                        "bad_size", f"{len(message.payload)} bytes, expected {self._frame_bytes}"
                    )
                )
                return None
        elif type(message) is Mark and not self._take_mark(message.name):
            self._count(ProtocolError("unknown_mark", repr(message.name[:40])))
            return None
        self.state = next_state  # STOPPED after a stop, else unchanged
        return message

    def _take_mark(self, name: str) -> bool:
        pending = self._pending_marks
        if pending and pending[0] == name:  # the usual case: echoes come back in order
            pending.popleft()
            return True
        try:
            pending.remove(name)
        except ValueError:
            return False
        return True

    def _count(self, error: ProtocolError) -> None:
        self.errors[error.kind] += 1
        self.last_error = error

    # --- sending -----------------------------------------------------------

    def _streaming_sid(self) -> str:
        if self.state is StreamState.STREAMING:
            return self._sid
        if self.state is StreamState.STOPPED:
            raise StreamStopped("the stream has stopped; nothing more can be sent")
        raise StreamNotStarted("cannot send before Twilio's start message")

    def send_media(self, payload: bytes) -> None:
        """Queue mu-law audio for Twilio to play (any length; 160 bytes = 20 ms)."""
        self._outbox.append(media_message(self._streaming_sid(), payload))

    def send_mark(self, name: str) -> None:
        """Queue a mark; it stays pending until Twilio echoes it back."""
        sid = self._streaming_sid()
        self._pending_marks.append(name)
        self._outbox.append(mark_message(sid, name))

    def send_clear(self) -> None:
        """Queue a clear: Twilio drops its buffered audio and echoes the pending marks."""
        self._outbox.append(clear_message(self._streaming_sid()))

    def data_to_send(self) -> list[str]:
        """The text frames queued since the last call, oldest first."""
        frames, self._outbox = self._outbox, []
        return frames

    @property
    def has_data_to_send(self) -> bool:
        """Cheap per-frame check: is anything queued for Twilio?"""
        return bool(self._outbox)

    @property
    def marks_pending(self) -> int:
        """Marks sent and not yet echoed (cleared marks are echoed too)."""
        return len(self._pending_marks)


_EVENT_NAMES: Final[dict[type[InboundMessage], str]] = {
    Connected: "connected",
    Start: "start",
    Media: "media",
    Dtmf: "dtmf",
    Mark: "mark",
    Stop: "stop",
}


def _event(message: InboundMessage) -> str:
    return _EVENT_NAMES[type(message)]
