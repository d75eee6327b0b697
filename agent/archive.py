"""The archive as the server sees it: the `ArchiveQueue` port and its background work.

At call end the session only enqueues: the record is encoded and written to
the local spool on a thread (agent/archive_spool.py: durable once `enqueue`
returns, a few ms of disk, never on the event loop). What drains the spool
depends on the settings:

- embedded (no REDIS_URL): an in-process `SpoolDrainer` stores each job in the
  archive (`CALLSTREAM_ARCHIVE`: a folder or s3://bucket/prefix) and
  publishes `archive.stored`;
- distributed (REDIS_URL set): the drainer forwards each job to the Redis
  stream, where `callstream worker` processes store it (agent/archive_redis.py).

If the spool itself cannot be written (disk full), the job is kept in
memory, logged with the call SID, counted in `callstream_archive_failures_total`,
and written again with backoff; only a process dying before the disk frees
loses it. On shutdown the archive waits for enqueues in flight and gives the
drainer `drain_s` to finish; whatever is left stays spooled for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from agent.archive_jobs import Job, encode_job
from agent.archive_prune import prune_periodically
from agent.archive_spool import Spool
from agent.archive_store import build_archive_store, is_s3
from agent.archive_worker import ArchiveProcessor, SpoolDrainer, backoff_s
from agent.events import FeedEvent
from agent.logs import call_logger
from agent.metrics import ARCHIVE_FAILURES
from agent.ports import ArchiveStore, CallRecord, RecordingJob
from agent.settings import Settings
from agent.twilio_recordings import TwilioRecordings

log = logging.getLogger("callstream.archive")

OFF = ("off", "none", "0")


def archive_enabled(settings: Settings) -> bool:
    return settings.archive.strip().lower() not in OFF


def spool_path(settings: Settings) -> Path:
    if settings.archive_spool:
        return Path(settings.archive_spool)
    if is_s3(settings.archive):
        return Path("archive-spool")
    return Path(settings.archive) / ".spool"


def build_store(settings: Settings) -> ArchiveStore:
    credentials = None
    if settings.aws_access_key_id and settings.aws_secret_access_key:
        credentials = (settings.aws_access_key_id, settings.aws_secret_access_key, settings.aws_session_token)
    return build_archive_store(
        settings.archive, s3_endpoint_url=settings.s3_endpoint_url, region=settings.aws_region, credentials=credentials
    )


def build_processor(settings: Settings, store: ArchiveStore | None = None, *, test_hook: str | None = None) -> ArchiveProcessor:
    recordings = None
    if settings.call_control_enabled:
        assert settings.twilio_account_sid and settings.twilio_auth_token
        recordings = TwilioRecordings(settings.twilio_account_sid, settings.twilio_auth_token, settings.twilio_api_base)
    return ArchiveProcessor(
        store or build_store(settings),
        recordings,
        delete_recordings=settings.delete_twilio_recordings,
        test_hook=test_hook,
    )


class Archive:
    """Implements `ArchiveQueue`; `start()` in the app's lifespan, `aclose()` at its end."""

    def __init__(
        self,
        spool: Spool,
        drainer: SpoolDrainer,
        *,
        location: str,
        distributed: bool,
        store: ArchiveStore | None = None,
        retention_days: int | None = None,
        drain_s: float = 10.0,
        respool_base_s: float = 1.0,
    ) -> None:
        self.spool = spool
        self.drainer = drainer
        self.location = location
        self.distributed = distributed
        self._store = store
        self._retention_days = retention_days
        self._drain_s = drain_s
        self._respool_base_s = respool_base_s
        self._in_flight: set[asyncio.Future[None]] = set()
        self._unspooled: deque[tuple[bytes, str, str]] = deque()  # (job, job id, call sid)
        self._tasks: list[asyncio.Task[None]] = []
        self._respool_wake = asyncio.Event()

    # --- ArchiveQueue --------------------------------------------------------------
    async def enqueue(self, record: CallRecord) -> None:
        await self._enqueue(record, "call")

    async def enqueue_recording(self, job: RecordingJob) -> None:
        await self._enqueue(job, "recording")

    async def _enqueue(self, job: Job, kind: str) -> None:
        job_id = Spool.new_job_id(job.call_sid, kind)
        # shielded: once started, the spool write completes even if the caller is cancelled
        future = asyncio.ensure_future(asyncio.to_thread(self._spool_job, job, job_id))
        self._in_flight.add(future)
        future.add_done_callback(self._in_flight.discard)
        await asyncio.shield(future)
        self.drainer.wake()
        if self._unspooled:
            self._respool_wake.set()

    def _spool_job(self, job: Job, job_id: str) -> None:
        data = encode_job(job)
        try:
            self.spool.put(data, job_id, int(time.time() * 1000))
        except OSError as exc:
            ARCHIVE_FAILURES.inc()
            call_logger(job.call_sid, "callstream.archive").error(
                "archive spool %s not writable (%s): job %s kept in memory until it is", self.spool.root, exc, job_id
            )
            self._unspooled.append((data, job_id, job.call_sid))

    # --- background work -----------------------------------------------------------
    async def start(self) -> None:
        self._spawn(self.drainer.run, "archive-drainer")
        self._spawn(self._respool, "archive-respool")
        if self._retention_days and self._store is not None and not self.distributed:
            store, days = self._store, self._retention_days
            self._spawn(lambda: prune_periodically(store, days), "archive-retention")
        log.info(
            "archive: %s%s (spool %s)",
            self.location,
            ", stored by `callstream worker` through Redis" if self.distributed else "",
            self.spool.root,
        )

    def _spawn(self, factory: Callable[[], Coroutine[Any, Any, None]], name: str) -> None:
        async def supervised() -> None:
            while True:  # a bug in the loop must not stop archiving for good
                try:
                    await factory()
                    return
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("%s failed: restarting it in 5 s", name)
                    await asyncio.sleep(5.0)

        self._tasks.append(asyncio.get_running_loop().create_task(supervised(), name=name))

    async def _respool(self) -> None:
        """Write the jobs the spool refused (disk full) once it takes them again."""
        failures = 0
        while True:
            if not self._unspooled:
                failures = 0
                self._respool_wake.clear()
                await self._respool_wake.wait()
                continue
            data, job_id, call_sid = self._unspooled[0]
            try:
                await asyncio.to_thread(self.spool.put, data, job_id, int(time.time() * 1000))
            except OSError as exc:
                failures += 1
                ARCHIVE_FAILURES.inc()
                delay = backoff_s(failures, self._respool_base_s, 60.0)
                call_logger(call_sid, "callstream.archive").warning(
                    "archive spool still not writable (%s): retry in %.1f s", exc, delay
                )
                await asyncio.sleep(delay)
                continue
            self._unspooled.popleft()
            failures = 0
            call_logger(call_sid, "callstream.archive").info("archive job %s spooled after all", job_id)
            self.drainer.wake()

    @property
    def unspooled(self) -> int:
        return len(self._unspooled)

    async def wait_idle(self, timeout_s: float) -> bool:
        """Until every enqueued job is stored (or forwarded), or `timeout_s` passes."""
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=timeout_s)
        deadline = time.monotonic() + timeout_s
        while self._unspooled and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return await self.drainer.wait_idle(max(0.0, deadline - time.monotonic()))

    async def aclose(self) -> None:
        if not await self.wait_idle(self._drain_s):
            log.warning(
                "archive: %d job(s) still spooled in %s at shutdown: they are stored after the next start",
                self.spool.depth(),
                self.spool.root,
            )
        if self._unspooled:
            log.error("archive: %d job(s) could not be spooled and are lost at shutdown", len(self._unspooled))
        self.drainer.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        close = getattr(self.drainer.handler, "close", None)
        if close is not None:
            close()


def build_archive(
    settings: Settings,
    publish: Callable[[FeedEvent], None] | None = None,
    *,
    store: ArchiveStore | None = None,
    backoff_base_s: float = 1.0,
    drain_s: float = 10.0,
) -> Archive | None:
    """The archive the settings ask for, or None with CALLSTREAM_ARCHIVE=off."""
    if not archive_enabled(settings):
        return None
    spool = Spool(spool_path(settings))
    if settings.redis_url:
        from agent.archive_redis import RedisForwarder

        drainer = SpoolDrainer(
            spool, RedisForwarder(settings.redis_url), what="forward to Redis", max_attempts=None,
            backoff_base_s=backoff_base_s, backoff_cap_s=30.0,
        )
        location = settings.archive
        return Archive(spool, drainer, location=location, distributed=True, drain_s=drain_s)
    store = store or build_store(settings)
    processor = build_processor(settings, store)
    drainer = SpoolDrainer(
        spool, processor.process, publish=publish, max_attempts=settings.archive_max_attempts,
        backoff_base_s=backoff_base_s,
    )
    return Archive(
        spool, drainer, location=store.location(""), distributed=False, store=store,
        retention_days=settings.archive_retention_days, drain_s=drain_s,
    )
