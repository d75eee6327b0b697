"""The archive behind the real server: calls archived at their end, Twilio
recordings fetched from the (fake) REST API through POST /twilio/recording."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from xml.etree import ElementTree

import aiohttp
import orjson
import websockets
from archive_helpers import tone
from doubles import ScriptedSpeechToText
from server import RunningServer, running_server
from synth import caller_audio
from twilio_client import TwilioStream

from agent.archive import Archive, build_archive
from agent.events import ArchiveStoredEvent
from agent.fake_twilio import outcome_of
from media import mulaw
from media.wav import read_wav, wav_bytes
from twiml.signature import sign

TOKEN = "twilio-auth-token"
RECORDING = "RE" + "7" * 32


@contextlib.asynccontextmanager
async def archived_server(
    tmp_path: Path, stt: ScriptedSpeechToText | None = None, **settings: object
) -> AsyncIterator[tuple[RunningServer, Archive]]:
    async with running_server(stt=stt, twilio_auth_token=TOKEN) as server:
        archive_settings = server.settings.with_overrides(
            archive=str(tmp_path / "archive"),
            twilio_account_sid=server.rest.account_sid,
            twilio_auth_token=server.rest.auth_token,
            twilio_api_base=server.rest_base,
            **settings,
        )
        archive = build_archive(archive_settings, server.services.feed.publish, backoff_base_s=0.01)
        assert archive is not None
        server.services.archive = archive
        await archive.start()
        try:
            yield server, archive
        finally:
            await archive.aclose()


async def stored(server: RunningServer, call_sid: str, count: int = 1, timeout_s: float = 10.0) -> list[ArchiveStoredEvent]:
    deadline = time.monotonic() + timeout_s
    while True:
        found = server.of_type(call_sid, ArchiveStoredEvent)
        if len(found) >= count:
            return found
        assert time.monotonic() < deadline, f"{call_sid} not archived"
        await asyncio.sleep(0.02)


def everything_in(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


async def test_a_call_is_archived_with_sensitive_digits_and_audio_kept_out(tmp_path):
    stt = ScriptedSpeechToText(["billing", "four eight one five one six"])
    async with archived_server(tmp_path, stt=stt) as (server, archive), server.call({"From": "+15551230000"}) as call:
        await call.audio(caller_audio(2000, [(800, 600)]))  # "billing", in the menu: recorded
        await call.silence(4000)
        secret_start = call.now_ms
        await call.audio(caller_audio(2000, [(100, 1200)], seed=3))  # the account number, spoken: not
        await call.silence(3000)
        assert [outcome_of(u) for u in server.rest.calls[call.call_sid].updates] == ["hangup"]
        await call.stop()
        sid = call.call_sid
        [event] = await stored(server, sid)
    folder = Path(event.location)
    assert folder.parent == tmp_path / "archive" / time.strftime("%Y/%m/%d", time.gmtime())
    assert sorted(p.name for p in folder.iterdir()) == ["audio.wav", "call.json", "transcript.json", "transcript.vtt"]
    archived = everything_in(tmp_path / "archive")
    assert b"four eight one" not in archived and b"5551230000" not in archived
    meta = orjson.loads((folder / "call.json").read_bytes())
    assert meta["path"] == ["menu", "billing", "billing_done"] and meta["slots"] == {"account": "***"}
    assert meta["from"] == "+1555***0000" and meta["outcome"] == "hangup"
    wav = read_wav(folder / "audio.wav")
    caller, agent = wav.samples[:, 0].astype(float), wav.samples[:, 1].astype(float)
    assert wav.channels == 2 and wav.rate == 8000
    assert abs(caller[8 * 800 : 8 * 1400]).max() > 1000  # the menu answer is there
    assert abs(caller[8 * (secret_start + 100) : 8 * (secret_start + 1300)]).max() < 100  # muted
    assert abs(agent[: 8 * 2000]).max() > 1000  # the greeting played
    assert archive.spool.depth() == 0


async def test_a_failed_transfer_then_voicemail_is_one_folder_with_the_message(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    async with archived_server(tmp_path, delete_twilio_recordings=True) as (server, _archive):
        async with server.call() as first:
            await first.silence(200)
            await first.dtmf("0")
            await first.silence(3000)
            [dial] = server.rest.calls[first.call_sid].updates
            assert outcome_of(dial) == "transfer:+14155550100"
            await first.stop()
        sid = first.call_sid
        await stored(server, sid)
        dial_callback = ElementTree.fromstring(dial["Twiml"]).find("Dial").get("recordingStatusCallback")  # type: ignore[union-attr]
        assert dial_callback.startswith(f"{server.base}/twilio/recording?kind=transfer&call_sid={sid}&day=")
        # Twilio: nobody answered; /twilio/dial-result resumes the agent on a new stream
        headers = {"X-Twilio-Signature": sign(TOKEN, server.stream_url)}
        async with websockets.connect(server.stream_url, additional_headers=headers) as ws:
            second = TwilioStream(ws, call_sid=sid)
            await second.start({"transfer_status": "no-answer"})
            await second.silence(4000)
            record = server.rest.calls[sid].updates[-1]
            assert outcome_of(record) == "voicemail"
            await second.stop()
        await stored(server, sid, count=2)
        callback = ElementTree.fromstring(record["Twiml"]).find("Record").get("recordingStatusCallback")  # type: ignore[union-attr]
        # Twilio recorded the caller's message and reports it
        message = wav_bytes(mulaw.decode_array(tone(3000, 350.0)), 8000)
        server.rest.add_recording(RECORDING, message)
        form = {
            "AccountSid": server.rest.account_sid, "CallSid": sid, "RecordingSid": RECORDING,
            "RecordingUrl": f"https://api.twilio.com/2010-04-01/Accounts/{server.rest.account_sid}/Recordings/{RECORDING}",
            "RecordingStatus": "completed", "RecordingDuration": "3", "RecordingChannels": "1",
            "RecordingSource": "RecordVerb", "RecordingStartTime": "Wed, 01 May 2024 10:00:00 +0000",
        }
        assert await post(callback, form, sign(TOKEN, callback, form)) == 204
        assert await post(callback, form, sign(TOKEN, callback, form)) == 204  # Twilio retried: no second job
        assert any("duplicate callback ignored" in r.getMessage() for r in caplog.records)
        await stored(server, sid, count=3)
    folder = Path(server.of_type(sid, ArchiveStoredEvent)[0].location)
    names = sorted(p.name for p in folder.iterdir())
    stream_folder = [n for n in names if n.startswith("MZ")]
    assert names == sorted(["audio.wav", "call.json", "transcript.json", "transcript.vtt", "voicemail.json", "voicemail.wav", *stream_folder])
    assert len(stream_folder) == 1 and (folder / stream_folder[0] / "call.json").is_file()
    resumed = orjson.loads((folder / stream_folder[0] / "call.json").read_bytes())
    assert resumed["continuation"] is True and resumed["outcome"] == "voicemail"
    assert (folder / "voicemail.wav").read_bytes() == message
    meta = orjson.loads((folder / "voicemail.json").read_bytes())
    assert meta["recording_sid"] == RECORDING and meta["duration_s"] == 3 and meta["source"] == "RecordVerb"
    fetched = [r for r in server.rest.requests if r == ("GET", f"/2010-04-01/Accounts/{server.rest.account_sid}/Recordings/{RECORDING}.wav")]
    assert len(fetched) == 1
    assert server.rest.deleted_recordings == [RECORDING]  # CALLSTREAM_DELETE_TWILIO_RECORDINGS=1


async def post(url: str, form: dict[str, str], signature: str | None = None) -> int:
    headers = {"X-Twilio-Signature": signature} if signature else {}
    async with aiohttp.ClientSession() as http, http.post(url, data=form, headers=headers) as resp:
        return resp.status


async def test_recording_callbacks_are_signed_checked_and_validated(tmp_path, caplog):
    async with archived_server(tmp_path) as (server, archive):
        url = f"{server.base}/twilio/recording?kind=transfer&call_sid=CA{'1' * 32}&day=2024-05-01"
        form = {"AccountSid": server.rest.account_sid, "CallSid": "CA" + "1" * 32, "RecordingSid": RECORDING, "RecordingStatus": "completed"}
        assert await post(url, form) == 403
        assert await post(url, form, sign("wrong", url, form)) == 403
        bad = dict(form, RecordingSid="../../etc/passwd")
        assert await post(url, bad, sign(TOKEN, url, bad)) == 400
        failed = dict(form, RecordingStatus="failed")
        assert await post(url, failed, sign(TOKEN, url, failed)) == 204
        assert any("is failed: nothing to fetch" in r.getMessage() for r in caplog.records)
        assert archive.spool.depth() == 0
        # a recording Twilio cannot hand over (404): kept and retried, the call SID in the log
        assert await post(url, form, sign(TOKEN, url, form)) == 204
        deadline = time.monotonic() + 10
        while not any("archive store failed" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        assert archive.spool.depth() == 1
        failure = next(r for r in caplog.records if "archive store failed" in r.getMessage())
        assert failure.call_sid == "CA" + "1" * 32 and "HTTP 404" in failure.getMessage()  # type: ignore[attr-defined]
        server.rest.add_recording(RECORDING, b"RIFF....WAVE")  # Twilio catches up
        await stored(server, "CA" + "1" * 32)
    assert (tmp_path / "archive" / "2024" / "05" / "01" / ("CA" + "1" * 32) / f"transfer-{RECORDING}.wav").read_bytes() == b"RIFF....WAVE"


async def test_without_an_archive_the_twiml_carries_no_recording_callback():
    async with running_server() as server, server.call() as call:
        await call.silence(200)
        await call.dtmf("0")
        await call.silence(3000)
        [update] = server.rest.calls[call.call_sid].updates
        assert "recordingStatusCallback" not in update["Twiml"]


async def test_a_recorded_conference_reports_its_recording_to_the_archive(tmp_path):
    async with archived_server(tmp_path) as (server, _archive), server.call() as call:
        await call.silence(200)
        await call.dtmf("2")
        await call.silence(3000)
        [update] = server.rest.calls[call.call_sid].updates
    conference = ElementTree.fromstring(update["Twiml"]).find("Dial/Conference")
    assert conference is not None and conference.get("record") == "record-from-start"
    callback = conference.get("recordingStatusCallback", "")
    assert callback.startswith(f"{server.base}/twilio/recording?kind=conference&call_sid={call.call_sid}&day=")
