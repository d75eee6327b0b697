"""A `callstream serve` process for the latency benchmarks (webhook, barge-in).

The server runs as its own process, as in production: the benchmark client
then shares neither the interpreter lock nor the event loop with it. It binds
loopback with a throwaway TWILIO_AUTH_TOKEN, so every webhook and upgrade is
signed and checked, and a throwaway ops token. Its log (the production INFO
level by default) goes to a file, shown when the process fails.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from agent.bench.process import child_env, cpu_seconds, free_port, launch, stop, wait_ready

START_TIMEOUT_S = 60.0

# settings the benchmark chooses itself: the caller's environment must not change them
_CLEARED = (
    "PUBLIC_BASE_URL", "TWILIO_ACCOUNT_SID", "TWILIO_API_BASE", "REDIS_URL", "CALLSTREAM_FLOW",
    "CALLSTREAM_SPEECH", "DEEPGRAM_API_KEY", "DEEPGRAM_URL", "POLLY_ENDPOINT_URL",
)


@dataclass(frozen=True)
class ServerProcess:
    base: str  # http://127.0.0.1:port (also what signatures are computed over)
    auth_token: str
    ops_token: str
    pid: int
    log_path: Path

    @property
    def media_url(self) -> str:
        return "ws" + self.base[len("http"):] + "/twilio/media"

    def cpu_s(self) -> float:
        """User + system CPU the server process has used so far (Linux /proc)."""
        return cpu_seconds(self.pid)


@contextlib.contextmanager
def server_process(env: Mapping[str, str] | None = None, *, log_level: str = "INFO") -> Iterator[ServerProcess]:
    """Start `python -m agent.cli serve` on a free loopback port; stop it (SIGTERM) after."""
    with tempfile.TemporaryDirectory(prefix="callstream-bench-") as tmp:
        folder = Path(tmp)
        port = free_port()
        auth_token, ops_token = secrets.token_hex(16), secrets.token_hex(8)
        settings = {
            "TWILIO_AUTH_TOKEN": auth_token,
            "CALLSTREAM_OPS_TOKEN": ops_token,
            "CALLSTREAM_ARCHIVE": str(folder / "archive"),
            "LOG_LEVEL": log_level,
            **(env or {}),
        }
        proc = launch(
            [sys.executable, "-m", "agent.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            child_env(os.environ, _CLEARED, **settings), folder,
        )
        server = ServerProcess(f"http://127.0.0.1:{port}", auth_token, ops_token, proc.pid, folder / "server.log")
        try:
            wait_ready(proc, server.base, folder, START_TIMEOUT_S)
            yield server
        finally:
            stop(proc, timeout_s=15)
