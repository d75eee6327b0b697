"""The media socket's direct lane (agent/media_lane.py) on the real server."""

from __future__ import annotations

from server import running_server

from agent.events import CallEndedEvent
from agent.media_lane import HIGH_WATER, DirectMediaSocket
from media.frames import FRAME_BYTES, MULAW_SILENCE
from twiml.messages import Media, encode_inbound

SILENCE = bytes([MULAW_SILENCE]) * FRAME_BYTES


async def test_the_server_serves_sessions_on_the_direct_lane():
    async with running_server() as server, server.call() as stream:
        await stream.silence(100)
        [session] = server.services.sessions
        assert isinstance(session._socket, DirectMediaSocket)
        assert session.metrics.frames_in == 5
        assert stream.received  # the greeting came back over the lane's batched writes


async def test_a_burst_beyond_the_high_water_mark_is_read_in_full_and_in_order():
    frames = HIGH_WATER * 8
    async with running_server() as server, server.call() as stream:
        # all at once, no waiting: reading pauses at the high-water mark and resumes as the session catches up
        for i in range(frames):
            stream.chunk += 1
            await stream.send_raw(
                encode_inbound(Media(stream._next(), stream.stream_sid, "inbound", stream.chunk, i * 20, SILENCE))
            )
        stream.now_ms = frames * 20
        await stream.sync()
        [session] = server.services.sessions
        assert session.metrics.frames_in == frames
        assert not session.conn.errors  # no gap, nothing out of order
        await stream.stop()
    ended = server.of_type(stream.call_sid, CallEndedEvent)
    assert ended and ended[0].reason == "stop"
