"""A server process for the benchmarks: start it on a free loopback port,
wait until it is ready, read its CPU time (/proc) and its log's tail.

`bench calls` (agent/bench/calls_server.py) and the latency benchmarks
(agent/bench/webhook_server.py) each choose the command and the settings;
the mechanics are here once.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_env(environ: Mapping[str, str], cleared: tuple[str, ...], **settings: str) -> dict[str, str]:
    """`environ` without the settings the benchmark chooses itself, plus
    `settings`; the repository first on PYTHONPATH."""
    env = {k: v for k, v in environ.items() if k not in cleared}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), environ.get("PYTHONPATH", "")) if p)
    env.update(settings)
    return env


def launch(command: list[str], env: Mapping[str, str], folder: Path) -> subprocess.Popen[bytes]:
    """Start `command` in `folder` (no .env is read there), its output to folder/server.log."""
    with open(folder / "server.log", "wb") as log:
        return subprocess.Popen(command, cwd=folder, env=dict(env), stdout=log, stderr=subprocess.STDOUT)


def log_tail(folder: Path, lines: int = 30) -> str:
    try:
        text = (folder / "server.log").read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def wait_ready(process: subprocess.Popen[bytes], base_url: str, folder: Path, timeout_s: float) -> None:
    """Until GET /readyz answers 200; RuntimeError (with the log's tail) if
    the process exits first or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited ({process.returncode}) during start-up:\n{log_tail(folder)}")
        try:
            with urllib.request.urlopen(base_url + "/readyz", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server was not ready within {timeout_s:.0f} s:\n{log_tail(folder)}")
        time.sleep(0.05)


def stop(process: subprocess.Popen[bytes], timeout_s: float = 10) -> None:
    """SIGTERM (the server drains), then SIGKILL after `timeout_s`."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- CPU time -----------------------------------------------------------------------------
def parse_proc_stat(text: str) -> float:
    """utime + stime in clock ticks from /proc/PID/stat (all threads of the process).

    The second field, the command, is in parentheses and may hold spaces or
    parentheses itself: the fields are counted after its last ')'. utime and
    stime are fields 14 and 15 of proc(5)."""
    rest = text[text.rindex(")") + 2 :].split()
    return float(int(rest[11]) + int(rest[12]))


def cpu_seconds(pid: int) -> float:
    """CPU time the process has used so far (user + system, every thread)."""
    with open(f"/proc/{pid}/stat") as f:
        return parse_proc_stat(f.read()) / os.sysconf("SC_CLK_TCK")
