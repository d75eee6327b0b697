"""Archive workers: turn a job into stored objects, retry what fails, never drop a job.

`ArchiveProcessor.process(job bytes)` is the one step that stores (blocking,
on a thread): a call job is rendered (agent/archive_render.py) and its files
put with `call.json` last; a recording job is downloaded from Twilio and put
beside its call, then optionally deleted at Twilio. Every put is idempotent,
so a job done twice (a worker killed after storing, before acknowledging)
leaves the same objects: at-least-once delivery, exactly-once archive.

`SpoolDrainer` runs a job handler over a local spool (agent/archive_spool.py):
in the embedded archive the handler is the processor; with Redis it forwards
the job to the stream. A failure is logged with the call SID, counted in
`callstream_archive_failures_total`, and the job goes back to the spool with
an exponential backoff; after `max_attempts` it is moved to `dead/`, still
kept (`callstream archive requeue` puts it back).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date

import orjson

from agent.archive_jobs import JobDecodeError, decode_job
from agent.archive_render import call_folder, content_type, record_folder, render_call, safe_part
from agent.archive_spool import Spool, SpoolEntry, SpoolLocked
from agent.events import ArchiveStoredEvent, FeedEvent
from agent.logs import call_logger
from agent.metrics import ARCHIVE_FAILURES, ARCHIVE_QUEUE_DEPTH
from agent.ports import ArchiveStore, CallRecord, RecordingJob
from agent.twilio_recordings import TwilioRecordings

log = logging.getLogger("callstream.archive")

TEST_HOOK_BLOCK = "block-before-store"


@dataclass(frozen=True)
class Stored:
    call_sid: str
    location: str  # the call's folder, for people
    keys: tuple[str, ...]


class ArchiveJobError(Exception):
    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


def is_retryable(exc: BaseException) -> bool:
    """Only a job that can never succeed is not retried: everything else
    (storage down, disk full, Twilio unreachable) may heal."""
    if isinstance(exc, JobDecodeError):
        return False
    return bool(getattr(exc, "retryable", True))


def backoff_s(attempts: int, base_s: float, cap_s: float) -> float:
    """Exponential: base, 2·base, 4·base… capped (attempts counts failures so far, ≥ 1)."""
    return float(min(cap_s, base_s * 2 ** max(0, attempts - 1)))


class ArchiveProcessor:
    def __init__(
        self,
        store: ArchiveStore,
        recordings: TwilioRecordings | None = None,
        *,
        delete_recordings: bool = False,
        test_hook: str | None = None,
    ) -> None:
        self.store = store
        self.recordings = recordings
        self.delete_recordings = delete_recordings
        self.test_hook = test_hook

    def process(self, data: bytes) -> Stored:
        """Store one job (blocking). Raises on failure; `is_retryable` says what to do."""
        job = decode_job(data)
        if isinstance(job, CallRecord):
            return self._store_call(job)
        return self._store_recording(job)

    def _store_call(self, record: CallRecord) -> Stored:
        folder = record_folder(record)
        files = render_call(record)
        self._before_store(record.call_sid)
        keys = []
        for name, body in files.items():  # call.json last: its presence means complete
            key = f"{folder}/{name}"
            self.store.put(key, body, content_type(name))
            keys.append(key)
        return Stored(record.call_sid, self.store.location(folder), tuple(keys))

    def _store_recording(self, job: RecordingJob) -> Stored:
        try:
            day = date.fromisoformat(job.day)
        except ValueError:
            raise ArchiveJobError(f"recording job with a bad day {job.day!r}", retryable=False) from None
        folder = call_folder(job.call_sid, day)
        stem = "voicemail" if job.kind == "voicemail" else f"{safe_part(job.kind)}-{safe_part(job.recording_sid)}"
        wav_key, meta_key = f"{folder}/{stem}.wav", f"{folder}/{stem}.json"
        if self.recordings is None:
            raise ArchiveJobError(
                "a Twilio recording to fetch, but TWILIO_ACCOUNT_SID/TWILIO_AUTH_TOKEN are not set for this worker"
            )
        if not self.store.exists(wav_key):
            audio = self.recordings.fetch_wav(job.account_sid, job.recording_sid)
            self._before_store(job.call_sid)
            self.store.put(wav_key, audio, "audio/wav")
        meta = {
            "recording_sid": job.recording_sid,
            "call_sid": job.call_sid,
            "kind": job.kind,
            "duration_s": job.duration_s,
            "channels": job.channels,
            "source": job.source,
            "file": f"{stem}.wav",
        }
        self.store.put(meta_key, orjson.dumps(meta, option=orjson.OPT_INDENT_2) + b"\n", "application/json")
        if self.delete_recordings:
            self.recordings.delete(job.account_sid, job.recording_sid)
        return Stored(job.call_sid, self.store.location(folder), (wav_key, meta_key))

    def _before_store(self, call_sid: str) -> None:
        """Test-only: CALLSTREAM_ARCHIVE_TEST_HOOK=block-before-store parks the
        worker between dequeue and store, so a test can SIGKILL it right there."""
        if self.test_hook == TEST_HOOK_BLOCK:
            print(f"archive test hook: blocking before storing {call_sid}", file=sys.stderr, flush=True)
            threading.Event().wait()


def log_failure(call_sid: str, exc: BaseException, attempts: int, what: str) -> None:
    ARCHIVE_FAILURES.inc()
    call_logger(call_sid, "callstream.archive").error(
        "archive %s failed (attempt %d): %s: %s", what, attempts, type(exc).__name__, exc
    )


# --- the spool drainer --------------------------------------------------------------

Handler = Callable[[bytes], Stored | None]


class SpoolDrainer:
    """Drains a spool with `handler`, one job at a time, until stopped.

    `publish` receives `archive.stored` events (on the loop). `max_attempts`
    None retries for ever (forwarding to Redis: the job must wait, not die).
    """

    def __init__(
        self,
        spool: Spool,
        handler: Handler,
        *,
        what: str = "store",
        publish: Callable[[FeedEvent], None] | None = None,
        max_attempts: int | None = 20,
        backoff_base_s: float = 1.0,
        backoff_cap_s: float = 300.0,
        idle_poll_s: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.spool = spool
        self.handler = handler
        self.what = what
        self.publish = publish
        self.max_attempts = max_attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.idle_poll_s = idle_poll_s
        self.clock = clock
        self.stored = 0
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._stopping = False

    def wake(self) -> None:
        """A job was just spooled: look now rather than at the next poll."""
        self._wake.set()

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    async def run(self) -> None:
        await self._acquire()
        try:
            back = await asyncio.to_thread(self.spool.recover)
            for crashed in back:
                call_logger(crashed.call_sid, "callstream.archive").warning(
                    "archive job %s was interrupted by a crash: queued again", crashed.job_id
                )
            while not self._stopping:
                self._wake.clear()  # before looking: a job spooled from now on wakes the wait below
                entry: SpoolEntry | None = await asyncio.to_thread(self.spool.take, self._now_ms())
                if entry is None:
                    await self._wait_for_work()
                    continue
                self._idle.clear()
                await self._run_one(entry)
        finally:
            self.spool.unlock()

    async def _acquire(self) -> None:
        tries = 0
        while True:
            try:
                await asyncio.to_thread(self.spool.lock)
                return
            except SpoolLocked:
                if tries == 0:
                    log.warning("archive spool %s is drained by another process: waiting for it", self.spool.root)
            except OSError as exc:
                if tries == 0:
                    log.error("archive spool %s unusable (%s): retrying", self.spool.root, exc)
            tries += 1
            await asyncio.sleep(backoff_s(tries, 0.05, 2.0))

    async def _wait_for_work(self) -> None:
        depth = await asyncio.to_thread(self.spool.depth)
        ARCHIVE_QUEUE_DEPTH.set(depth)
        due = await asyncio.to_thread(self.spool.next_due_ms)
        if due is None:
            self._idle.set()
        timeout = self.idle_poll_s if due is None else max(0.0, min(self.idle_poll_s, (due - self._now_ms()) / 1000))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    async def _run_one(self, entry: SpoolEntry) -> None:
        attempts = entry.attempts + 1
        try:
            data = await asyncio.to_thread(self.spool.read, entry)
            stored = await asyncio.to_thread(self.handler, data)
        except Exception as exc:
            log_failure(entry.call_sid, exc, attempts, self.what)
            await self._after_failure(entry, exc, attempts)
            return
        await asyncio.to_thread(self.spool.done, entry)
        self.stored += 1
        if stored is not None:
            call_logger(stored.call_sid, "callstream.archive").info("archived in %s", stored.location)
            if self.publish is not None:
                self.publish(ArchiveStoredEvent(call_sid=stored.call_sid, t=int(time.time() * 1000), location=stored.location))

    async def _after_failure(self, entry: SpoolEntry, exc: Exception, attempts: int) -> None:
        clog = call_logger(entry.call_sid, "callstream.archive")
        try:
            if not is_retryable(exc) or (self.max_attempts is not None and attempts >= self.max_attempts):
                where = await asyncio.to_thread(self.spool.bury, entry, f"{type(exc).__name__}: {exc}")
                clog.error("archive job %s given up after %d attempt(s): kept in %s", entry.job_id, attempts, where)
                return
            delay = backoff_s(attempts, self.backoff_base_s, self.backoff_cap_s)
            await asyncio.to_thread(self.spool.retry, entry, self._now_ms() + int(delay * 1000))
            clog.warning("archive job %s kept: retry in %.1f s", entry.job_id, delay)
        except OSError:
            # the spool itself is failing (disk): the job stays in processing/
            # and comes back at the next start-up (recover)
            clog.exception("archive job %s could not be put back in the spool", entry.job_id)

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Until nothing is pending or waiting (True), or `timeout_s` passes (False)."""
        self._wake.set()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if await asyncio.to_thread(self.spool.depth) == 0:
                return True
            self._idle.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), min(0.5, max(0.0, deadline - time.monotonic())))
        return await asyncio.to_thread(self.spool.depth) == 0

