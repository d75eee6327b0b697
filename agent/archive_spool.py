"""The spool: a durable queue of archive jobs in a local folder.

Theory of operation
-------------------
One file per job. A job moves between sub-folders only by `rename`, which
POSIX makes atomic, so at any instant it is in exactly one of them:

    tmp/ ──put──▶ pending/ ──take──▶ processing/ ──done──▶ (deleted)
                     ▲                   │
                     └──────retry────────┤ (attempts + 1, due later)
                                         └──bury──▶ dead/ (kept, with a .reason)

`put` writes into tmp/, fsyncs the file, renames it into pending/ and fsyncs
the folder: once `put` returns, the job survives a crash or a power cut.
Names sort by due time — `{due_ms:013d}.{attempts}.{job_id}.job` — so the
oldest due job is the first name, and a job waiting out a retry backoff lets
the others pass. The attempts count lives in the name, so backoff and the
dead-letter limit survive restarts.

One drainer per spool: it holds an exclusive `flock` on `lock` (released by
the kernel when its process dies, even by SIGKILL), and only the holder may
`recover` — move processing/ back to pending/: whatever is there was taken
by a drainer that died between taking and finishing. Writers (`put`) need no
lock. All calls block (disk I/O): async code runs them on a thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from agent.archive_render import safe_part
from agent.durable_files import fsync_dir, write_durably

STALE_TMP_S = 3600  # a put takes milliseconds: older tmp files are from a crashed writer
_NAME = re.compile(r"^(\d{13})\.(\d+)\.([A-Za-z0-9_-]+)\.job$")


@dataclass(frozen=True)
class SpoolEntry:
    path: Path
    due_ms: int
    attempts: int
    job_id: str

    @property
    def call_sid(self) -> str:
        """The job id starts with the call SID (for log lines)."""
        return self.job_id.split("-", 1)[0]

    @staticmethod
    def parse(path: Path) -> SpoolEntry | None:
        match = _NAME.match(path.name)
        if match is None:
            return None
        return SpoolEntry(path, int(match[1]), int(match[2]), match[3])


class SpoolLocked(Exception):
    """Another drainer (process) holds this spool."""


class Spool:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.tmp = self.root / "tmp"
        self.pending = self.root / "pending"
        self.processing = self.root / "processing"
        self.dead = self.root / "dead"
        self._lock_fd: int | None = None

    def create(self) -> None:
        for folder in (self.tmp, self.pending, self.processing, self.dead):
            folder.mkdir(parents=True, exist_ok=True)

    # --- writers -----------------------------------------------------------------
    @staticmethod
    def new_job_id(call_sid: str, kind: str) -> str:
        return f"{safe_part(call_sid)}-{kind}-{secrets.token_hex(6)}"

    def put(self, data: bytes, job_id: str, now_ms: int) -> SpoolEntry:
        """Durably add a job, due now."""
        self.create()
        name = _name(now_ms, 0, job_id)
        final = self.pending / name
        write_durably(self.tmp / name, final, data)
        return SpoolEntry(final, now_ms, 0, job_id)

    # --- the drainer (holds the lock) ---------------------------------------------
    def lock(self) -> None:
        """Become this spool's only drainer; `SpoolLocked` if another process is."""
        self.create()
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolLocked(str(self.root)) from None
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def recover(self) -> list[SpoolEntry]:
        """Put back jobs a crashed drainer had taken (call only while holding the lock)."""
        assert self._lock_fd is not None, "recover() needs the spool lock"
        back = []
        for path in sorted(self.processing.iterdir()):
            entry = SpoolEntry.parse(path)
            if entry is None:
                continue
            os.replace(path, self.pending / path.name)
            back.append(SpoolEntry(self.pending / path.name, entry.due_ms, entry.attempts, entry.job_id))
        stale = time.time() - STALE_TMP_S
        for path in self.tmp.iterdir():  # half-written by a crashed writer: never acknowledged
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < stale:  # a live writer may be mid-put
                    path.unlink()
        if back:
            fsync_dir(self.pending)
        return back

    def next_due_ms(self) -> int | None:
        """When the earliest pending job is due (None: nothing pending)."""
        for name in sorted(os.listdir(self.pending)):
            entry = SpoolEntry.parse(self.pending / name)
            if entry is not None:
                return entry.due_ms
        return None

    def take(self, now_ms: int) -> SpoolEntry | None:
        """Move the earliest due job into processing/; None if none is due."""
        for name in sorted(os.listdir(self.pending)):
            entry = SpoolEntry.parse(self.pending / name)
            if entry is None:
                continue
            if entry.due_ms > now_ms:
                return None  # names sort by due time: nothing later is due either
            target = self.processing / name
            try:
                os.replace(entry.path, target)
            except FileNotFoundError:
                continue
            return SpoolEntry(target, entry.due_ms, entry.attempts, entry.job_id)
        return None

    @staticmethod
    def read(entry: SpoolEntry) -> bytes:
        return entry.path.read_bytes()

    def done(self, entry: SpoolEntry) -> None:
        entry.path.unlink()
        fsync_dir(self.processing)

    def retry(self, entry: SpoolEntry, due_ms: int) -> SpoolEntry:
        name = _name(due_ms, entry.attempts + 1, entry.job_id)
        os.replace(entry.path, self.pending / name)
        fsync_dir(self.pending)
        return SpoolEntry(self.pending / name, due_ms, entry.attempts + 1, entry.job_id)

    def bury(self, entry: SpoolEntry, reason: str) -> Path:
        """Give up on a job: kept in dead/ with the reason beside it."""
        target = self.dead / entry.path.name
        (self.dead / (entry.path.name + ".reason")).write_text(reason + "\n")
        os.replace(entry.path, target)
        fsync_dir(self.dead)
        return target

    def requeue_dead(self, now_ms: int) -> int:
        """Move every dead job back to pending/, attempts reset."""
        count = 0
        for path in sorted(self.dead.glob("*.job")):
            entry = SpoolEntry.parse(path)
            if entry is None:
                continue
            os.replace(path, self.pending / _name(now_ms, 0, entry.job_id))
            with contextlib.suppress(OSError):
                (self.dead / (path.name + ".reason")).unlink()
            count += 1
        if count:
            fsync_dir(self.pending)
        return count

    def depth(self) -> int:
        """Jobs not finished: pending and processing. A job may move between the
        two while we look (take, retry), so pending is read on both sides of
        processing and jobs are counted once by id."""
        ids: set[str] = set()
        for folder in (self.pending, self.processing, self.pending):
            with contextlib.suppress(FileNotFoundError):
                for name in os.listdir(folder):
                    entry = SpoolEntry.parse(folder / name)
                    if entry is not None:
                        ids.add(entry.job_id)
        return len(ids)

    def dead_count(self) -> int:
        with contextlib.suppress(FileNotFoundError):
            return sum(1 for n in os.listdir(self.dead) if n.endswith(".job"))
        return 0


def _name(due_ms: int, attempts: int, job_id: str) -> str:
    return f"{due_ms:013d}.{attempts}.{job_id}.job"
