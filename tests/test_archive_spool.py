"""The embedded archive: the spool (durable folder queue) and its drainer, under faults."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable

import orjson
import pytest
from archive_helpers import (
    CALL_SID,
    QuotaFolderStore,
    call_folder_of,
    run_worker,
    sample_record,
    start_worker,
    wait_for_line,
)

from agent.archive import Archive, build_archive
from agent.archive_jobs import encode_job
from agent.archive_spool import Spool, SpoolEntry, SpoolLocked
from agent.archive_worker import backoff_s
from agent.events import ArchiveStoredEvent, FeedEvent
from agent.metrics import REGISTRY
from agent.settings import load_settings


def failures() -> float:
    return REGISTRY.get_sample_value("callstream_archive_failures_total") or 0.0


async def eventually(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


# --- the spool itself (blocking, no loop) ------------------------------------------------


def test_put_take_done_in_due_order_and_retry_keeps_the_attempts(tmp_path):
    spool = Spool(tmp_path / "spool")
    spool.put(b"second", "CAb-call-1", now_ms=2000)
    spool.put(b"first", "CAa-call-1", now_ms=1000)
    assert spool.depth() == 2
    spool.lock()
    first = spool.take(now_ms=5000)
    assert first is not None and spool.read(first) == b"first" and first.call_sid == "CAa"
    assert first.path.parent == spool.processing
    again = spool.retry(first, due_ms=9000)
    assert again.attempts == 1 and again.path.parent == spool.pending
    second = spool.take(now_ms=5000)
    assert second is not None and spool.read(second) == b"second"
    spool.done(second)
    assert spool.take(now_ms=5000) is None  # the retried job is not due yet
    assert spool.next_due_ms() == 9000
    retried = spool.take(now_ms=9000)
    assert retried is not None and retried.attempts == 1
    spool.done(retried)
    assert spool.depth() == 0
    spool.unlock()


def test_one_drainer_per_spool_and_only_it_recovers_a_crashed_take(tmp_path):
    spool = Spool(tmp_path / "spool")
    spool.put(b"job", "CAx-call-1", now_ms=0)
    spool.lock()
    taken = spool.take(now_ms=1)
    assert taken is not None
    other = Spool(tmp_path / "spool")  # another process would open its own descriptor
    with pytest.raises(SpoolLocked):
        other.lock()
    with pytest.raises(AssertionError):
        other.recover()
    spool.unlock()  # the drainer died: the kernel drops its lock
    other.lock()
    crashed_writer = other.tmp / "old.job"
    crashed_writer.write_bytes(b"x")
    os.utime(crashed_writer, (0, 0))
    live_writer = other.tmp / "new.job"
    live_writer.write_bytes(b"x")
    back = other.recover()
    assert [e.job_id for e in back] == ["CAx-call-1"]
    assert other.depth() == 1
    assert list(other.tmp.iterdir()) == [live_writer]  # a put in progress is left alone
    other.unlock()


def test_bury_keeps_the_job_with_its_reason_and_requeue_brings_it_back(tmp_path):
    spool = Spool(tmp_path / "spool")
    spool.put(b"job", "CAx-call-1", now_ms=0)
    spool.lock()
    entry = spool.take(now_ms=0)
    assert entry is not None
    spool.bury(entry, "KeyError: broken")
    assert spool.dead_count() == 1 and spool.depth() == 0
    assert "KeyError: broken" in next(spool.dead.glob("*.reason")).read_text()
    assert spool.requeue_dead(now_ms=10) == 1
    assert spool.dead_count() == 0 and spool.depth() == 1
    assert SpoolEntry.parse(next(spool.pending.iterdir())).attempts == 0  # type: ignore[union-attr]
    spool.unlock()


def test_backoff_doubles_up_to_a_cap():
    assert [backoff_s(n, 1.0, 10.0) for n in (1, 2, 3, 4, 5)] == [1.0, 2.0, 4.0, 8.0, 10.0]


# --- the drainer and the Archive port, in-process ----------------------------------------


def make_archive(tmp_path, store, events: list[FeedEvent], **overrides) -> Archive:
    settings = load_settings({}, env_file=None).with_overrides(
        archive=str(tmp_path / "archive"), archive_spool=str(tmp_path / "spool"), **overrides
    )
    archive = build_archive(settings, events.append, store=store, backoff_base_s=0.01, drain_s=5.0)
    assert archive is not None
    return archive


async def test_a_call_is_stored_and_announced(tmp_path):
    events: list[FeedEvent] = []
    store = QuotaFolderStore(tmp_path / "archive", quota=10**9)
    archive = make_archive(tmp_path, store, events)
    await archive.start()
    try:
        await archive.enqueue(sample_record())
        await eventually(lambda: bool(events))
    finally:
        await archive.aclose()
    folder = tmp_path / "archive" / "2024" / "05" / "01" / CALL_SID
    assert sorted(p.name for p in folder.iterdir()) == ["audio.wav", "call.json", "transcript.json", "transcript.vtt"]
    assert events == [ArchiveStoredEvent(call_sid=CALL_SID, t=events[0].t, location=str(folder))]
    assert archive.spool.depth() == 0


async def test_disk_full_retries_with_backoff_keeps_the_job_and_logs_the_call(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    events: list[FeedEvent] = []
    store = QuotaFolderStore(tmp_path / "archive", quota=1000)  # the WAV alone is 64 KB
    archive = make_archive(tmp_path, store, events)
    before = failures()
    await archive.start()
    try:
        await archive.enqueue(sample_record())
        await eventually(lambda: failures() >= before + 3)  # tried, backed off, tried again…
        assert not events
        assert archive.spool.depth() == 1  # the job is kept
        kept = [SpoolEntry.parse(p) for p in archive.spool.pending.iterdir()]
        assert kept and kept[0] is not None and kept[0].attempts >= 1
        failed = [r for r in caplog.records if "archive store failed" in r.getMessage()]
        assert failed and all(r.call_sid == CALL_SID for r in failed)  # type: ignore[attr-defined]
        assert "No space left on device" in failed[0].getMessage()
        store.quota = 10**9  # space freed
        await eventually(lambda: bool(events))
    finally:
        await archive.aclose()
    assert (tmp_path / "archive" / "2024" / "05" / "01" / CALL_SID / "call.json").is_file()
    assert archive.spool.depth() == 0


async def test_an_unwritable_archive_folder_then_fixed(tmp_path):
    events: list[FeedEvent] = []
    root = tmp_path / "archive"
    root.write_text("not a folder")  # even root cannot create files under a file
    from agent.archive_store import FolderStore

    archive = make_archive(tmp_path, FolderStore(root), events)
    before = failures()
    await archive.start()
    try:
        await archive.enqueue(sample_record())
        await eventually(lambda: failures() >= before + 2)
        assert archive.spool.depth() == 1 and not events
        root.unlink()
        await eventually(lambda: bool(events))
    finally:
        await archive.aclose()
    assert (root / "2024" / "05" / "01" / CALL_SID / "audio.wav").is_file()


async def test_after_max_attempts_the_job_is_dead_lettered_not_lost(tmp_path, caplog):
    events: list[FeedEvent] = []
    store = QuotaFolderStore(tmp_path / "archive", quota=0)
    archive = make_archive(tmp_path, store, events, archive_max_attempts=3)
    await archive.start()
    try:
        await archive.enqueue(sample_record())
        await eventually(lambda: any("given up after 3 attempt(s)" in r.getMessage() for r in caplog.records))
        assert archive.spool.dead_count() == 1 and archive.spool.depth() == 0
        store.quota = 10**9
        assert archive.spool.requeue_dead(int(time.time() * 1000)) == 1
        archive.drainer.wake()
        await eventually(lambda: bool(events))
    finally:
        await archive.aclose()


async def test_a_job_that_cannot_be_read_is_dead_lettered_at_once(tmp_path):
    events: list[FeedEvent] = []
    archive = make_archive(tmp_path, QuotaFolderStore(tmp_path / "archive", 10**9), events)
    archive.spool.put(b"CSJOB1\n garbage", "CAbad-call-1", now_ms=0)
    await archive.start()
    try:
        await eventually(lambda: archive.spool.dead_count() == 1)
    finally:
        await archive.aclose()
    reason = next(archive.spool.dead.glob("*.reason")).read_text()
    assert "JobDecodeError" in reason


async def test_a_spool_that_cannot_be_written_keeps_the_job_in_memory_until_it_can(tmp_path, caplog):
    events: list[FeedEvent] = []
    archive = make_archive(tmp_path, QuotaFolderStore(tmp_path / "archive", 10**9), events)
    (tmp_path / "spool").write_text("in the way")  # the spool folder cannot be created
    archive._respool_base_s = 0.01
    await archive.start()
    try:
        await archive.enqueue(sample_record())  # returns: the call must not wait or fail
        assert archive.unspooled == 1
        assert any("kept in memory" in r.getMessage() and r.call_sid == CALL_SID for r in caplog.records)  # type: ignore[attr-defined]
        (tmp_path / "spool").unlink()
        await eventually(lambda: bool(events))
    finally:
        await archive.aclose()
    assert archive.unspooled == 0


async def test_shutdown_drains_what_was_enqueued(tmp_path):
    events: list[FeedEvent] = []
    archive = make_archive(tmp_path, QuotaFolderStore(tmp_path / "archive", 10**9), events)
    await archive.start()
    for i in range(3):
        await archive.enqueue(sample_record(call_sid=f"CA{i:032d}"))
    await archive.aclose()
    assert len(events) == 3 and archive.spool.depth() == 0


async def test_jobs_spooled_while_no_server_ran_are_stored_at_the_next_start(tmp_path):
    spool = Spool(tmp_path / "spool")
    spool.put(encode_job(sample_record()), Spool.new_job_id(CALL_SID, "call"), now_ms=0)
    spool.lock()
    assert spool.take(now_ms=1) is not None  # taken, then the process "died"
    spool.unlock()
    events: list[FeedEvent] = []
    archive = make_archive(tmp_path, QuotaFolderStore(tmp_path / "archive", 10**9), events)
    await archive.start()
    try:
        await eventually(lambda: bool(events))
    finally:
        await archive.aclose()
    meta = orjson.loads((tmp_path / "archive" / "2024" / "05" / "01" / CALL_SID / "call.json").read_bytes())
    assert meta["call_sid"] == CALL_SID


def test_a_spool_worker_killed_between_dequeue_and_store_archives_the_call_exactly_once(tmp_path):
    spool = Spool(tmp_path / "archive" / ".spool")  # the default spool of a folder archive
    spool.put(encode_job(sample_record()), Spool.new_job_id(CALL_SID, "call"), now_ms=0)
    env = {"CALLSTREAM_ARCHIVE": str(tmp_path / "archive")}
    blocked = start_worker(tmp_path, env, hook=True)
    try:
        wait_for_line(blocked, f"blocking before storing {CALL_SID}")
        assert len(list(spool.processing.iterdir())) == 1  # taken, not stored
        blocked.kill()
        blocked.wait(10)
    finally:
        if blocked.poll() is None:
            blocked.kill()
            blocked.wait(10)
        assert blocked.stderr is not None
        blocked.stderr.close()
    assert not list((tmp_path / "archive").rglob("call.json"))
    done = run_worker(tmp_path, env, "--drain")
    assert done.returncode == 0, done.stderr
    assert "interrupted by a crash: queued again" in done.stderr and "1 job(s) stored" in done.stderr
    assert call_folder_of(tmp_path / "archive").name == CALL_SID
    assert len(list((tmp_path / "archive").rglob("call.json"))) == 1
    assert spool.depth() == 0 and spool.dead_count() == 0


def test_status_and_requeue_commands(tmp_path, monkeypatch, capsys):
    from agent.cli import main

    spool = Spool(tmp_path / "archive" / ".spool")
    spool.put(b"job", "CAx-call-1", now_ms=0)
    spool.lock()
    taken = spool.take(now_ms=0)
    assert taken is not None
    spool.bury(taken, "gave up")
    spool.unlock()
    monkeypatch.setenv("CALLSTREAM_ARCHIVE", str(tmp_path / "archive"))
    assert main(["archive", "status"]) == 0
    assert "0 queued, 1 dead" in capsys.readouterr().out
    assert main(["archive", "requeue"]) == 0
    assert "1 dead-lettered job(s) queued again" in capsys.readouterr().out
    assert main(["archive", "status"]) == 0
    assert "1 queued, 0 dead" in capsys.readouterr().out
    monkeypatch.setenv("CALLSTREAM_ARCHIVE", "off")
    assert main(["archive", "status"]) == 2
