"""`POST /twilio/recording`: Twilio's recording status callback → an archive job.

Where the caller's message is, in our architecture: a voicemail state hands
the call to Twilio's `<Record>` by a REST update, which also stops our Media
Stream. The agent's prompt ("leave a message after the tone") is on the
stream and so in the call's `audio.wav`; the message itself is recorded by
Twilio only. When it is ready Twilio posts this callback; the job fetches
the media and stores it as `voicemail.wav` in the folder of the stream that
asked for the voicemail. Recorded transfers (`<Dial record>`) and
conferences (`<Conference record>`) arrive the same way and are stored as
`transfer-RE….wav` / `conference-RE….wav` (dual channel) beside the call.

The session builds the callback URL (`recording_callback_url`) with what the
callback itself lacks: the call's folder day, the kind of recording and the
call SID (conference recordings carry no CallSid). With TWILIO_AUTH_TOKEN
set the route checks the signature over that exact URL, query included.

Twilio's parameters (Recording status callback): AccountSid, CallSid,
RecordingSid, RecordingUrl, RecordingStatus (in-progress | completed |
absent | failed), RecordingDuration, RecordingChannels, RecordingSource,
RecordingStartTime. Only `completed` has media. Idempotent by RecordingSid
through `CallStore.claim_once`: Twilio may post the same callback again.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, date, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import urlencode

from starlette.responses import PlainTextResponse, Response

from agent.archive_render import day_of
from agent.logs import call_logger
from agent.ports import ArchiveQueue, CallStore, RecordingJob

CALL_SID = re.compile(r"^CA[0-9a-fA-F]{32}$")
ACCOUNT_SID = re.compile(r"^AC[0-9a-fA-F]{32}$")
RECORDING_SID = re.compile(r"^RE[0-9a-fA-F]{32}$")
KINDS = ("voicemail", "transfer", "conference", "call")
CLAIM_TTL_S = 7 * 24 * 3600


def recording_callback_url(base_url: str, kind: str, call_sid: str, started_at_ms: int) -> str:
    """The `recordingStatusCallback` for TwiML a session sends (dial, conference, voicemail)."""
    query = urlencode({"kind": kind, "call_sid": call_sid, "day": day_of(started_at_ms).isoformat()})
    return f"{base_url}/twilio/recording?{query}"


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


def _day(query: Mapping[str, str], params: Mapping[str, str]) -> str:
    with_day = query.get("day", "")
    try:
        return date.fromisoformat(with_day).isoformat()
    except ValueError:
        pass
    try:  # RecordingStartTime is RFC 2822, e.g. "Mon, 22 Aug 2011 15:42:47 +0000"
        return parsedate_to_datetime(params.get("RecordingStartTime", "")).astimezone(UTC).date().isoformat()
    except (TypeError, ValueError):
        return datetime.now(UTC).date().isoformat()


async def handle_recording_callback(
    params: Mapping[str, str], query: Mapping[str, str], store: CallStore, archive: ArchiveQueue | None
) -> Response:
    call_sid = query.get("call_sid") or params.get("CallSid", "")
    recording_sid = params.get("RecordingSid", "")
    account_sid = params.get("AccountSid", "")
    clog = call_logger(call_sid or "-", "callstream.archive")
    status = params.get("RecordingStatus", "completed")
    if status != "completed":
        log = clog.warning if status in ("failed", "absent") else clog.info
        log("recording %s is %s: nothing to fetch", recording_sid or "?", status)
        return Response(status_code=204)
    if not (CALL_SID.match(call_sid) and RECORDING_SID.match(recording_sid) and ACCOUNT_SID.match(account_sid)):
        clog.warning("recording callback without valid CallSid/RecordingSid/AccountSid: 400")
        return PlainTextResponse("CallSid, RecordingSid and AccountSid are required\n", status_code=400)
    if archive is None:
        clog.info("recording %s not archived: the archive is off (CALLSTREAM_ARCHIVE=off)", recording_sid)
        return Response(status_code=204)
    if not await store.claim_once(f"archive:recording:{recording_sid}", CLAIM_TTL_S):
        clog.info("recording %s already handed to the archive: duplicate callback ignored", recording_sid)
        return Response(status_code=204)
    kind = query.get("kind", "call")
    job = RecordingJob(
        call_sid=call_sid,
        recording_sid=recording_sid,
        account_sid=account_sid,
        kind=kind if kind in KINDS else "call",
        day=_day(query, params),
        duration_s=_int(params.get("RecordingDuration")),
        channels=_int(params.get("RecordingChannels")),
        source=params.get("RecordingSource", ""),
    )
    try:
        await archive.enqueue_recording(job)
    except Exception:
        clog.exception("recording %s could not be queued for the archive: 500", recording_sid)
        return PlainTextResponse("archive queue unavailable\n", status_code=500)
    clog.info("recording %s (%s, %s s) queued for the archive", recording_sid, job.kind, job.duration_s)
    return Response(status_code=204)
