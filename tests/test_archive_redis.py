"""The distributed archive: spool → Redis stream → `callstream worker`, under
crashes, a Redis restart and failing storage. Each test runs its own
redis-server (append-only file, free port) so it can restart it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import redis
from archive_helpers import (
    CALL_SID,
    QuotaFolderStore,
    RedisServer,
    call_folder_of,
    redis_server,
    run_worker,
    sample_record,
    start_worker,
    wait_for_line,
)

from agent.archive import Archive, build_archive
from agent.archive_jobs import encode_job
from agent.archive_redis import (
    GROUP,
    RedisArchiveWorker,
    RedisForwarder,
    requeue_dead,
    stream_names,
)
from agent.archive_worker import ArchiveProcessor
from agent.events import FeedEvent
from agent.metrics import REGISTRY
from agent.settings import load_settings

pytestmark = pytest.mark.redis

JOBS, DEAD = stream_names()


async def eventually(condition: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


@pytest.fixture
def redis_srv(tmp_path):
    folder = tmp_path / "redis"
    folder.mkdir()
    with redis_server(folder) as server:
        yield server


def client(server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(server.url)


@contextlib.asynccontextmanager
async def server_archive(tmp_path: Path, server: RedisServer) -> AsyncIterator[Archive]:
    settings = load_settings({}, env_file=None).with_overrides(
        archive=str(tmp_path / "archive"), archive_spool=str(tmp_path / "spool"), redis_url=server.url
    )
    archive = build_archive(settings, backoff_base_s=0.02)
    assert archive is not None and archive.distributed
    await archive.start()
    try:
        yield archive
    finally:
        await archive.aclose()


@contextlib.asynccontextmanager
async def worker(server: RedisServer, store, events: list[FeedEvent], **options) -> AsyncIterator[RedisArchiveWorker]:
    w = RedisArchiveWorker(
        server.url, ArchiveProcessor(store), consumer="test-1", publish=events.append,
        backoff_base_s=0.02, block_ms=100, **options,
    )
    task = asyncio.create_task(w.run())
    try:
        yield w
    finally:
        w.stop()
        await asyncio.wait_for(task, 10)
        await w.aclose()


async def test_a_call_goes_through_the_stream_and_is_acked_after_it_is_stored(tmp_path, redis_srv):
    events: list[FeedEvent] = []
    store = QuotaFolderStore(tmp_path / "archive", 10**9)
    async with server_archive(tmp_path, redis_srv) as archive, worker(redis_srv, store, events):
        await archive.enqueue(sample_record())
        await eventually(lambda: bool(events))
        assert archive.spool.depth() == 0  # forwarded, deleted locally
    assert call_folder_of(tmp_path / "archive").name == CALL_SID
    r = client(redis_srv)
    assert r.xlen(JOBS) == 0 and r.xpending(JOBS, GROUP)["pending"] == 0 and r.xlen(DEAD) == 0


async def test_redis_restarted_mid_run_loses_nothing(tmp_path, redis_srv):
    events: list[FeedEvent] = []
    store = QuotaFolderStore(tmp_path / "archive", 10**9)
    async with server_archive(tmp_path, redis_srv) as archive, worker(redis_srv, store, events):
        await archive.enqueue(sample_record(call_sid="CA" + "a" * 32))
        await eventually(lambda: len(events) == 1)
        redis_srv.stop()
        await archive.enqueue(sample_record(call_sid="CA" + "b" * 32))  # Redis is down: spooled
        assert archive.spool.depth() == 1
        redis_srv.start()  # same data folder: the stream and its group come back from the AOF
        await archive.enqueue(sample_record(call_sid="CA" + "c" * 32))
        await eventually(lambda: len(events) == 3)
        assert archive.spool.depth() == 0
    assert sorted(e.call_sid for e in events) == ["CA" + x * 32 for x in "abc"]


async def test_failing_storage_retries_then_dead_letters_and_requeue_recovers(tmp_path, redis_srv, caplog):
    events: list[FeedEvent] = []
    store = QuotaFolderStore(tmp_path / "archive", 0)  # disk full
    RedisForwarder(redis_srv.url)(encode_job(sample_record()))
    before = REGISTRY.get_sample_value("callstream_archive_failures_total") or 0.0
    async with worker(redis_srv, store, events, max_attempts=3):
        await eventually(lambda: client(redis_srv).xlen(DEAD) == 1)
    assert (REGISTRY.get_sample_value("callstream_archive_failures_total") or 0.0) == before + 3
    failed = [r for r in caplog.records if "archive store failed" in r.getMessage()]
    assert len(failed) == 3 and all(r.call_sid == CALL_SID for r in failed)  # type: ignore[attr-defined]
    [(_, fields)] = client(redis_srv).xrange(DEAD)
    assert b"No space left on device" in fields[b"reason"] and fields[b"call_sid"] == CALL_SID.encode()
    assert client(redis_srv).xlen(JOBS) == 0
    store.quota = 10**9
    assert requeue_dead(redis_srv.url) == 1
    async with worker(redis_srv, store, events):
        await eventually(lambda: bool(events))
    assert client(redis_srv).xlen(DEAD) == 0


async def test_a_job_left_by_a_silent_worker_is_taken_over(tmp_path, redis_srv, caplog):
    events: list[FeedEvent] = []
    RedisForwarder(redis_srv.url)(encode_job(sample_record()))
    r = client(redis_srv)
    r.xgroup_create(JOBS, GROUP, id="0")
    assert r.xreadgroup(GROUP, "gone", {JOBS: ">"}, count=1)  # delivered to a worker that then vanished
    store = QuotaFolderStore(tmp_path / "archive", 10**9)
    async with worker(redis_srv, store, events, claim_idle_s=0.2):
        await eventually(lambda: bool(events))
    assert any("taken over from a worker that went quiet" in rec.getMessage() for rec in caplog.records)
    assert r.xlen(JOBS) == 0 and r.xpending(JOBS, GROUP)["pending"] == 0


async def test_a_job_that_keeps_killing_workers_is_dead_lettered(tmp_path, redis_srv):
    RedisForwarder(redis_srv.url)(encode_job(sample_record()))
    r = client(redis_srv)
    r.xgroup_create(JOBS, GROUP, id="0")
    r.xreadgroup(GROUP, "w1", {JOBS: ">"}, count=1)
    for name in ("w2", "w3"):  # two more workers took it over and died too
        r.xautoclaim(JOBS, GROUP, name, min_idle_time=0, start_id="0-0")
    store = QuotaFolderStore(tmp_path / "archive", 10**9)
    async with worker(redis_srv, store, [], claim_idle_s=0.05, max_deliveries=3):
        await eventually(lambda: r.xlen(DEAD) == 1)
    [(_, fields)] = r.xrange(DEAD)
    assert b"delivered 4 times" in fields[b"reason"]


def test_a_worker_killed_between_dequeue_and_store_archives_the_call_exactly_once(tmp_path, redis_srv):
    RedisForwarder(redis_srv.url)(encode_job(sample_record()))
    env = {"REDIS_URL": redis_srv.url, "CALLSTREAM_ARCHIVE": str(tmp_path / "archive")}
    blocked = start_worker(tmp_path, env, hook=True)
    try:
        wait_for_line(blocked, f"blocking before storing {CALL_SID}")
        r = client(redis_srv)
        assert r.xpending(JOBS, GROUP)["pending"] == 1  # delivered, not acked
        blocked.kill()  # SIGKILL: no clean-up of any kind
        blocked.wait(10)
    finally:
        if blocked.poll() is None:
            blocked.kill()
            blocked.wait(10)
        assert blocked.stderr is not None
        blocked.stderr.close()
    assert not (tmp_path / "archive").exists() or not any((tmp_path / "archive").rglob("call.json"))
    done = run_worker(tmp_path, env, "--drain", "--claim-idle", "0.3")
    assert done.returncode == 0, done.stderr
    assert "1 job(s) stored" in done.stderr
    folder = call_folder_of(tmp_path / "archive")
    assert sorted(p.name for p in folder.iterdir()) == ["audio.wav", "call.json", "transcript.json", "transcript.vtt"]
    assert len(list((tmp_path / "archive").rglob("call.json"))) == 1
    assert r.xlen(JOBS) == 0 and r.xpending(JOBS, GROUP)["pending"] == 0 and r.xlen(DEAD) == 0


async def test_a_worker_process_publishes_archive_stored_on_the_shared_feed(tmp_path, redis_srv):
    from agent.feed_redis import RedisFeed

    feed = RedisFeed(redis_srv.url, "callstream:")
    await feed.start()
    sub = feed.subscribe(CALL_SID)
    try:
        RedisForwarder(redis_srv.url)(encode_job(sample_record()))
        env = {"REDIS_URL": redis_srv.url, "CALLSTREAM_ARCHIVE": str(tmp_path / "archive")}
        done = await asyncio.to_thread(run_worker, tmp_path, env, "--drain")
        assert done.returncode == 0, done.stderr
        event = await asyncio.wait_for(sub.queue.get(), 10)
        assert event.type == "archive.stored" and event.call_sid == CALL_SID
    finally:
        await sub.aclose()
        await feed.aclose()
