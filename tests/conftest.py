"""Shared fixtures: real redis-server instances, and the CI rule for Redis tests.

Tests that need Redis are marked `@pytest.mark.redis` and use the fixtures
below. They start a private `redis-server` on a free loopback port when the
binary is on the PATH (no state shared with anything else, nothing saved to
disk); otherwise they use a Redis already listening on 127.0.0.1:6379 under a
unique key prefix; with neither they skip, naming what is missing.

CI sets CALLSTREAM_REQUIRE_REDIS=1: the run then FAILS if any `redis` test
was skipped, or if none ran (`make test` must exercise the real Redis paths).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

REQUIRE_REDIS = os.environ.get("CALLSTREAM_REQUIRE_REDIS") == "1"
SHARED_REDIS = "redis://127.0.0.1:6379/0"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisProcess:
    """A private redis-server on a loopback port, which tests may stop and restart."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.workdir = workdir
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
                "--loglevel", "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2, socket_timeout=0.5)
        try:
            for _ in range(250):  # up to ~5 s for the process to listen
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if self.proc.poll() is not None:
                        break
                    time.sleep(0.02)
        finally:
            client.close()
        self.stop()
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None


def _shared_redis_answers() -> bool:
    client = redis.Redis.from_url(SHARED_REDIS, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis URL for the whole run: a private redis-server, or the shared one."""
    if shutil.which("redis-server"):
        server = RedisProcess(tmp_path_factory.mktemp("redis"))
        server.start()
        try:
            yield server.url
        finally:
            server.stop()
    elif _shared_redis_answers():
        yield SHARED_REDIS
    else:
        pytest.skip("no redis-server on the PATH and nothing answers at 127.0.0.1:6379")


@pytest.fixture
def redis_prefix(redis_server: str) -> Iterator[str]:
    """A key prefix for one test; its keys are deleted afterwards."""
    prefix = f"test-{secrets.token_hex(4)}:"
    yield prefix
    client = redis.Redis.from_url(redis_server, socket_timeout=2)
    try:
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
    except (redis.RedisError, OSError):
        pass
    finally:
        client.close()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A redis-server of this test's own, to stop and restart."""
    if not shutil.which("redis-server"):
        pytest.skip("needs the redis-server binary on the PATH (to stop and restart it)")
    server = RedisProcess(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# --- the CI rule: CALLSTREAM_REQUIRE_REDIS=1 ------------------------------------------

_redis_ran: list[str] = []
_redis_skipped: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "redis" not in report.keywords:
        return
    if report.skipped:
        _redis_skipped.append(report.nodeid)
    elif report.when == "call":
        _redis_ran.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if REQUIRE_REDIS and (_redis_skipped or not _redis_ran):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not REQUIRE_REDIS:
        return
    if _redis_skipped:
        terminalreporter.write_line(
            f"CALLSTREAM_REQUIRE_REDIS=1: {len(_redis_skipped)} Redis test(s) skipped "
            f"(first: {_redis_skipped[0]}): this run FAILS",
            red=True,
        )
    elif not _redis_ran:
        terminalreporter.write_line(
            "CALLSTREAM_REQUIRE_REDIS=1: no Redis test ran: this run FAILS", red=True
        )
    else:
        terminalreporter.write_line(f"CALLSTREAM_REQUIRE_REDIS=1: {len(_redis_ran)} Redis tests ran")
