"""Property tests: peer input never makes the stream core raise; round trips hold."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from twiml.errors import ProtocolError
from twiml.messages import (
    Connected,
    Dtmf,
    InboundMessage,
    Mark,
    Media,
    MediaFormat,
    OutboundMark,
    OutboundMedia,
    Start,
    Stop,
    encode_inbound,
    mark_message,
    media_message,
    parse_message,
    parse_outbound,
)
from twiml.stream import StreamConnection, StreamState

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "twilio"
INBOUND = [
    json.loads((FIXTURES / name).read_text())
    for name in (
        "connected.json",
        "start.json",
        "media.json",
        "dtmf.json",
        "mark.json",
        "stop.json",
    )
]
STATE_ORDER = list(StreamState)

# No example database (nothing written to the worktree), no deadline (the
# machine is shared), a few hundred examples: well under a second or two each.
FAST = settings(max_examples=300, deadline=None, database=None)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=10,
)


def streaming() -> StreamConnection:
    conn = StreamConnection()
    conn.receive_text(json.dumps(INBOUND[0]))
    conn.receive_text(json.dumps(INBOUND[1]))
    assert conn.state is StreamState.STREAMING
    return conn


def check_receive(conn: StreamConnection, raw: str | bytes) -> None:
    before = conn.errors.total()
    state = STATE_ORDER.index(conn.state)
    result = conn.receive_text(raw)
    assert result is None or isinstance(result, Connected | Start | Media | Dtmf | Mark | Stop)
    if result is None:  # a rejected frame is always counted (maybe under two kinds)
        assert conn.errors.total() > before
    assert STATE_ORDER.index(conn.state) >= state  # states only move forward


@FAST
@given(st.text())
def test_arbitrary_text_never_raises(raw: str) -> None:
    check_receive(StreamConnection(), raw)
    check_receive(streaming(), raw)


@FAST
@given(st.binary())
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    check_receive(StreamConnection(), raw)
    check_receive(streaming(), raw)


@st.composite
def mutated_messages(draw: st.DrawFn) -> str:
    """A real message with one field replaced, removed or added, anywhere in it."""
    obj = json.loads(json.dumps(draw(st.sampled_from(INBOUND))))
    holders: list[dict[str, Any]] = []

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            holders.append(node)
            for value in node.values():
                collect(value)

    collect(obj)
    holder = draw(st.sampled_from(holders))
    action = draw(st.sampled_from(["replace", "remove", "add"]))
    if action == "add" or not holder:
        holder[draw(st.text(max_size=12))] = draw(json_values)
    else:
        key = draw(st.sampled_from(sorted(holder)))
        if action == "remove":
            del holder[key]
        else:
            holder[key] = draw(json_values)
    return json.dumps(obj)


@FAST
@given(mutated_messages())
def test_mutated_messages_never_raise(raw: str) -> None:
    check_receive(StreamConnection(), raw)
    check_receive(streaming(), raw)


@FAST
@given(
    st.lists(st.sampled_from([json.dumps(m) for m in INBOUND]) | mutated_messages(), max_size=12)
)
def test_any_sequence_of_frames_never_raises(frames: list[str]) -> None:
    conn = StreamConnection()
    for raw in frames:
        check_receive(conn, raw)


@FAST
@given(st.text() | st.binary())
def test_parse_message_raises_only_protocol_errors(raw: str | bytes) -> None:
    with contextlib.suppress(ProtocolError):
        parse_message(raw)


counters = st.integers(min_value=0, max_value=10**18 - 1)
texts = st.text(max_size=30)

inbound_messages = st.one_of(
    st.builds(Connected, texts, texts),
    st.builds(
        Start,
        counters,
        texts,
        texts,
        texts,
        st.lists(texts, max_size=3).map(tuple),
        st.builds(MediaFormat, texts, counters, counters),
        st.dictionaries(texts, texts, max_size=4),
    ),
    st.builds(Media, counters, texts, texts, counters, counters, st.binary(max_size=400)),
    st.builds(Dtmf, counters, texts, texts, texts),
    st.builds(Mark, counters, texts, texts),
    st.builds(Stop, counters, texts, texts, texts),
)


@FAST
@given(inbound_messages)
def test_encode_inbound_round_trips(message: InboundMessage) -> None:
    assert parse_message(encode_inbound(message), max_bytes=1 << 20) == message


@FAST
@given(texts, st.binary(max_size=400), texts)
def test_outbound_round_trips(stream_sid: str, payload: bytes, name: str) -> None:
    assert parse_outbound(media_message(stream_sid, payload)) == OutboundMedia(stream_sid, payload)
    assert parse_outbound(mark_message(stream_sid, name)) == OutboundMark(stream_sid, name)
