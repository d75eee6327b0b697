"""Archive jobs as bytes: what travels from the call (or a Twilio callback) to a worker.

A job is one self-describing blob, the same in the spool folder and in the
Redis stream:

    b"CSJOB1\\n" | header length (4 bytes, big-endian) | JSON header | blobs…

The header says the kind (`call` or `recording`), the fields, and the length
of each blob that follows (a call's two mu-law tracks, 8 KB per second each).
Audio travels as mu-law, not as the rendered 16-bit WAV: half the bytes, and
the worker renders the files (agent/archive_render.py). Nothing secret is in a
job: the record is already redacted, and Twilio credentials stay with the
worker's settings.

Pure: no I/O, tested by round trips.
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Any

import orjson

from agent.events import EVENT_TYPES, FeedEvent
from agent.ports import CallRecord, RecordingJob
from media.recording import CallRecording

MAGIC = b"CSJOB1\n"
_LEN = struct.Struct(">I")

Job = CallRecord | RecordingJob


class JobDecodeError(ValueError):
    """The bytes are not a job this version can read (never retried: dead-lettered)."""


def encode_job(job: Job) -> bytes:
    if isinstance(job, CallRecord):
        caller = job.recording.caller_mulaw()
        agent = job.recording.agent_mulaw()
        header: dict[str, Any] = {
            "kind": "call",
            "record": _record_fields(job),
            "truncated": job.recording.truncated,
            "blobs": [len(caller), len(agent)],
        }
        blobs = [caller, agent]
    else:
        header = {"kind": "recording", "job": dataclasses.asdict(job), "blobs": []}
        blobs = []
    raw = orjson.dumps(header)
    return b"".join([MAGIC, _LEN.pack(len(raw)), raw, *blobs])


def decode_job(data: bytes) -> Job:
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + _LEN.size:
        raise JobDecodeError("not an archive job (bad magic)")
    at = len(MAGIC)
    (size,) = _LEN.unpack_from(data, at)
    at += _LEN.size
    try:
        header = orjson.loads(data[at : at + size])
        at += size
        blobs = []
        for length in header["blobs"]:
            if at + length > len(data):
                raise JobDecodeError("archive job is truncated")
            blobs.append(data[at : at + length])
            at += length
        if header["kind"] == "call":
            recording = CallRecording.from_tracks(blobs[0], blobs[1], truncated=header["truncated"])
            return _record_from(header["record"], recording)
        if header["kind"] == "recording":
            return RecordingJob(**header["job"])
    except JobDecodeError:
        raise
    except (orjson.JSONDecodeError, KeyError, TypeError, IndexError, ValueError) as exc:
        raise JobDecodeError(f"archive job header is malformed: {exc!r}") from None
    raise JobDecodeError(f"unknown archive job kind {header.get('kind')!r}")


def _record_fields(record: CallRecord) -> dict[str, Any]:
    fields = {f.name: getattr(record, f.name) for f in dataclasses.fields(record) if f.name != "recording"}
    fields["slots"] = dict(record.slots)
    fields["malformed"] = dict(record.malformed)
    fields["events"] = [e.to_dict() for e in record.events]
    return fields


def _record_from(fields: dict[str, Any], recording: CallRecording) -> CallRecord:
    fields = dict(fields)
    fields["events"] = tuple(event_from_dict(e) for e in fields["events"])
    for name in ("path", "bargein_ms", "response_ms"):
        fields[name] = tuple(fields[name])
    return CallRecord(recording=recording, **fields)


def event_from_dict(data: dict[str, Any]) -> FeedEvent:
    """The inverse of `FeedEvent.to_dict` (unknown keys are ignored)."""
    cls = EVENT_TYPES.get(data.get("type", ""), FeedEvent)
    values = {("from_" if k == "from" else k): v for k, v in data.items() if k != "type"}
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in values.items() if k in names}
    if isinstance(values.get("path"), list):
        values["path"] = tuple(values["path"])
    return cls(**values)


def peek_call_sid(data: bytes) -> str:
    """The job's call SID from its header alone (for log lines); "-" if unreadable."""
    try:
        (size,) = _LEN.unpack_from(data, len(MAGIC))
        header = orjson.loads(data[len(MAGIC) + _LEN.size : len(MAGIC) + _LEN.size + size])
        body = header.get("record") or header.get("job") or {}
        return str(body.get("call_sid", "-"))
    except (struct.error, orjson.JSONDecodeError, AttributeError):
        return "-"
