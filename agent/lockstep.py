"""Replay lockstep: exact, speed-independent replays (a callstream extension).

Real Twilio streams audio in real time while our slow work (recognition,
synthesis, REST) runs beside the socket, so *when* a result lands on the media
timeline depends on the machine. `callstream replay --speed max` instead sets
the stream parameter `callstream_lockstep=1` and follows every media frame
with `{"event":"callstream.sync","sync":{"id":N}}`. The session answers
`{"event":"callstream.synced",...}` only after all work for the audio so far
has settled and its output was sent, so every decision lands at the same media
time on any machine and at any speed. Real Twilio never sends either message
(and cannot set the parameter: only our own TwiML sets `<Parameter>`s); a
session not in lockstep treats them as unknown events.
"""

from __future__ import annotations

import orjson

LOCKSTEP_PARAMETER = "callstream_lockstep"
_SYNC_PREFIX = '{"event":"callstream.sync"'


def sync_message(stream_sid: str, sync_id: int) -> str:
    return f'{{"event":"callstream.sync","streamSid":"{stream_sid}","sync":{{"id":"{sync_id}"}}}}'


def is_sync_message(raw: str | bytes) -> bool:
    if isinstance(raw, bytes):
        return raw.startswith(_SYNC_PREFIX.encode())
    return raw.startswith(_SYNC_PREFIX)


def synced_message(raw: str | bytes) -> str:
    """The answer to a sync message: same id."""
    try:
        sync_id = str(orjson.loads(raw)["sync"]["id"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        sync_id = ""
    return orjson.dumps({"event": "callstream.synced", "sync": {"id": sync_id}}).decode()


def is_synced_message(raw: str | bytes) -> bool:
    prefix = '{"event":"callstream.synced"'
    return raw.startswith(prefix.encode() if isinstance(raw, bytes) else prefix)  # type: ignore[arg-type]
