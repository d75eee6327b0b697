"""Archive storage: the folder store, S3 against a local S3-compatible server
(moto's ThreadedMotoServer, spoken to by boto3), and retention."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import date

import pytest
from archive_helpers import CALL_SID, free_port, sample_record
from moto.server import ThreadedMotoServer

from agent.archive import build_archive
from agent.archive_prune import days_to_prune, parse_age_days, prune
from agent.archive_s3 import S3Store
from agent.archive_store import FolderStore, build_archive_store
from agent.cli import main
from agent.events import FeedEvent
from agent.metrics import REGISTRY
from agent.settings import ConfigError, load_settings

BUCKET = "callstream-archive"


# --- folder ---------------------------------------------------------------------------------


def test_folder_puts_are_whole_files_with_no_temporary_left(tmp_path):
    store = FolderStore(tmp_path)
    store.put("2024/05/01/CA1/call.json", b"{}", "application/json")
    store.put("2024/05/01/CA1/call.json", b'{"v": 2}', "application/json")  # idempotent overwrite
    assert (tmp_path / "2024/05/01/CA1/call.json").read_bytes() == b'{"v": 2}'
    assert [p.name for p in (tmp_path / "2024/05/01/CA1").iterdir()] == ["call.json"]
    assert store.exists("2024/05/01/CA1/call.json") and not store.exists("2024/05/01/CA1/audio.wav")
    assert store.location("2024/05/01/CA1") == str(tmp_path / "2024/05/01/CA1")
    for bad in ("", "../x", "a//b", "a/./b"):
        with pytest.raises(ValueError):
            store.put(bad, b"", "text/plain")


def test_folder_days_and_deleting_one(tmp_path):
    store = FolderStore(tmp_path)
    for key in ("2024/04/30/CA1/a", "2024/05/01/CA2/a", "2024/05/01/CA3/b", "2025/01/02/CA4/a"):
        store.put(key, b"x", "text/plain")
    (tmp_path / ".spool" / "pending").mkdir(parents=True)  # not a day
    (tmp_path / "2024" / "notes").mkdir()
    assert store.days() == [date(2024, 4, 30), date(2024, 5, 1), date(2025, 1, 2)]
    assert store.delete_day(date(2024, 5, 1)) == 2
    assert store.delete_day(date(2024, 5, 1)) == 0
    assert store.delete_day(date(2025, 1, 2)) == 1
    assert not (tmp_path / "2025").exists()  # empty month and year folders go too
    assert store.days() == [date(2024, 4, 30)]


def test_retention_ages_and_which_days_go():
    assert parse_age_days("30d") == 30 and parse_age_days("4w") == 28 and parse_age_days(" 7 ") == 7
    for bad in ("", "0d", "30x", "-1d", "d"):
        with pytest.raises(ValueError):
            parse_age_days(bad)
    days = [date(2024, 4, 1), date(2024, 4, 30), date(2024, 5, 1), date(2024, 5, 31)]
    assert days_to_prune(days, 30, today=date(2024, 5, 31)) == [date(2024, 4, 1), date(2024, 4, 30)]


def test_prune_command_on_a_folder_archive(tmp_path, monkeypatch, capsys):
    store = FolderStore(tmp_path / "archive")
    today = time.gmtime()
    old, recent = "2001/02/03/CA1/call.json", time.strftime("%Y/%m/%d", today) + "/CA2/call.json"
    store.put(old, b"{}", "application/json")
    store.put(recent, b"{}", "application/json")
    monkeypatch.setenv("CALLSTREAM_ARCHIVE", str(tmp_path / "archive"))
    assert main(["archive", "prune", "--older-than", "30d", "--dry-run"]) == 0
    assert "would remove" in capsys.readouterr().out and store.exists(old)
    assert main(["archive", "prune", "--older-than", "30d"]) == 0
    out = capsys.readouterr().out
    assert "2001/02/03 (1 objects)" in out and "1 day(s) older than 30 days removed" in out
    assert not store.exists(old) and store.exists(recent)
    assert main(["archive", "prune", "--older-than", "soon"]) == 2


def test_archive_settings_are_checked_at_start_up():
    with pytest.raises(ConfigError, match="CALLSTREAM_ARCHIVE_RETENTION"):
        load_settings({"CALLSTREAM_ARCHIVE_RETENTION": "a month"}, env_file=None)
    with pytest.raises(ConfigError, match="CALLSTREAM_DELETE_TWILIO_RECORDINGS=1 needs TWILIO_ACCOUNT_SID"):
        load_settings({"CALLSTREAM_DELETE_TWILIO_RECORDINGS": "1"}, env_file=None)
    with pytest.raises(ConfigError, match="s3://bucket/prefix"):
        load_settings({"CALLSTREAM_ARCHIVE": "s3://"}, env_file=None)
    with pytest.raises(ConfigError, match="CALLSTREAM_DELETE_TWILIO_RECORDINGS='maybe'"):
        load_settings({"CALLSTREAM_DELETE_TWILIO_RECORDINGS": "maybe"}, env_file=None)
    with pytest.raises(ConfigError, match="CALLSTREAM_ARCHIVE_MAX_ATTEMPTS"):
        load_settings({"CALLSTREAM_ARCHIVE_MAX_ATTEMPTS": "0"}, env_file=None)
    settings = load_settings({"CALLSTREAM_ARCHIVE_RETENTION": "4w", "CALLSTREAM_ARCHIVE": "off"}, env_file=None)
    assert settings.archive_retention_days == 28
    assert build_archive(settings) is None


# --- S3 --------------------------------------------------------------------------------------


class LocalS3:
    def __init__(self) -> None:
        self.port = free_port()
        self.server: ThreadedMotoServer | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


@pytest.fixture
def s3(monkeypatch) -> Iterator[LocalS3]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    local = LocalS3()
    local.start()
    store = build_archive_store(f"s3://{BUCKET}", s3_endpoint_url=local.endpoint, region="us-east-1")
    assert isinstance(store, S3Store)
    store._s3.create_bucket(Bucket=BUCKET)
    try:
        yield local
    finally:
        local.stop()


def test_s3_store_puts_lists_days_and_deletes_them(s3):
    store = S3Store.from_url(f"s3://{BUCKET}/calls/", endpoint_url=s3.endpoint, region="us-east-1")
    assert store.prefix == "calls/"
    store.put("2024/05/01/CA1/call.json", b"{}", "application/json")
    store.put("2024/05/01/CA1/audio.wav", b"RIFF", "audio/wav")
    store.put("2024/06/02/CA2/call.json", b"{}", "application/json")
    head = store._s3.head_object(Bucket=BUCKET, Key="calls/2024/05/01/CA1/audio.wav")
    assert head["ContentType"] == "audio/wav"
    assert store.exists("2024/05/01/CA1/call.json") and not store.exists("2024/05/01/CA9/call.json")
    assert store.location("2024/05/01/CA1") == f"s3://{BUCKET}/calls/2024/05/01/CA1"
    assert store.days() == [date(2024, 5, 1), date(2024, 6, 2)]
    assert prune(store, 30, today=date(2024, 6, 15)) == [(date(2024, 5, 1), 2)]
    assert store.days() == [date(2024, 6, 2)]


async def test_s3_down_then_back_loses_nothing(s3, tmp_path):
    settings = load_settings({}, env_file=None).with_overrides(
        archive=f"s3://{BUCKET}/archive", s3_endpoint_url=s3.endpoint, aws_region="us-east-1",
        archive_spool=str(tmp_path / "spool"), aws_access_key_id="archive-key", aws_secret_access_key="archive-secret",
    )
    events: list[FeedEvent] = []
    archive = build_archive(settings, events.append, backoff_base_s=0.01)
    assert archive is not None
    before = REGISTRY.get_sample_value("callstream_archive_failures_total") or 0.0
    await archive.start()
    try:
        s3.stop()
        await archive.enqueue(sample_record())
        deadline = time.monotonic() + 20
        while (REGISTRY.get_sample_value("callstream_archive_failures_total") or 0.0) < before + 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        assert archive.spool.depth() == 1 and not events
        s3.start()  # same port, same data
        while not events:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
    finally:
        await archive.aclose()
    assert events[0].location == f"s3://{BUCKET}/archive/2024/05/01/{CALL_SID}"  # type: ignore[attr-defined]
    store = S3Store.from_url(f"s3://{BUCKET}/archive", endpoint_url=s3.endpoint, region="us-east-1")
    for name in ("audio.wav", "transcript.json", "transcript.vtt", "call.json"):
        assert store.exists(f"2024/05/01/{CALL_SID}/{name}")
