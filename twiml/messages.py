"""Twilio Media Streams messages ⇄ frozen dataclasses: parsed once, here.

Implements Twilio's "Media Streams - WebSocket Messages"
(https://www.twilio.com/docs/voice/media-streams/websocket-messages):

    "During a Media Stream, Twilio sends messages to your WebSocket server that
    provide information about the Stream. For bidirectional Media Streams, your
    server can also send messages back to Twilio."

From Twilio: `connected`, `start`, `media`, `dtmf`, `mark`, `stop`. To Twilio:
`media`, `mark`, `clear`. Exact shapes, as captured, are in
`fixtures/twilio/*.json`. Two wire details shape this module:

- Counters arrive as JSON strings: "sequenceNumber": "2", "chunk": "1",
  "timestamp": "155". They become `int` here; a counter that is not a run of
  ASCII digits is a `bad_field`. (A JSON integer is accepted too, since
  `mediaFormat.sampleRate` and `channels` arrive as numbers.)
- `media.payload` is base64 of raw mu-law; `Media.payload` holds the decoded
  bytes (strict base64, `binascii.a2b_base64(..., strict_mode=True)`).

Unknown extra fields are ignored, so a field Twilio adds later breaks nothing.
`encode_inbound` and `parse_outbound` are the mirror image, for tools that
play Twilio (replay, tests).

The media path is the hot one (50 messages a second per call): one
`orjson.loads`, one base64 decode, one dataclass; outbound frames are built by
string concatenation rather than a JSON encoder.
"""

from __future__ import annotations

from binascii import a2b_base64, b2a_base64
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, TypeGuard

import orjson

from twiml.errors import ProtocolError

MAX_MESSAGE_BYTES: Final = 64 * 1024
"""Default size limit: a real media message is ~330 bytes, a start well under 4 KiB."""

_MAX_COUNTER_DIGITS: Final = 18  # fits in int64; keeps int() far from its digit limit


# --- inbound: Twilio → us ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connected:
    """ "Twilio sends the connected event once a WebSocket connection is
    established. This is the first message your WebSocket server receives"."""

    protocol: str
    version: str


@dataclass(frozen=True, slots=True)
class MediaFormat:
    encoding: str  # "audio/x-mulaw"
    sample_rate: int  # 8000
    channels: int  # 1


@dataclass(frozen=True, slots=True)
class Start:
    """ "The start message contains metadata about the Stream and is sent
    immediately after the connected message. It is only sent once at the start
    of the Stream."

    `custom_parameters` are the `<Parameter name value>` of the `<Stream>`. It is
    a read-only mapping (`types.MappingProxyType`); it takes part in equality but
    not in the hash, so a `Start` stays hashable.
    """

    sequence_number: int
    stream_sid: str
    account_sid: str
    call_sid: str
    tracks: tuple[str, ...]
    media_format: MediaFormat
    custom_parameters: Mapping[str, str] = field(hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.custom_parameters, MappingProxyType):
            frozen = MappingProxyType(dict(self.custom_parameters))
            object.__setattr__(self, "custom_parameters", frozen)


@dataclass(frozen=True, slots=True)
class Media:
    """One chunk of caller audio. `payload` is the base64-decoded mu-law bytes
    (160 bytes = 20 ms at 8 kHz); `timestamp` is milliseconds from the start of
    the stream (the first one is not 0: 102–171 ms seen)."""

    sequence_number: int
    stream_sid: str
    track: str  # "inbound" (or "outbound" on a <Start><Stream track="both_tracks">)
    chunk: int
    timestamp: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Dtmf:
    """A key the caller pressed (bidirectional streams only)."""

    sequence_number: int
    stream_sid: str
    track: str  # "inbound_track"
    digit: str


@dataclass(frozen=True, slots=True)
class Mark:
    """Twilio echoing a mark we sent: the audio queued before it has played, or
    a `clear` flushed it (pending marks are sent back on clear)."""

    sequence_number: int
    stream_sid: str
    name: str


