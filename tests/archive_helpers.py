"""Shared pieces of the archive tests: a hand-made call record, a store that
fills up like a small disk, and a private redis-server."""

from __future__ import annotations

import contextlib
import errno
import os
import select
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from agent.archive_store import FolderStore
from agent.events import (
    ActionEvent,
    BargeInEvent,
    CallEndedEvent,
    CallStartedEvent,
    FeedEvent,
    TranscriptFinalEvent,
    TransitionEvent,
)
from agent.ports import CallRecord
from media import mulaw
from media.recording import CallRecording

T0 = 1_714_521_600_000  # 2024-05-01T00:00:00Z
CALL_SID = "CA" + "1" * 32


def tone(ms: int, freq: float = 440.0, level: float = 8000.0) -> bytes:
    t = np.arange(ms * 8) / 8000
    return mulaw.encode((level * np.sin(2 * np.pi * freq * t)).astype(np.int16))


def sample_record(call_sid: str = CALL_SID, *, started_at_ms: int = T0, continuation: bool = False) -> CallRecord:
    """A 4 s call: the greeting cut by barge-in at 1.2 s, the caller says
    "agent" (1.0–1.8 s), the transfer prompt plays 2.0–3.0 s."""
    recording = CallRecording()
    caller = tone(1000, level=0) + tone(800, 300.0) + tone(2200, level=0)
    for i in range(0, len(caller), 160):
        recording.caller(i // 8, caller[i : i + 160])
    recording.agent(0, tone(1200, 600.0))
    recording.agent(2000, tone(1000, 600.0))

    def ev(cls: type[FeedEvent], **fields: object) -> FeedEvent:
        return cls(call_sid=call_sid, t=started_at_ms, **fields)

    events = (
        ev(CallStartedEvent, stream_sid="MZ1", from_="+1555***0000", to="+1555***0001", flow="acme"),
        ev(TransitionEvent, from_=None, to="menu", intent=None),
        ev(ActionEvent, action="say", detail={"say_id": 1, "text": "Thanks for calling Acme. Say billing or agent."}),
        ev(BargeInEvent, latency_ms=60, say_id=1, heard_ms=1200),
        ev(TranscriptFinalEvent, speaker="agent", text="Thanks for calling", start_ms=0, end_ms=1200, interrupted=True, heard_ms=1200),
        ev(TranscriptFinalEvent, speaker="caller", text="agent <now> & then", start_ms=1000, end_ms=1800, confidence=0.91),
        ev(TransitionEvent, from_="menu", to="operator", intent="agent"),
        ev(ActionEvent, action="say", detail={"say_id": 2, "text": "Transferring you."}),
        ev(TranscriptFinalEvent, speaker="agent", text="Transferring you.", start_ms=2000, end_ms=3000, heard_ms=1000),
        ev(ActionEvent, action="slot", detail={"name": "account", "value": "***"}),
        ev(CallEndedEvent, reason="transfer:+14155550100", path=("menu", "operator"), duration_ms=4000),
    )
    return CallRecord(
        call_sid=call_sid,
        stream_sid="MZ" + "2" * 32,
        account_sid="AC" + "3" * 32,
        flow="acme",
        from_="+1555***0000",
        to="+1555***0001",
        started_at_ms=started_at_ms,
        duration_ms=4000,
        end_reason="call_updated",
        outcome="transfer:+14155550100",
        path=("menu", "operator"),
        slots={"account": "***"},
        events=events,
        bargein_ms=(60,),
        response_ms=(3.25,),
        malformed={"bad_json": 2},
        recording=recording,
        continuation=continuation,
    )


class QuotaFolderStore(FolderStore):
    """A folder store on a 'disk' of `quota` bytes: a put past it fails with
    ENOSPC, as a full file system does. Raise `quota` to 'free space'."""

    def __init__(self, root: str | os.PathLike[str], quota: int) -> None:
        super().__init__(root)
        self.quota = quota
        self.used = 0

    def put(self, key: str, data: bytes, content_type: str) -> None:
        if self.used + len(data) > self.quota:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), key)
        super().put(key, data, content_type)
        self.used += len(data)


# --- a private redis-server -------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """`redis-server` on a free port with an append-only file, restartable
    with its data (a restart is SHUTDOWN then start on the same folder)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
             "--appendfsync", "always", "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()  # SIGTERM: redis-server flushes the AOF and exits
            self.process.wait(10)
            self.process = None


@contextlib.contextmanager
def redis_server(folder: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on the PATH (apt-get install redis-server)")
    server = RedisServer(folder)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# --- `callstream worker` subprocesses ----------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def worker_env(extra: dict[str, str], hook: bool = False) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CALLSTREAM_", "REDIS_", "TWILIO_"))}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    if hook:
        env["CALLSTREAM_ARCHIVE_TEST_HOOK"] = "block-before-store"
    return env


def start_worker(cwd: Path, extra: dict[str, str], *args: str, hook: bool = False) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "worker", *args],
        cwd=cwd, env=worker_env(extra, hook), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def run_worker(cwd: Path, extra: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", "worker", *args],
        cwd=cwd, env=worker_env(extra), capture_output=True, text=True, timeout=60,
    )


def wait_for_line(process: subprocess.Popen[str], text: str, timeout_s: float = 30.0) -> None:
    """Read the process's stderr until a line holds `text` (fails on exit or timeout)."""
    assert process.stderr is not None
    deadline = time.monotonic() + timeout_s
    seen = []
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stderr], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        line = process.stderr.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return
    raise AssertionError(f"worker never said {text!r}; it said:\n{''.join(seen)}")


def call_folder_of(archive: Path) -> Path:
    """The one call folder in a folder archive."""
    [call_json] = list(archive.rglob("call.json"))
    return call_json.parent
