"""Media Streams messages: recorded shapes, round trips, exact errors."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from types import MappingProxyType

import orjson
import pytest

from twiml.errors import PARSE_ERROR_KINDS, ProtocolError, RemoteProtocolError
from twiml.messages import (
    Connected,
    Dtmf,
    Mark,
    Media,
    MediaFormat,
    OutboundClear,
    OutboundMark,
    OutboundMedia,
    Start,
    Stop,
    clear_message,
    encode_inbound,
    mark_message,
    media_message,
    parse_message,
    parse_outbound,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "twilio"
MZ = "MZ5174a2d3c8e9f0b1a4c6d8e0f2a3b5c7"
CA = "CA4539f1e2d3c4b5a6978877665544332a"
AC = "AC7e2b0c1d9f4a6b8c3e5d7f9a1b2c4d6e"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text().strip()


def media_payload() -> bytes:
    return base64.b64decode(json.loads(fixture("media.json"))["media"]["payload"])


def without(obj: dict[str, object], path: str) -> str:
    """The JSON of `obj` with the field at dotted `path` removed."""
    *parents, last = path.split(".")
    inner = obj
    for key in parents:
        inner = inner[key]
    del inner[last]
    return json.dumps(obj)


def replaced(obj: dict[str, object], path: str, value: object) -> str:
    *parents, last = path.split(".")
    inner = obj
    for key in parents:
        inner = inner[key]
    inner[last] = value
    return json.dumps(obj)


def error_of(raw: str | bytes, **kwargs: int) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        parse_message(raw, **kwargs)
    return caught.value


# --- recorded shapes ----------------------------------------------------------


def test_connected() -> None:
    assert parse_message(fixture("connected.json")) == Connected(protocol="Call", version="1.0.0")


def test_start_with_custom_parameters() -> None:
    start = parse_message(fixture("start.json"))
    assert start == Start(
        sequence_number=1,
        stream_sid=MZ,
        account_sid=AC,
        call_sid=CA,
        tracks=("inbound",),
        media_format=MediaFormat(encoding="audio/x-mulaw", sample_rate=8000, channels=1),
        custom_parameters={
            "From": "+15551230000",
            "To": "+15557650000",
            "CallerName": "Ada O'Neil & Co",
        },
    )
    assert isinstance(start, Start)
    assert isinstance(start.custom_parameters, MappingProxyType)
    with pytest.raises(TypeError):
        start.custom_parameters["From"] = "+1"
    hash(start)  # custom_parameters is left out of the hash


def test_media_payload_is_decoded_mulaw() -> None:
    media = parse_message(fixture("media.json"))
    assert media == Media(
        sequence_number=2,
        stream_sid=MZ,
        track="inbound",
        chunk=1,
        timestamp=155,
        payload=media_payload(),
    )
    assert isinstance(media, Media)
    assert len(media.payload) == 160


def test_dtmf() -> None:
    assert parse_message(fixture("dtmf.json")) == Dtmf(
        sequence_number=5, stream_sid=MZ, track="inbound_track", digit="1"
    )


def test_mark() -> None:
    assert parse_message(fixture("mark.json")) == Mark(
        sequence_number=4, stream_sid=MZ, name="my label"
    )


def test_stop() -> None:
    assert parse_message(fixture("stop.json")) == Stop(
        sequence_number=378, stream_sid=MZ, account_sid=AC, call_sid=CA
    )


def test_one_way_stream_from_an_older_capture() -> None:
    assert parse_message(fixture("oneway_connected.json")) == Connected("Call", "0.2.0")
    start = parse_message(fixture("oneway_start.json"))
    assert isinstance(start, Start)
    assert dict(start.custom_parameters) == {"hello": "HelloValue"}


def test_bytes_are_parsed_like_text() -> None:
    raw = fixture("media.json")
    assert parse_message(raw.encode()) == parse_message(raw)


INBOUND_FIXTURES = [
    "connected.json",
    "start.json",
    "media.json",
    "dtmf.json",
    "mark.json",
    "stop.json",
    "oneway_connected.json",
    "oneway_start.json",
]


@pytest.mark.parametrize("name", INBOUND_FIXTURES)
def test_encode_inbound_round_trips(name: str) -> None:
    message = parse_message(fixture(name))
    encoded = encode_inbound(message)
    assert parse_message(encoded) == message
    # Twilio's own key order and counters as strings: byte for byte the capture.
    assert encoded == fixture(name)


def test_encode_inbound_escapes_text() -> None:
    mark = Mark(sequence_number=9, stream_sid=MZ, name='say "hi"\\\n')
    assert parse_message(encode_inbound(mark)) == mark
    media = Media(3, 'odd "sid"', 'tr"ack', 2, 175, b"\xff" * 160)
    assert parse_message(encode_inbound(media)) == media


def test_start_copies_a_plain_dict_into_a_read_only_mapping() -> None:
    parameters = {"a": "1"}
    start = Start(1, MZ, AC, CA, ("inbound",), MediaFormat("audio/x-mulaw", 8000, 1), parameters)
    parameters["a"] = "changed"
    assert start.custom_parameters == {"a": "1"}


def test_unknown_fields_are_ignored() -> None:
    obj = json.loads(fixture("media.json"))
    obj["extra"] = {"anything": [1, 2]}
    obj["media"]["new"] = "field"
    assert parse_message(json.dumps(obj)) == parse_message(fixture("media.json"))


def test_counters_may_also_be_json_integers() -> None:
    obj = json.loads(fixture("media.json"))
    obj["sequenceNumber"] = 2
    obj["media"]["chunk"] = 1
    obj["media"]["timestamp"] = 155
    assert parse_message(json.dumps(obj)) == parse_message(fixture("media.json"))


def test_start_without_custom_parameters_has_none() -> None:
    start = parse_message(without(json.loads(fixture("start.json")), "start.customParameters"))
    assert isinstance(start, Start)
    assert start.custom_parameters == {}


# --- exact errors -----------------------------------------------------------------


def test_errors_say_the_peer_is_at_fault() -> None:
    error = error_of("{")
    assert isinstance(error, RemoteProtocolError)
    assert error.kind == "bad_json"
    assert str(error).startswith("bad_json: ")


def test_too_large_is_checked_before_parsing() -> None:
    raw = '{"event":"media",' + " " * 70_000 + "}"
    assert error_of(raw).kind == "too_large"
    assert error_of("not even json" * 10, max_bytes=20).kind == "too_large"
    assert parse_message(fixture("connected.json"), max_bytes=100) == Connected("Call", "1.0.0")


@pytest.mark.parametrize(
    "raw",
    ["", "{", "nope", '{"event":"media"', b"\xff\xfe", '{"a":1}{"b":2}', '{"event": NaN}'],
)
def test_bad_json(raw: str | bytes) -> None:
    assert error_of(raw).kind == "bad_json"


@pytest.mark.parametrize("raw", ["[]", '"media"', "42", "null", "true", '[{"event":"media"}]'])
def test_not_an_object(raw: str) -> None:
    assert error_of(raw).kind == "not_an_object"


@pytest.mark.parametrize("event", ["clear", "Media", "", "closed", "start "])
def test_unknown_event(event: str) -> None:
    error = error_of(json.dumps({"event": event, "streamSid": MZ}))
    assert error.kind == "unknown_event"


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("media.json", "event"),
        ("media.json", "sequenceNumber"),
        ("media.json", "streamSid"),
        ("media.json", "media"),
        ("media.json", "media.track"),
        ("media.json", "media.chunk"),
        ("media.json", "media.timestamp"),
        ("media.json", "media.payload"),
        ("connected.json", "protocol"),
        ("connected.json", "version"),
        ("start.json", "sequenceNumber"),
        ("start.json", "start"),
        ("start.json", "start.streamSid"),
        ("start.json", "start.accountSid"),
        ("start.json", "start.callSid"),
        ("start.json", "start.tracks"),
        ("start.json", "start.mediaFormat"),
        ("start.json", "start.mediaFormat.encoding"),
        ("start.json", "start.mediaFormat.sampleRate"),
        ("start.json", "start.mediaFormat.channels"),
        ("dtmf.json", "streamSid"),
        ("dtmf.json", "dtmf"),
        ("dtmf.json", "dtmf.digit"),
        ("dtmf.json", "dtmf.track"),
        ("mark.json", "mark.name"),
        ("mark.json", "sequenceNumber"),
        ("stop.json", "stop"),
        ("stop.json", "stop.callSid"),
        ("stop.json", "stop.accountSid"),
    ],
)
def test_missing_field(name: str, path: str) -> None:
    error = error_of(without(json.loads(fixture(name)), path))
    assert error.kind == "missing_field"
    assert error.detail == f"{path} is missing"


@pytest.mark.parametrize(
    ("name", "path", "value"),
    [
        ("media.json", "event", 1),
        ("media.json", "sequenceNumber", "2a"),
        ("media.json", "sequenceNumber", "-2"),
        ("media.json", "sequenceNumber", "+2"),
        ("media.json", "sequenceNumber", " 2"),
        ("media.json", "sequenceNumber", "1_000"),
        ("media.json", "sequenceNumber", "٣"),  # a digit, but not an ASCII one
        ("media.json", "sequenceNumber", ""),
        ("media.json", "sequenceNumber", "9" * 19),
        ("media.json", "sequenceNumber", -1),
        ("media.json", "sequenceNumber", 2.0),
        ("media.json", "sequenceNumber", True),
        ("media.json", "sequenceNumber", None),
        ("media.json", "streamSid", 5),
        ("media.json", "media", "payload"),
        ("media.json", "media.track", ["inbound"]),
        ("media.json", "media.chunk", "one"),
        ("media.json", "media.timestamp", "1.5"),
        ("media.json", "media.payload", None),
        ("start.json", "start", []),
        ("start.json", "streamSid", "MZother"),
        ("start.json", "start.tracks", "inbound"),
        ("start.json", "start.tracks", ["inbound", 1]),
        ("start.json", "start.mediaFormat", "audio/x-mulaw"),
        ("start.json", "start.mediaFormat.sampleRate", "8k"),
        ("start.json", "start.customParameters", ["From"]),
        ("start.json", "start.customParameters.From", 15551230000),
        ("dtmf.json", "dtmf.digit", 1),
        ("mark.json", "mark", "my label"),
        ("mark.json", "mark.name", {"n": 1}),
        ("stop.json", "stop.callSid", False),
    ],
)
def test_bad_field(name: str, path: str, value: object) -> None:
    error = error_of(replaced(json.loads(fixture(name)), path, value))
    assert error.kind == "bad_field"
    assert error.detail.startswith(path)


@pytest.mark.parametrize(
    "payload",
    [
        "abc",  # incorrect padding
        "ab$=",  # not in the alphabet
        "YWJj\nZA==",  # a newline, which lenient decoders skip
        "=YWJj",  # leading padding
        "YW==Jj",  # padding in the middle
        "YWJjZA==YQ==",  # data after padding
        "ÿÿÿÿ",  # not ASCII
    ],
)
def test_bad_base64(payload: str) -> None:
    error = error_of(replaced(json.loads(fixture("media.json")), "media.payload", payload))
    assert error.kind == "bad_base64"


def test_every_parse_error_kind_is_covered_above() -> None:
    # The list in errors.py is what metrics pre-register; keep it honest.
    assert set(PARSE_ERROR_KINDS) == {
        "too_large",
        "bad_json",
        "not_an_object",
        "unknown_event",
        "missing_field",
        "bad_field",
        "bad_base64",
    }


# --- outbound: us → Twilio ----------------------------------------------------------


def test_media_message_shape() -> None:
    payload = media_payload()
    raw = media_message(MZ, payload)
    assert orjson.loads(raw) == {
        "event": "media",
        "streamSid": MZ,
        "media": {"payload": base64.b64encode(payload).decode()},
    }
    assert raw == fixture("outbound_media.json")


def test_mark_message_shape() -> None:
    raw = mark_message(MZ, "utterance-3")
    assert orjson.loads(raw) == {"event": "mark", "streamSid": MZ, "mark": {"name": "utterance-3"}}
    assert raw == fixture("outbound_mark.json")


def test_clear_message_shape() -> None:
    raw = clear_message(MZ)
    assert orjson.loads(raw) == {"event": "clear", "streamSid": MZ}
    assert raw == fixture("outbound_clear.json")


@pytest.mark.parametrize(
    "name", ['say "hi"', "back\\slash", "new\nline", "tab\t", "\x00nul", "ünïcode ✓", ""]
)
def test_mark_names_are_escaped(name: str) -> None:
    assert orjson.loads(mark_message(MZ, name))["mark"]["name"] == name
    assert orjson.loads(mark_message('M"Z', name))["streamSid"] == 'M"Z'


def test_parse_outbound() -> None:
    payload = media_payload()
    assert parse_outbound(fixture("outbound_media.json")) == OutboundMedia(MZ, payload)
    assert parse_outbound(fixture("outbound_mark.json")) == OutboundMark(MZ, "utterance-3")
    assert parse_outbound(fixture("outbound_clear.json")) == OutboundClear(MZ)
    assert parse_outbound(media_message(MZ, b"")) == OutboundMedia(MZ, b"")
    assert parse_outbound(mark_message(MZ, 'a "b"')) == OutboundMark(MZ, 'a "b"')


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        ("{", "bad_json"),
        ("[]", "not_an_object"),
        ('{"event":"start","streamSid":"MZ1"}', "unknown_event"),
        ('{"event":"clear"}', "missing_field"),
        ('{"event":"mark","streamSid":"MZ1","mark":{}}', "missing_field"),
        ('{"event":"media","streamSid":"MZ1","media":{"payload":7}}', "bad_field"),
        ('{"event":"media","streamSid":"MZ1","media":{"payload":"abc"}}', "bad_base64"),
        ('{"event":"clear","streamSid":"' + "M" * 70_000 + '"}', "too_large"),
    ],
)
def test_parse_outbound_errors(raw: str, kind: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_outbound(raw)
    assert caught.value.kind == kind