@dataclass(frozen=True, slots=True)
class Stop:
    """The stream ended (call hung up, TwiML moved on, or the stream was stopped)."""

    sequence_number: int
    stream_sid: str
    account_sid: str
    call_sid: str


InboundMessage = Connected | Start | Media | Dtmf | Mark | Stop


# --- outbound: us → Twilio -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OutboundMedia:
    """Audio for Twilio to play; `payload` is decoded mu-law bytes."""

    stream_sid: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class OutboundMark:
    stream_sid: str
    name: str


@dataclass(frozen=True, slots=True)
class OutboundClear:
    stream_sid: str


OutboundMessage = OutboundMedia | OutboundMark | OutboundClear


# --- parsing helpers ------------------------------------------------------------

_MISSING: Final[Any] = object()


def _load(raw: str | bytes, max_bytes: int) -> dict[str, Any]:
    # The size check comes first, so an oversized frame costs no parsing.
    # (len() counts characters for str, bytes for bytes.)
    if len(raw) > max_bytes:
        raise ProtocolError("too_large", f"message of {len(raw)} exceeds the {max_bytes} limit")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError("bad_json", str(exc)) from None
    if type(obj) is not dict:
        raise ProtocolError("not_an_object", f"expected a JSON object, got {_describe(obj)}")
    return obj


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return {
        str: "a string",
        int: "an integer",
        float: "a number",
        list: "an array",
        dict: "an object",
    }.get(type(value), type(value).__name__)


def _field_error(value: Any, where: str, key: str, expected: str) -> ProtocolError:
    path = f"{where}.{key}" if where else key
    if value is _MISSING:
        return ProtocolError("missing_field", f"{path} is missing")
    if type(value) is str:
        return ProtocolError("bad_field", f"{path}: expected {expected}, got {value[:40]!r}")
    return ProtocolError("bad_field", f"{path}: expected {expected}, got {_describe(value)}")


def _str(obj: dict[str, Any], key: str, where: str = "") -> str:
    value = obj.get(key, _MISSING)
    if type(value) is str:
        return value
    raise _field_error(value, where, key, "a string")


def _counter(obj: dict[str, Any], key: str, where: str = "") -> int:
    value = obj.get(key, _MISSING)
    if _is_counter(value):
        return int(value)
    if type(value) is int and value >= 0:
        return value
    raise _field_error(value, where, key, "a non-negative integer")


def _object(obj: dict[str, Any], key: str, where: str = "") -> dict[str, Any]:
    value = obj.get(key, _MISSING)
    if type(value) is dict:
        return value
    raise _field_error(value, where, key, "an object")


def _payload(obj: dict[str, Any], where: str) -> bytes:
    encoded = _str(obj, "payload", where)
    try:
        return a2b_base64(encoded, strict_mode=True)
    except ValueError as exc:  # binascii.Error, or a non-ASCII str
        raise ProtocolError("bad_base64", f"{where}.payload: {exc}") from None


def _event(obj: dict[str, Any]) -> str:
    return _str(obj, "event")


# --- inbound parsing ------------------------------------------------------------


def _is_counter(value: object) -> TypeGuard[str]:
    return (
        type(value) is str
        and value.isascii()
        and value.isdigit()
        and len(value) <= _MAX_COUNTER_DIGITS
    )


def _parse_media(obj: dict[str, Any]) -> Media:
    # Fast path for a well-formed frame: plain lookups and type checks, no
    # helper calls. Anything unusual falls through to the checked path below,
    # which finds the first problem and names it.
    media = obj.get("media")
    if type(media) is dict:
        sequence_number = obj.get("sequenceNumber")
        stream_sid = obj.get("streamSid")
        track = media.get("track")
        chunk = media.get("chunk")
        timestamp = media.get("timestamp")
        payload = media.get("payload")
        if (
            type(stream_sid) is str
            and type(track) is str
            and type(payload) is str
            and _is_counter(sequence_number)
            and _is_counter(chunk)
            and _is_counter(timestamp)
        ):
            try:
                audio = a2b_base64(payload, strict_mode=True)
            except ValueError:
                pass
            else:
                return Media(
                    int(sequence_number), stream_sid, track, int(chunk), int(timestamp), audio
                )
    return _parse_media_checked(obj)


