"""The server side of `callstream bench calls`: start it, read its CPU time
(/proc) and its metrics (/metrics, Prometheus text)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from agent.bench.process import child_env, free_port, launch, log_tail, stop, wait_ready

BENCH_FLOW = Path(__file__).resolve().parent / "calls_flow.yaml"
# settings that would change what the server does per call: the bench sets its own
CLEARED_ENV = (
    "TWILIO_AUTH_TOKEN", "TWILIO_ACCOUNT_SID", "REDIS_URL", "CALLSTREAM_SPEECH", "CALLSTREAM_TTS",
    "CALLSTREAM_STT", "CALLSTREAM_FLOW", "CALLSTREAM_ARCHIVE", "PUBLIC_BASE_URL", "CALLSTREAM_OPS_TOKEN",
)


# --- CPU time -----------------------------------------------------------------------------
def parse_schedstat(text: str) -> float:
    """Seconds spent runnable but waiting for a CPU, from /proc/PID/schedstat
    ("time spent waiting on a runqueue", the second field, in ns)."""
    return int(text.split()[1]) / 1e9


def run_queue_wait_seconds(pid: int) -> float | None:
    """How long the process's main thread (the event loop) waited for a core
    while it had work: time another process had its core. None if unknown."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return parse_schedstat(f.read())
    except (OSError, ValueError, IndexError):
        return None


# --- metrics ------------------------------------------------------------------------------
Buckets = dict[str, tuple[tuple[float, float], ...]]  # histogram → ((le, cumulative count), ...)
Scrape = tuple[Buckets, dict[str, float]]  # histograms, plain samples (counters/gauges)


def parse_metrics(text: str) -> Scrape:
    """Histogram buckets and unlabelled samples from a Prometheus text page."""
    histograms: dict[str, list[tuple[float, float]]] = {}
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_bucket") and "le" in sample.labels and len(sample.labels) == 1:
                histograms.setdefault(family.name, []).append((float(sample.labels["le"]), sample.value))
            elif not sample.labels:
                samples[sample.name] = sample.value
    return {k: tuple(sorted(v)) for k, v in histograms.items()}, samples


def scrape(base_url: str) -> Scrape:
    with urllib.request.urlopen(base_url + "/metrics", timeout=10) as resp:
        return parse_metrics(resp.read().decode())


def bucket_delta(before: Buckets, after: Buckets, name: str) -> tuple[tuple[float, float], ...]:
    """Per-bucket cumulative counts observed between two scrapes."""
    old = dict(before.get(name, ()))
    return tuple((le, count - old.get(le, 0.0)) for le, count in after.get(name, ()))


@dataclass(frozen=True)
class Quantiles:
    count: int
    p50: float
    p99: float
    max: float  # the upper bound of the highest bucket that was hit
    over: bool = False  # something landed above the last finite bucket (max is a lower bound)

    def line(self) -> str:
        if not self.count:
            return "no samples"
        top = f">{self.max:g}" if self.over else f"≤{self.max:g}"
        return f"p50 {self.p50:.1f} ms, p99 {self.p99:.1f} ms, max {top} ms (n={self.count})"

    def as_dict(self) -> dict[str, float | int | bool]:
        return {"count": self.count, "p50": round(self.p50, 2), "p99": round(self.p99, 2),
                "max_bucket": self.max, "max_above_last_bucket": self.over}


def bucket_quantiles(cumulative: tuple[tuple[float, float], ...]) -> Quantiles:
    """p50/p99 from cumulative bucket counts, linear within a bucket (as
    Prometheus' histogram_quantile does); above the last finite bucket the
    answer is that bucket's bound."""
    if not cumulative or cumulative[-1][1] <= 0:
        return Quantiles(0, 0.0, 0.0, 0.0)
    total = cumulative[-1][1]
    finite = [le for le, _ in cumulative if le != float("inf")]

    def quantile(q: float) -> float:
        rank = q * total
        lower, below = 0.0, 0.0
        for le, count in cumulative:
            if count >= rank:
                if le == float("inf"):
                    return finite[-1] if finite else 0.0
                inside = count - below
                return lower + (le - lower) * ((rank - below) / inside if inside else 1.0)
            lower, below = le, count
        return finite[-1] if finite else 0.0

    top, below = 0.0, 0.0
    over = False
    for le, count in cumulative:
        if count > below:
            if le == float("inf"):
                over = True
                top = finite[-1] if finite else 0.0
            else:
                top = le
        below = count
    return Quantiles(int(total), quantile(0.5), quantile(0.99), top, over)


# --- the server process -------------------------------------------------------------------
@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    base_url: str
    folder: tempfile.TemporaryDirectory[str]

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(Path(self.folder.name), lines)

    def stop(self) -> None:
        stop(self.process)
        self.folder.cleanup()


def server_env(folder: str, environ: Mapping[str, str]) -> dict[str, str]:
    return child_env(
        environ, CLEARED_ENV,
        CALLSTREAM_STT="none",  # STT stubbed (DESIGN.md "Performance"); TTS: eSpeak, cached
        CALLSTREAM_FLOW=str(BENCH_FLOW),
        CALLSTREAM_ARCHIVE=str(Path(folder) / "archive"),
        LOG_LEVEL=environ.get("LOG_LEVEL", "INFO"),
    )


def start_server(core: int | None, *, floor: bool = False, ready_timeout_s: float = 60.0) -> ServerProcess:
    """`callstream serve` on a free loopback port, in a temporary folder (no
    .env is read, the archive goes there), pinned to `core`; or with `floor`
    the bare socket of agent/bench/calls_floor.py."""
    folder = tempfile.TemporaryDirectory(prefix="callstream-bench-")
    port = free_port()
    command = (
        [sys.executable, "-m", "agent.bench.calls_floor", str(port)] if floor else
        [sys.executable, "-c", "import sys; from agent.cli import main; sys.exit(main())",
         "serve", "--host", "127.0.0.1", "--port", str(port)]
    )
    process = launch(command, server_env(folder.name, os.environ), Path(folder.name))
    server = ServerProcess(process, f"http://127.0.0.1:{port}", folder)
    if core is not None:
        os.sched_setaffinity(process.pid, {core})  # its threads start later and inherit it
    try:
        wait_ready(process, server.base_url, Path(folder.name), ready_timeout_s)
    except RuntimeError as exc:
        server.stop()
        raise SystemExit(f"bench calls: {exc}") from None
    return server
