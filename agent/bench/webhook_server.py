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
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
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
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def server_process(env: Mapping[str, str] | None = None, *, log_level: str = "INFO") -> Iterator[ServerProcess]:
    """Start `python -m agent.cli serve` on a free loopback port; stop it (SIGTERM) after."""
    with tempfile.TemporaryDirectory(prefix="callstream-bench-") as tmp:
        port = free_port()
        auth_token, ops_token = secrets.token_hex(16), secrets.token_hex(8)
        child_env = {k: v for k, v in os.environ.items() if k not in _CLEARED}
        child_env.update(
            {
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")])),
                "TWILIO_AUTH_TOKEN": auth_token,
                "CALLSTREAM_OPS_TOKEN": ops_token,
                "CALLSTREAM_ARCHIVE": str(Path(tmp) / "archive"),
                "LOG_LEVEL": log_level,
                **(env or {}),
            }
        )
        log_path = Path(tmp) / "server.log"
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", "agent.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
                env=child_env, cwd=tmp, stdout=log_file, stderr=subprocess.STDOUT,
            )
        server = ServerProcess(f"http://127.0.0.1:{port}", auth_token, ops_token, proc.pid, log_path)
        try:
            _wait_ready(server, proc)
            yield server
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=15)


def _wait_ready(server: ServerProcess, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"callstream serve exited with {proc.returncode} during start-up:\n{_log_tail(server.log_path)}"
            )
        try:
            with urllib.request.urlopen(server.base + "/readyz", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"callstream serve was not ready within {START_TIMEOUT_S:.0f} s:\n{_log_tail(server.log_path)}")