def _parse_media_checked(obj: dict[str, Any]) -> Media:
    media = _object(obj, "media")
    return Media(
        _counter(obj, "sequenceNumber"),
        _str(obj, "streamSid"),
        _str(media, "track", "media"),
        _counter(media, "chunk", "media"),
        _counter(media, "timestamp", "media"),
        _payload(media, "media"),
    )


def _parse_connected(obj: dict[str, Any]) -> Connected:
    return Connected(_str(obj, "protocol"), _str(obj, "version"))


def _parse_start(obj: dict[str, Any]) -> Start:
    sequence_number = _counter(obj, "sequenceNumber")
    start = _object(obj, "start")
    stream_sid = _str(start, "streamSid", "start")
    outer_sid = obj.get("streamSid", _MISSING)
    if outer_sid is not _MISSING and outer_sid != stream_sid:
        raise ProtocolError("bad_field", "streamSid differs from start.streamSid")
    tracks = start.get("tracks", _MISSING)
    if type(tracks) is not list or not all(type(track) is str for track in tracks):
        raise _field_error(tracks, "start", "tracks", "an array of strings")
    fmt = _object(start, "mediaFormat", "start")
    media_format = MediaFormat(
        _str(fmt, "encoding", "start.mediaFormat"),
        _counter(fmt, "sampleRate", "start.mediaFormat"),
        _counter(fmt, "channels", "start.mediaFormat"),
    )
    # Twilio always sends customParameters ({} without <Parameter>); absent means none.
    parameters = start.get("customParameters", {})
    if type(parameters) is not dict:
        raise _field_error(parameters, "start", "customParameters", "an object")
    for name, value in parameters.items():
        if type(value) is not str:
            raise _field_error(value, "start.customParameters", name, "a string")
    return Start(
        sequence_number,
        stream_sid,
        _str(start, "accountSid", "start"),
        _str(start, "callSid", "start"),
        tuple(tracks),
        media_format,
        MappingProxyType(parameters),
    )


def _parse_dtmf(obj: dict[str, Any]) -> Dtmf:
    dtmf = _object(obj, "dtmf")
    return Dtmf(
        _counter(obj, "sequenceNumber"),
        _str(obj, "streamSid"),
        _str(dtmf, "track", "dtmf"),
        _str(dtmf, "digit", "dtmf"),
    )


def _parse_mark(obj: dict[str, Any]) -> Mark:
    mark = _object(obj, "mark")
    return Mark(_counter(obj, "sequenceNumber"), _str(obj, "streamSid"), _str(mark, "name", "mark"))


def _parse_stop(obj: dict[str, Any]) -> Stop:
    stop = _object(obj, "stop")
    return Stop(
        _counter(obj, "sequenceNumber"),
        _str(obj, "streamSid"),
        _str(stop, "accountSid", "stop"),
        _str(stop, "callSid", "stop"),
    )


_INBOUND_PARSERS: Final[dict[str, Callable[[dict[str, Any]], InboundMessage]]] = {
    "connected": _parse_connected,
    "start": _parse_start,
    "dtmf": _parse_dtmf,
    "mark": _parse_mark,
    "stop": _parse_stop,
}


