"""Who is at fault when the Twilio protocol goes wrong.

Two families, as in h11 (`_util.py`): a `RemoteProtocolError` means Twilio (or a
tool playing Twilio) sent something the protocol does not allow: count it, log
it with the call SID, and carry on or close the socket. A `LocalProtocolError`
means our own code used the API wrongly: a bug here, not on the wire.
"""

from __future__ import annotations

from typing import Final

# Stable `ProtocolError.kind` values, so metrics can pre-register their labels.

PARSE_ERROR_KINDS: Final = (
    "too_large",  # raw message over the size limit (checked before parsing)
    "bad_json",  # not JSON at all
    "not_an_object",  # JSON, but not an object
    "unknown_event",  # "event" names a message this protocol does not have
    "missing_field",  # a required field is absent
    "bad_field",  # a field has the wrong type, or a counter is not a number
    "bad_base64",  # media.payload is not strict base64
)

STREAM_ERROR_KINDS: Final = (
    "media_before_start",  # rejected
    "dtmf_before_start",  # rejected
    "mark_before_start",  # rejected
    "stop_before_start",  # rejected
    "duplicate_connected",  # rejected
    "duplicate_start",  # rejected
    "unsupported_format",  # start rejected: the stream never becomes usable
    "after_stop",  # anything after stop, rejected
    "stream_sid_mismatch",  # rejected
    "sequence_gap",  # counted, message accepted
    "sequence_out_of_order",  # media rejected; other messages counted and accepted
    "unexpected_track",  # media from a track other than "inbound", rejected
    "bad_size",  # media payload is not one frame, rejected
    "unknown_mark",  # a mark echo we never sent, rejected
)


class RemoteProtocolError(Exception):
    """The peer broke the protocol. Not a bug in callstream."""


class LocalProtocolError(Exception):
    """Our code misused the protocol API. A bug in callstream."""


class ProtocolError(RemoteProtocolError):
    """A Media Streams message we cannot accept.

    `kind` is one of `PARSE_ERROR_KINDS` or `STREAM_ERROR_KINDS` (stable, for
    metrics and tests); `detail` says what and where, for logs.
    """

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


class StreamNotStarted(LocalProtocolError):
    """Tried to send on a stream before Twilio's `start` was accepted."""


class StreamStopped(LocalProtocolError):
    """Tried to send on a stream after Twilio's `stop`."""
