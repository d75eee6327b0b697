"""A finished call as the archive's files: CallRecord → {name: bytes}.

DESIGN.md "Archive": one folder per call, `{yyyy}/{mm}/{dd}/{call_sid}/` (the
UTC day the stream started), holding

- `audio.wav` — stereo 8 kHz 16-bit PCM, left the caller, right the agent, on
  the media timeline (the agent track holds what Twilio played; cleared audio
  is not in it);
- `transcript.json` — the turns in order of start: speaker, start/end ms,
  text, confidence (caller), and for an agent turn cut by barge-in
  `interrupted`, what was heard (`heard_text`, `heard_ms`) beside the full prompt;
- `transcript.vtt` — the same turns as WebVTT cues with voice spans
  (`<v Caller>`), per the W3C WebVTT spec;
- `call.json` — metadata (numbers masked), flow path, slots (sensitive ones
  `***`), timings, barge-in and response latencies, outcome, end reason,
  malformed message counts, and every published feed event.

A later stream of the same call (the agent resumed after a failed transfer
or a voicemail) is a `continuation`: its files go in `{call folder}/{stream_sid}/`
so the first stream's are never overwritten. `call.json` is written last by
the worker, so its presence means the call's files are complete.

Everything here was redacted before it reached the record (sensitive slots,
DTMF and speech in sensitive states); the caller track is silent while a
sensitive state listens (agent/session_listen.py). Pure: bytes out, no I/O.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Any

import orjson

from agent.events import ActionEvent, BargeInEvent, TranscriptFinalEvent
from agent.ports import CallRecord
from media.frames import SAMPLE_RATE
from media.wav import wav_bytes

SCHEMA = 1
CALL_FILES = ("audio.wav", "transcript.json", "transcript.vtt", "call.json")  # call.json last
CONTENT_TYPES = {
    ".wav": "audio/wav",
    ".json": "application/json",
    ".vtt": "text/vtt; charset=utf-8",
}

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def content_type(name: str) -> str:
    for suffix, kind in CONTENT_TYPES.items():
        if name.endswith(suffix):
            return kind
    return "application/octet-stream"


def safe_part(value: str) -> str:
    """A key segment from outside input (a SID): nothing that could climb out of the folder."""
    return _UNSAFE.sub("_", value)[:64] or "unknown"


def day_of(unix_ms: int) -> date:
    return datetime.fromtimestamp(unix_ms / 1000, UTC).date()


def call_folder(call_sid: str, day: date) -> str:
    return f"{day:%Y/%m/%d}/{safe_part(call_sid)}"


def record_folder(record: CallRecord) -> str:
    folder = call_folder(record.call_sid, day_of(record.started_at_ms))
    if record.continuation:
        folder += "/" + safe_part(record.stream_sid)
    return folder


def render_call(record: CallRecord) -> dict[str, bytes]:
    """The call's files, in `CALL_FILES` order (call.json last)."""
    turns = transcript_turns(record)
    audio = wav_bytes(record.recording.stereo(), SAMPLE_RATE)
    return {
        "audio.wav": audio,
        "transcript.json": _json({"call_sid": record.call_sid, "stream_sid": record.stream_sid, "turns": turns}),
        "transcript.vtt": render_vtt(turns).encode(),
        "call.json": _json(call_metadata(record, turns)),
    }


def transcript_turns(record: CallRecord) -> list[dict[str, Any]]:
    """Caller and agent turns from the record's transcript.final events, by start time.

    An interrupted agent turn's event carries what the caller heard; the full
    prompt comes from the `say` action with the same say_id, which the
    barge-in event just before it names (agent/session_listen.py publishes the pair).
    """
    said: dict[int, str] = {}
    turns: list[dict[str, Any]] = []
    previous: object = None
    for event in record.events:
        if isinstance(event, ActionEvent) and event.action == "say":
            said[int(event.detail.get("say_id", -1))] = str(event.detail.get("text", ""))
        elif isinstance(event, TranscriptFinalEvent):
            turn: dict[str, Any] = {
                "speaker": event.speaker,
                "start_ms": event.start_ms,
                "end_ms": event.end_ms,
                "text": event.text,
            }
            if event.speaker == "caller":
                turn["confidence"] = event.confidence
            else:
                turn["interrupted"] = event.interrupted
                if event.interrupted:
                    if isinstance(previous, BargeInEvent) and previous.say_id in said:
                        turn["text"] = said[previous.say_id]
                    turn["heard_text"] = event.text
                    turn["heard_ms"] = event.heard_ms
            turns.append(turn)
        previous = event
    turns.sort(key=lambda t: (t["start_ms"], t["end_ms"]))
    return turns


def render_vtt(turns: list[dict[str, Any]]) -> str:
    """WebVTT: `WEBVTT`, then per turn a cue `start --> end` and `<v Speaker>text`.

    Cue text escapes `&`, `<` and `>` (so it can never hold `-->`); a cue's end
    must be after its start. Turns with nothing recognised get no cue.
    """
    lines = ["WEBVTT", ""]
    n = 0
    for turn in turns:
        text = turn.get("heard_text") if turn.get("interrupted") else turn["text"]
        if not text:
            continue
        n += 1
        start = int(turn["start_ms"])
        end = max(int(turn["end_ms"]), start + 1)
        speaker = "Caller" if turn["speaker"] == "caller" else "Agent"
        suffix = " [interrupted]" if turn.get("interrupted") else ""
        lines += [str(n), f"{_vtt_time(start)} --> {_vtt_time(end)}", f"<v {speaker}>{_vtt_escape(text)}{suffix}", ""]
    return "\n".join(lines)


def call_metadata(record: CallRecord, turns: list[dict[str, Any]]) -> dict[str, Any]:
    started = datetime.fromtimestamp(record.started_at_ms / 1000, UTC)
    recording = record.recording
    return {
        "schema": SCHEMA,
        "call_sid": record.call_sid,
        "stream_sid": record.stream_sid,
        "account_sid": record.account_sid,
        "continuation": record.continuation,
        "flow": record.flow,
        "from": record.from_,
        "to": record.to,
        "started_at": started.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "started_at_ms": record.started_at_ms,
        "duration_ms": record.duration_ms,
        "outcome": record.outcome,
        "end_reason": record.end_reason,
        "path": list(record.path),
        "slots": dict(record.slots),
        "latency": {
            "bargein_ms": list(record.bargein_ms),
            "response_ms": [round(x, 2) for x in record.response_ms],
        },
        "malformed": dict(record.malformed),
        "turns": {
            "caller": sum(t["speaker"] == "caller" for t in turns),
            "agent": sum(t["speaker"] == "agent" for t in turns),
            "interrupted": sum(bool(t.get("interrupted")) for t in turns),
        },
        "recording": {
            "file": "audio.wav",
            "sample_rate": SAMPLE_RATE,
            "channels": {"left": "caller", "right": "agent"},
            "duration_ms": recording.duration_ms,
            "truncated": recording.truncated,
        },
        "files": list(CALL_FILES),
        "events": [e.to_dict() for e in record.events],
    }


def _json(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2) + b"\n"


def _vtt_time(ms: int) -> str:
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}"


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\n", " ")