def parse_message(raw: str | bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> InboundMessage:
    """Parse one message from Twilio. Raises `ProtocolError` (kinds in
    `twiml.errors.PARSE_ERROR_KINDS`); never anything else on bad input."""
    obj = _load(raw, max_bytes)
    event = _event(obj)
    if event == "media":  # 50 a second: skip the table
        return _parse_media(obj)
    parser = _INBOUND_PARSERS.get(event)
    if parser is None:
        raise ProtocolError("unknown_event", f"event {event[:40]!r}")
    return parser(obj)


# --- outbound building ------------------------------------------------------------


def _json_string(text: str) -> str:
    # JSON strings only need escaping for '"', '\\' and control characters, none
    # of which is alphanumeric: SIDs (MZ…) take the fast path.
    if text.isalnum():
        return '"' + text + '"'
    return orjson.dumps(text).decode()


def media_message(stream_sid: str, payload: bytes) -> str:
    """`{"event":"media","streamSid":…,"media":{"payload":base64}}` for mu-law `payload`."""
    return (
        '{"event":"media","streamSid":'
        + _json_string(stream_sid)
        + ',"media":{"payload":"'
        + b2a_base64(payload, newline=False).decode("ascii")
        + '"}}'
    )


def mark_message(stream_sid: str, name: str) -> str:
    """`{"event":"mark","streamSid":…,"mark":{"name":…}}`: Twilio echoes it once
    the audio sent before it has played (or been cleared)."""
    return (
        '{"event":"mark","streamSid":'
        + _json_string(stream_sid)
        + ',"mark":{"name":'
        + _json_string(name)
        + "}}"
    )


def clear_message(stream_sid: str) -> str:
    """`{"event":"clear","streamSid":…}`: Twilio drops the audio it has buffered
    and sends back the marks still pending."""
    return '{"event":"clear","streamSid":' + _json_string(stream_sid) + "}"


# --- the mirror image, for tools that play Twilio --------------------------------


def encode_inbound(message: InboundMessage) -> str:
    """Encode a message exactly as Twilio sends it (counters as strings, Twilio's
    key order), so `parse_message(encode_inbound(m)) == m`."""
    if isinstance(message, Media):
        return (
            '{"event":"media","sequenceNumber":"'
            + str(message.sequence_number)
            + '","media":{"track":'
            + _json_string(message.track)
            + ',"chunk":"'
            + str(message.chunk)
            + '","timestamp":"'
            + str(message.timestamp)
            + '","payload":"'
            + b2a_base64(message.payload, newline=False).decode("ascii")
            + '"},"streamSid":'
            + _json_string(message.stream_sid)
            + "}"
        )
    obj: dict[str, Any]
    if isinstance(message, Connected):
        obj = {"event": "connected", "protocol": message.protocol, "version": message.version}
    elif isinstance(message, Start):
        fmt = message.media_format
        obj = {
            "event": "start",
            "sequenceNumber": str(message.sequence_number),
            "start": {
                "accountSid": message.account_sid,
                "streamSid": message.stream_sid,
                "callSid": message.call_sid,
                "tracks": list(message.tracks),
                "mediaFormat": {
                    "encoding": fmt.encoding,
                    "sampleRate": fmt.sample_rate,
                    "channels": fmt.channels,
                },
                "customParameters": dict(message.custom_parameters),
            },
            "streamSid": message.stream_sid,
        }
    elif isinstance(message, Dtmf):
        obj = {
            "event": "dtmf",
            "streamSid": message.stream_sid,
            "sequenceNumber": str(message.sequence_number),
            "dtmf": {"track": message.track, "digit": message.digit},
        }
    elif isinstance(message, Mark):
        obj = {
            "event": "mark",
            "sequenceNumber": str(message.sequence_number),
            "streamSid": message.stream_sid,
            "mark": {"name": message.name},
        }
    else:
        obj = {
            "event": "stop",
            "sequenceNumber": str(message.sequence_number),
            "streamSid": message.stream_sid,
            "stop": {"accountSid": message.account_sid, "callSid": message.call_sid},
        }
    return orjson.dumps(obj).decode()


def parse_outbound(raw: str | bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> OutboundMessage:
    """Parse a message a server sends to Twilio (`media`, `mark`, `clear`).
    Raises `ProtocolError` with the same kinds as `parse_message`."""
    obj = _load(raw, max_bytes)
    event = _event(obj)
    if event == "media":
        return OutboundMedia(_str(obj, "streamSid"), _payload(_object(obj, "media"), "media"))
    if event == "mark":
        return OutboundMark(_str(obj, "streamSid"), _str(_object(obj, "mark"), "name", "mark"))
    if event == "clear":
        return OutboundClear(_str(obj, "streamSid"))
    raise ProtocolError("unknown_event", f"event {event[:40]!r}")
