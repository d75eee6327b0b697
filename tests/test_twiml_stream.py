"""StreamConnection: states, every error kind, marks, outbound frames."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from twiml.errors import (
    STREAM_ERROR_KINDS,
    LocalProtocolError,
    StreamNotStarted,
    StreamStopped,
)
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
    encode_inbound,
    parse_outbound,
)
from twiml.stream import StreamConnection, StreamState

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "twilio"
MZ = "MZ5174a2d3c8e9f0b1a4c6d8e0f2a3b5c7"
CA = "CA4539f1e2d3c4b5a6978877665544332a"
AC = "AC7e2b0c1d9f4a6b8c3e5d7f9a1b2c4d6e"
MULAW = MediaFormat("audio/x-mulaw", 8000, 1)
FRAME = b"\xff" * 160


def connected() -> str:
    return encode_inbound(Connected("Call", "1.0.0"))


def start(seq: int = 1, *, sid: str = MZ, fmt: MediaFormat = MULAW) -> str:
    return encode_inbound(Start(seq, sid, AC, CA, ("inbound",), fmt, {"From": "+15551230000"}))


def media(seq: int, *, sid: str = MZ, track: str = "inbound", payload: bytes = FRAME) -> str:
    chunk = max(seq - 1, 1)
    return encode_inbound(Media(seq, sid, track, chunk, 135 + 20 * chunk, payload))


def dtmf(seq: int, digit: str = "1", *, sid: str = MZ) -> str:
    return encode_inbound(Dtmf(seq, sid, "inbound_track", digit))


def mark(seq: int, name: str, *, sid: str = MZ) -> str:
    return encode_inbound(Mark(seq, sid, name))


def stop(seq: int, *, sid: str = MZ) -> str:
    return encode_inbound(Stop(seq, sid, AC, CA))


def streaming() -> StreamConnection:
    conn = StreamConnection()
    assert conn.receive_text(connected()) is not None
    assert conn.receive_text(start()) is not None
    return conn


def stopped() -> StreamConnection:
    conn = streaming()
    assert conn.receive_text(stop(2)) is not None
    return conn


# --- the happy path -----------------------------------------------------------


def test_a_call_from_connected_to_stop() -> None:
    conn = StreamConnection()
    assert conn.state is StreamState.AWAITING_CONNECTED
    assert conn.stream_sid is None and conn.call_sid is None and conn.start is None

    assert conn.receive_text((FIXTURES / "connected.json").read_text()) == Connected(
        "Call", "1.0.0"
    )
    assert conn.state is StreamState.AWAITING_START

    started = conn.receive_text((FIXTURES / "start.json").read_text())
    assert isinstance(started, Start)
    assert conn.state is StreamState.STREAMING
    assert conn.start is started
    assert conn.stream_sid == MZ and conn.call_sid == CA

    frame = conn.receive_text((FIXTURES / "media.json").read_text())
    assert isinstance(frame, Media) and len(frame.payload) == 160
    assert isinstance(conn.receive_text(media(3)), Media)
    conn.send_mark("greeting")
    assert conn.receive_text(mark(4, "greeting")) == Mark(4, MZ, "greeting")
    assert conn.receive_text(dtmf(5, "#")) == Dtmf(5, MZ, "inbound_track", "#")
    assert conn.receive_text(stop(6)) == Stop(6, MZ, AC, CA)
    assert conn.state is StreamState.STOPPED

    assert conn.errors == Counter()
    assert conn.last_error is None and conn.unusable is None


def test_connected_is_optional() -> None:
    conn = StreamConnection()
    assert isinstance(conn.receive_text(start()), Start)
    assert conn.state is StreamState.STREAMING
    assert isinstance(conn.receive_text(media(2)), Media)
    assert not conn.errors


def test_bytes_frames_are_accepted() -> None:
    conn = StreamConnection()
    assert isinstance(conn.receive_text(start().encode()), Start)
    assert isinstance(conn.receive_text(media(2).encode()), Media)


# --- every error kind, exactly ----------------------------------------------------
# Each case: a connection in some state, one frame, whether the frame is
# accepted anyway, and the single kind it must be counted as.


def _fresh() -> StreamConnection:
    return StreamConnection()


def _awaiting_start() -> StreamConnection:
    conn = StreamConnection()
    conn.receive_text(connected())
    return conn


def _with_mark_sent() -> StreamConnection:
    conn = streaming()
    conn.send_mark("a")
    return conn


def _after_media(seq: int) -> StreamConnection:
    conn = streaming()
    for n in range(2, seq + 1):
        assert conn.receive_text(media(n)) is not None
    return conn


Case = tuple[str, Callable[[], StreamConnection], str, bool]

CASES: list[Case] = [
    ("media_before_start", _fresh, media(2), False),
    ("media_before_start", _awaiting_start, media(2), False),
    ("dtmf_before_start", _fresh, dtmf(2), False),
    ("dtmf_before_start", _awaiting_start, dtmf(2), False),
    ("mark_before_start", _fresh, mark(2, "a"), False),
    ("mark_before_start", _awaiting_start, mark(2, "a"), False),
    ("stop_before_start", _fresh, stop(2), False),
    ("stop_before_start", _awaiting_start, stop(2), False),
    ("duplicate_connected", _awaiting_start, connected(), False),
    ("duplicate_connected", streaming, connected(), False),
    ("duplicate_start", streaming, start(2), False),
    ("unsupported_format", _fresh, start(fmt=MediaFormat("audio/x-alaw", 8000, 1)), False),
    ("unsupported_format", _fresh, start(fmt=MediaFormat("audio/x-mulaw", 16000, 1)), False),
    (
        "unsupported_format",
        _awaiting_start,
        start(fmt=MediaFormat("audio/x-mulaw", 8000, 2)),
        False,
    ),
    ("after_stop", stopped, media(3), False),
    ("after_stop", stopped, dtmf(3), False),
    ("after_stop", stopped, mark(3, "a"), False),
    ("after_stop", stopped, stop(3), False),
    ("after_stop", stopped, start(3), False),
    ("after_stop", stopped, connected(), False),
    ("stream_sid_mismatch", streaming, media(2, sid="MZother"), False),
    ("stream_sid_mismatch", streaming, dtmf(2, sid="MZother"), False),
    ("stream_sid_mismatch", _with_mark_sent, mark(2, "a", sid="MZother"), False),
    ("stream_sid_mismatch", streaming, stop(2, sid="MZother"), False),
    ("sequence_gap", streaming, media(5), True),
    ("sequence_gap", streaming, dtmf(9), True),
    ("sequence_out_of_order", lambda: _after_media(3), media(3), False),
    ("sequence_out_of_order", lambda: _after_media(3), media(2), False),
    ("sequence_out_of_order", lambda: _after_media(3), dtmf(3), True),
    ("sequence_out_of_order", lambda: _after_media(3), stop(1), True),
    ("unexpected_track", streaming, media(2, track="outbound"), False),
    ("bad_size", streaming, media(2, payload=FRAME[:159]), False),
    ("bad_size", streaming, media(2, payload=FRAME + b"\xff"), False),
    ("bad_size", streaming, media(2, payload=b""), False),
    ("unknown_mark", streaming, mark(2, "never sent"), False),
    ("unknown_mark", _with_mark_sent, mark(2, "b"), False),
]


@pytest.mark.parametrize(
    ("kind", "setup", "raw", "accepted"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)]
)
def test_error_kind(
    kind: str, setup: Callable[[], StreamConnection], raw: str, accepted: bool
) -> None:
    conn = setup()
    assert not conn.errors
    state = conn.state
    result = conn.receive_text(raw)
    assert (result is not None) is accepted
    assert conn.errors == Counter({kind: 1})
    assert conn.last_error is not None and conn.last_error.kind == kind
    if not accepted:
        assert conn.state is state  # a rejected frame changes nothing


def test_every_stream_error_kind_has_a_case() -> None:
    assert {case[0] for case in CASES} == set(STREAM_ERROR_KINDS)


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        ("{", "bad_json"),
        ("[1]", "not_an_object"),
        ('{"event":"hello"}', "unknown_event"),
        ('{"event":"media","streamSid":"MZ"}', "missing_field"),
        ('{"event":"connected","protocol":1,"version":"1"}', "bad_field"),
        (media(2).replace('"payload":"', '"payload":"$'), "bad_base64"),
    ],
)
def test_parse_errors_are_counted_not_raised(raw: str, kind: str) -> None:
    conn = streaming()
    assert conn.receive_text(raw) is None
    assert conn.errors == Counter({kind: 1})
    assert conn.state is StreamState.STREAMING


def test_max_message_bytes() -> None:
    conn = StreamConnection(max_message_bytes=200)
    assert conn.receive_text(start()) is None
    assert conn.errors == Counter({"too_large": 1})


def test_frame_bytes_is_configurable() -> None:
    conn = StreamConnection(frame_bytes=320)
    conn.receive_text(start())
    assert conn.receive_text(media(2, payload=b"\xff" * 320)) is not None
    assert conn.receive_text(media(3)) is None
    assert conn.errors == Counter({"bad_size": 1})


# --- details of the checks ---------------------------------------------------------


def test_unsupported_format_leaves_the_stream_unusable() -> None:
    conn = StreamConnection()
    assert conn.receive_text(start(fmt=MediaFormat("audio/l16", 16000, 1))) is None
    assert conn.unusable is not None and conn.unusable.kind == "unsupported_format"
    assert conn.state is StreamState.AWAITING_CONNECTED  # the start never happened
    assert conn.stream_sid is None and conn.start is None
    with pytest.raises(StreamNotStarted):
        conn.send_media(FRAME)
    assert conn.receive_text(media(2)) is None
    assert conn.errors == Counter({"unsupported_format": 1, "media_before_start": 1})
    assert conn.last_error is not None and conn.last_error.kind == "media_before_start"
    assert conn.unusable.kind == "unsupported_format"


def test_after_a_gap_the_sequence_continues_from_the_new_number() -> None:
    conn = streaming()
    assert conn.receive_text(media(2)) is not None
    assert conn.receive_text(media(10)) is not None
    assert conn.receive_text(media(11)) is not None
    assert conn.receive_text(media(9)) is None
    assert conn.errors == Counter({"sequence_gap": 1, "sequence_out_of_order": 1})


def test_a_rejected_frame_still_advances_the_sequence() -> None:
    # Twilio did send it: the next frame is not a gap.
    conn = streaming()
    assert conn.receive_text(media(2, payload=b"\xff" * 10)) is None
    assert conn.receive_text(media(3)) is not None
    assert conn.errors == Counter({"bad_size": 1})


def test_a_foreign_stream_does_not_move_the_sequence() -> None:
    conn = streaming()
    assert conn.receive_text(media(50, sid="MZother")) is None
    assert conn.receive_text(media(2)) is not None
    assert conn.errors == Counter({"stream_sid_mismatch": 1})


def test_a_stop_for_another_stream_does_not_stop_this_one() -> None:
    conn = streaming()
    assert conn.receive_text(stop(2, sid="MZother")) is None
    assert conn.state is StreamState.STREAMING
    assert conn.receive_text(media(2)) is not None


def test_a_late_stop_is_counted_but_still_stops() -> None:
    conn = _after_media(4)
    assert isinstance(conn.receive_text(stop(3)), Stop)
    assert conn.state is StreamState.STOPPED
    assert conn.errors == Counter({"sequence_out_of_order": 1})


def test_last_error_is_the_latest() -> None:
    conn = streaming()
    conn.receive_text("{")
    conn.receive_text(media(2, track="outbound"))
    assert conn.last_error is not None and conn.last_error.kind == "unexpected_track"
    assert conn.errors == Counter({"bad_json": 1, "unexpected_track": 1})


# --- marks -----------------------------------------------------------------------


def test_marks_stay_pending_until_echoed() -> None:
    conn = streaming()
    assert conn.marks_pending == 0
    conn.send_mark("one")
    conn.send_mark("two")
    assert conn.marks_pending == 2
    assert conn.receive_text(mark(2, "one")) is not None
    assert conn.marks_pending == 1
    assert conn.receive_text(mark(3, "two")) is not None
    assert conn.marks_pending == 0
    assert not conn.errors


def test_an_echo_out_of_order_is_accepted() -> None:
    conn = streaming()
    conn.send_mark("one")
    conn.send_mark("two")
    assert conn.receive_text(mark(2, "two")) is not None
    assert conn.receive_text(mark(3, "one")) is not None
    assert conn.marks_pending == 0
    assert not conn.errors


def test_a_name_sent_twice_is_echoed_twice() -> None:
    conn = streaming()
    conn.send_mark("chunk")
    conn.send_mark("chunk")
    assert conn.receive_text(mark(2, "chunk")) is not None
    assert conn.receive_text(mark(3, "chunk")) is not None
    assert conn.receive_text(mark(4, "chunk")) is None
    assert conn.errors == Counter({"unknown_mark": 1})


def test_marks_pending_at_clear_are_still_echoed_and_accepted() -> None:
    conn = streaming()
    for n in range(3):
        conn.send_media(FRAME)
        conn.send_mark(f"frame-{n}")
    assert conn.receive_text(mark(2, "frame-0")) is not None  # played
    conn.send_clear()
    assert conn.marks_pending == 2  # still pending: Twilio sends them back
    assert conn.receive_text(mark(3, "frame-1")) is not None
    assert conn.receive_text(mark(4, "frame-2")) is not None
    assert conn.marks_pending == 0
    assert not conn.errors


def test_a_mark_name_with_quotes_goes_out_as_valid_json() -> None:
    conn = streaming()
    conn.send_mark('say "hi"\n')
    (frame,) = conn.data_to_send()
    assert parse_outbound(frame) == OutboundMark(MZ, 'say "hi"\n')
    assert conn.receive_text(mark(2, 'say "hi"\n')) is not None


# --- sending -----------------------------------------------------------------------


def test_outbound_frames_carry_the_stream_sid_in_order() -> None:
    conn = streaming()
    conn.send_media(FRAME)
    conn.send_mark("m1")
    conn.send_clear()
    frames = conn.data_to_send()
    assert [parse_outbound(frame) for frame in frames] == [
        OutboundMedia(MZ, FRAME),
        OutboundMark(MZ, "m1"),
        OutboundClear(MZ),
    ]
    assert all(orjson.loads(frame)["streamSid"] == MZ for frame in frames)
    assert conn.data_to_send() == []


def test_sending_before_start_is_our_bug() -> None:
    for conn in (StreamConnection(), _awaiting_start()):
        with pytest.raises(StreamNotStarted):
            conn.send_media(FRAME)
        with pytest.raises(StreamNotStarted):
            conn.send_mark("m")
        with pytest.raises(StreamNotStarted):
            conn.send_clear()
        assert conn.data_to_send() == []
        assert conn.marks_pending == 0
    assert issubclass(StreamNotStarted, LocalProtocolError)


def test_sending_after_stop_is_our_bug() -> None:
    conn = stopped()
    for send in (lambda: conn.send_media(FRAME), lambda: conn.send_mark("m"), conn.send_clear):
        with pytest.raises(StreamStopped):
            send()
    assert issubclass(StreamStopped, LocalProtocolError)
    assert conn.data_to_send() == []
