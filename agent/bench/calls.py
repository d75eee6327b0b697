"""`callstream bench calls`: N concurrent real-time Twilio calls against a
server process; server CPU per call, frame lateness, and whether it kept up.

Theory of operation
-------------------
The server is a separate `callstream serve` (STT off, eSpeak prompts cached
after the first call, archive in a temporary folder, the flow in
calls_flow.yaml that keeps every call going) pinned to one core, or one
already running (`--url`, CPU from `--pid`). The load generator
(agent/bench/calls_load.py) runs in worker processes on the other cores.

A trial: the calls start evenly over `--stagger` seconds, run `--warmup`
seconds more (greetings synthesized, the loop settled), then the measured
window of `--seconds`. Over the window the bench reads:

* server CPU: utime+stime of the server process (/proc/PID/stat), as % of
  one core, per call, and per frame handled (with a projection of the calls
  one core could take at that cost);
* frame lateness: the server's `callstream_frame_lateness_ms` histogram
  (how late it handled inbound frames against each call's media timeline,
  agent/metrics.py), scraped at the start, middle and end of the window;
  p50/p99 are read off its buckets, max is the highest bucket hit;
* event-loop lag: `callstream_event_loop_lag_ms` (a 100 ms timer's oversleep);
* the generator's own lateness (how late its 5 ms ticks ran) and CPU;
* how long the server's event loop was runnable but waiting for its core
  (/proc/PID/schedstat): above 5 % another process had the core, and the
  report says lateness is the machine's as much as the server's.

"Kept up": every call connected and stayed up, lateness p99 under
`--max-lateness-ms`, no growing backlog (the second half's lateness p50 no
more than 10 ms above the first half's), and the generator itself on time
(tick lateness p99 under one frame, 20 ms). A trial where the generator fell
behind says nothing about the server and is reported as such.

`--floor` serves agent/bench/calls_floor.py (a bare json + base64 +
webrtcvad socket) instead of callstream: the floor on this machine.

`--search` finds the largest N that keeps up: it doubles N from `--calls`
until a trial fails, then bisects to within about 5 %. A trial where the
generator fell behind counts as a failure; if the smallest failure was the
generator's, the report says the server may do more.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from agent.bench.calls_load import LoadPlan, worker_main
from agent.bench.calls_server import (
    Quantiles,
    ServerProcess,
    bucket_delta,
    bucket_quantiles,
    run_queue_wait_seconds,
    scrape,
    start_server,
)
from agent.bench.process import cpu_seconds
from agent.bench.stats import summarize

LATENESS = "callstream_frame_lateness_ms"
LOOP_LAG = "callstream_event_loop_lag_ms"
BARGEINS = "callstream_bargein_latency_ms"
GENERATOR_MAX_LATENESS_MS = 20.0  # one frame
BACKLOG_GROWTH_MS = 10.0
CONTENDED_WAIT_PCT = 5.0  # the server's core was not its own


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--calls", type=int, default=50, help="concurrent calls (with --search: the first N tried)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window per trial (default %(default)s)")
    parser.add_argument("--warmup", type=float, default=4.0, help="seconds after the last call started before measuring")
    parser.add_argument("--stagger", type=float, default=1.0, help="calls start evenly over this many seconds")
    parser.add_argument("--search", action="store_true", help="find the largest N that keeps up")
    parser.add_argument("--max-calls", type=int, default=2000, help="--search stops doubling here")
    parser.add_argument("--max-lateness-ms", type=float, default=100.0, help="kept up: frame lateness p99 under this")
    parser.add_argument("--url", help="a running server's base URL (http://host:port) instead of starting one")
    parser.add_argument("--pid", type=int, help="with --url: the server's pid, to read its CPU time")
    parser.add_argument("--server-core", type=int, default=0,
                        help="core the started server is pinned to (with --url: the core it runs on); "
                        "the load generator uses the others")
    parser.add_argument("--floor", action="store_true",
                        help="serve the bare json+base64+webrtcvad socket (agent/bench/calls_floor.py) instead: "
                        "the floor to compare callstream with on this machine")
    parser.add_argument("--workers", type=int, help="load generator processes (default: one per other core)")


# --- search ---------------------------------------------------------------------------------
def next_calls(history: list[tuple[int, bool]], start: int, max_calls: int) -> int | None:
    """The next N to try given (N, kept up) so far; None when the search is
    done: double from `start` until a failure (or `max_calls`), then bisect
    between the largest pass and the smallest failure to within ~5 %."""
    if not history:
        return max(1, min(start, max_calls))
    passed = max((n for n, ok in history if ok), default=0)
    failures = [n for n, ok in history if not ok]
    if not failures:
        if passed >= max_calls:
            return None
        return min(passed * 2, max_calls)
    failed = min(failures)
    if failed - passed <= max(1, passed // 20):
        return None
    return (passed + failed) // 2


# --- one trial ------------------------------------------------------------------------------
@dataclass
class Trial:
    calls: int
    seconds: float
    connected: int = 0
    failed: int = 0
    closed_by_server: int = 0
    server_cpu_pct: float | None = None  # of one core
    cpu_per_call_pct: float | None = None
    core_wait_pct: float | None = None  # server's event loop runnable but waiting for its core (others had it)
    cpu_us_per_frame: float | None = None  # server CPU over frames it handled
    calls_per_core_at_this_cost: float | None = None  # 100 % / (CPU per frame × 50 frames/s): a projection
    lateness: dict[str, Any] = field(default_factory=dict)
    lateness_halves_p50: tuple[float, float] = (0.0, 0.0)
    loop_lag: dict[str, Any] = field(default_factory=dict)
    frames_sent: int = 0
    frames_handled: int = 0
    marks_echoed: int = 0
    clears: int = 0
    bargeins: int = 0
    generator: dict[str, Any] = field(default_factory=dict)
    kept_up: bool = False
    generator_kept_up: bool = True
    problems: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        cpu = "n/a (no --pid)" if self.server_cpu_pct is None else (
            f"{self.server_cpu_pct:.1f} % of one core, {self.cpu_per_call_pct:.3f} % per call; "
            f"{self.cpu_us_per_frame or 0:.0f} µs per frame handled "
            f"(→ {self.calls_per_core_at_this_cost or 0:.0f} calls per core at that cost, a projection)"
        )
        gen = self.generator
        verdict = "KEPT UP" if self.kept_up else ("GENERATOR FELL BEHIND (says nothing about the server)"
                                                if not self.generator_kept_up else "FELL BEHIND")
        out = [
            f"{self.calls} calls, {self.seconds:.0f} s window: {verdict}",
            f"  calls: {self.connected} connected, {self.failed} failed, {self.closed_by_server} closed by the server",
            f"  server CPU: {cpu}",
            f"  server waited for its core: {_pct(self.core_wait_pct)} of the window (runnable, another process ran)",
            f"  frame lateness (server): {_q(self.lateness)}; p50 first/second half "
            f"{self.lateness_halves_p50[0]:.1f}/{self.lateness_halves_p50[1]:.1f} ms",
            f"  event-loop lag (server): {_q(self.loop_lag)}",
            f"  frames: {self.frames_sent} sent, {self.frames_handled} handled (server counter, flushed per 50); "
            f"{self.marks_echoed} marks echoed, {self.clears} clears, {self.bargeins} barge-ins",
            f"  generator: {gen.get('workers', 0)} process(es), tick lateness "
            f"p50 {gen.get('p50', 0):.1f} ms p99 {gen.get('p99', 0):.1f} ms max {gen.get('max', 0):.1f} ms, "
            f"CPU {gen.get('cpu_pct', 0):.0f} % of a core per process",
        ]
        out += [f"  ! {p}" for p in self.problems]
        out += [f"  error: {e}" for e in self.errors[:5]]
        return out


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} %"


def _q(d: dict[str, Any]) -> str:
    if not d or not d.get("count"):
        return "no samples"
    top = (">" if d["max_above_last_bucket"] else "≤") + f"{d['max_bucket']:g}"
    return f"p50 {d['p50']:.1f} ms, p99 {d['p99']:.1f} ms, max {top} ms (n={d['count']})"


def generator_cores(server_core: int | None) -> list[int]:
    cores = sorted(os.sched_getaffinity(0))
    others = [c for c in cores if c != server_core]
    return others or cores


def run_trial(args: argparse.Namespace, base_url: str, pid: int | None, calls: int) -> Trial:
    ws_url = "ws://" + base_url.split("://", 1)[1].rstrip("/") + "/twilio/media"
    cores = generator_cores(args.server_core)
    workers = max(1, min(args.workers or len(cores), calls))
    ctx = multiprocessing.get_context("spawn")
    procs, pipes = [], []
    first = 0
    for w in range(workers):
        share = calls // workers + (1 if w < calls % workers else 0)
        plan = LoadPlan(ws_url, first, share, calls, args.stagger, cores[w % len(cores)])
        first += share
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=worker_main, args=(plan, child), daemon=True)
        proc.start()
        procs.append(proc)
        pipes.append(parent)
    for pipe in pipes:
        if not pipe.poll(60) or pipe.recv() != "ready":
            raise SystemExit("bench calls: a load generator process did not start")
    start_at = time.monotonic() + 0.5
    measure_from = start_at + args.stagger + args.warmup
    measure_to = measure_from + args.seconds
    for pipe in pipes:
        pipe.send((start_at, measure_from, measure_to))

    _sleep_until(measure_from)
    cpu0 = cpu_seconds(pid) if pid else None
    wait0 = run_queue_wait_seconds(pid) if pid else None
    t0 = time.monotonic()
    first_scrape = _scrape(base_url)
    _sleep_until(measure_from + args.seconds / 2)
    mid_scrape = _scrape(base_url)
    _sleep_until(measure_to)
    cpu1 = cpu_seconds(pid) if pid else None
    wait1 = run_queue_wait_seconds(pid) if pid else None
    t1 = time.monotonic()
    last_scrape = _scrape(base_url)

    reports = []
    for pipe in pipes:
        if not pipe.poll(60):
            raise SystemExit("bench calls: a load generator process did not report")
        reports.append(pipe.recv())
    for proc in procs:
        proc.join(10)
    trial = assess(args, calls, reports, first_scrape, mid_scrape, last_scrape,
                   None if cpu0 is None or cpu1 is None else (cpu1 - cpu0) / (t1 - t0))
    if wait0 is not None and wait1 is not None:
        trial.core_wait_pct = 100 * (wait1 - wait0) / (t1 - t0)
        if trial.core_wait_pct > CONTENDED_WAIT_PCT:
            trial.problems.append(
                f"the server waited {trial.core_wait_pct:.0f} % of the window for its core (other processes "
                "had it): lateness here is the machine's as much as the server's"
            )
    return trial


def _scrape(base_url: str) -> Any:
    try:
        return scrape(base_url)
    except (OSError, ValueError) as exc:  # the server died or hung under load
        raise SystemExit(f"bench calls: the server stopped answering {base_url}/metrics ({exc})") from None


def _sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def assess(args: argparse.Namespace, calls: int, reports: list[dict[str, Any]], first: Any, mid: Any,
           last: Any, cpu_cores: float | None) -> Trial:
    trial = Trial(calls=calls, seconds=args.seconds)
    ticks: list[float] = []
    gen_cpu = []
    for r in reports:
        trial.connected += r["connected"]
        trial.failed += r["failed"]
        trial.closed_by_server += r["closed_by_server"]
        trial.frames_sent += r["frames_sent"]
        trial.marks_echoed += r["marks_echoed"]
        trial.clears += r["clears_in"]
        trial.errors += r["errors"]
        ticks += r["tick_lateness_ms"]
        gen_cpu.append(100 * r["cpu_s"] / r["window_s"] if r["window_s"] else 0.0)
    tick = summarize(ticks)
    trial.generator = {"workers": len(reports), "p50": tick.p50, "p99": tick.p99, "max": tick.max,
                       "cpu_pct": max(gen_cpu, default=0.0)}
    trial.frames_handled = int(last[1].get("callstream_frames_in_total", 0) - first[1].get("callstream_frames_in_total", 0))
    if cpu_cores is not None:
        trial.server_cpu_pct = 100 * cpu_cores
        trial.cpu_per_call_pct = trial.server_cpu_pct / calls
        # the counter is flushed per 50 frames of a call and scraped a moment
        # after the window: never count more frames than were sent in it
        frames = min(trial.frames_handled, trial.frames_sent) if trial.frames_sent else trial.frames_handled
        if frames > 0:
            trial.cpu_us_per_frame = 1e6 * cpu_cores * args.seconds / frames
            trial.calls_per_core_at_this_cost = 1e6 / (trial.cpu_us_per_frame * 50)
    lateness = bucket_quantiles(bucket_delta(first[0], last[0], LATENESS))
    halves = (bucket_quantiles(bucket_delta(first[0], mid[0], LATENESS)),
              bucket_quantiles(bucket_delta(mid[0], last[0], LATENESS)))
    trial.lateness = lateness.as_dict()
    trial.lateness_halves_p50 = (halves[0].p50, halves[1].p50)
    trial.loop_lag = bucket_quantiles(bucket_delta(first[0], last[0], LOOP_LAG)).as_dict()
    trial.bargeins = bucket_quantiles(bucket_delta(first[0], last[0], BARGEINS)).count
    trial.problems = problems(args, trial, lateness, halves)
    trial.generator_kept_up = tick.p99 <= GENERATOR_MAX_LATENESS_MS
    trial.kept_up = not trial.problems and trial.generator_kept_up
    if not trial.generator_kept_up:
        trial.problems.append(f"generator tick lateness p99 {tick.p99:.1f} ms > {GENERATOR_MAX_LATENESS_MS:g} ms")
    return trial


def problems(args: argparse.Namespace, trial: Trial, lateness: Quantiles, halves: tuple[Quantiles, Quantiles]) -> list[str]:
    found = []
    if trial.connected < trial.calls:
        found.append(f"only {trial.connected} of {trial.calls} calls connected")
    if trial.closed_by_server:
        found.append(f"{trial.closed_by_server} calls closed by the server")
    if not lateness.count:
        found.append("no frame lateness samples from the server (no frames handled?)")
    elif lateness.p99 > args.max_lateness_ms:
        found.append(f"frame lateness p99 {lateness.p99:.1f} ms > {args.max_lateness_ms:g} ms")
    if halves[1].p50 > halves[0].p50 + BACKLOG_GROWTH_MS:
        found.append(f"growing backlog: lateness p50 {halves[0].p50:.1f} → {halves[1].p50:.1f} ms")
    return found


# --- the command ----------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "loadavg": os.getloadavg()}


def check_server(base_url: str, pid: int | None) -> None:
    """A server named by --url/--pid must be there before any call starts."""
    if not base_url.startswith(("http://", "https://")):
        raise SystemExit(f"bench calls: --url {base_url!r}: give the server's base URL, http://host:port")
    try:
        scrape(base_url)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"bench calls: no callstream metrics at {base_url}/metrics ({exc})") from None
    if pid is not None:
        try:
            cpu_seconds(pid)
        except (OSError, ValueError) as exc:
            raise SystemExit(f"bench calls: --pid {pid}: cannot read its CPU time ({exc})") from None


def run(args: argparse.Namespace) -> int:
    if args.calls < 1 or args.seconds <= 0:
        raise SystemExit("bench calls: --calls must be at least 1 and --seconds above 0")
    if args.floor and args.url:
        raise SystemExit("bench calls: --floor starts its own server: not with --url")
    server: ServerProcess | None = None
    if args.url:
        base_url, pid = args.url.rstrip("/"), args.pid
        check_server(base_url, pid)
    else:
        server = start_server(args.server_core, floor=args.floor)
        base_url, pid = server.base_url, server.pid
    trials: list[Trial] = []
    try:
        try:
            _run_trials(args, base_url, pid, trials)
        except SystemExit:
            if server is not None and server.process.poll() is not None:
                print(f"the server exited ({server.process.returncode}); its log ends:\n{server.log_tail()}",
                      file=sys.stderr)
            raise
    finally:
        if server is not None:
            server.stop()
    return _report(args, server, trials)


def _run_trials(args: argparse.Namespace, base_url: str, pid: int | None, trials: list[Trial]) -> None:
    if not args.search:
        trials.append(run_trial(args, base_url, pid, args.calls))
        _show(args, trials[-1])
        return
    history: list[tuple[int, bool]] = []
    while (n := next_calls(history, args.calls, args.max_calls)) is not None:
        trial = run_trial(args, base_url, pid, n)
        trials.append(trial)
        _show(args, trial)
        history.append((n, trial.kept_up))  # a late generator is a failure too (flagged in the report)


def _report(args: argparse.Namespace, server: ServerProcess | None, trials: list[Trial]) -> int:
    largest = max((t.calls for t in trials if t.kept_up), default=0)
    what = "the floor socket (calls_floor.py)" if args.floor else "callstream serve"
    result: dict[str, Any] = {
        "machine": machine(),
        "server": f"{what}, started, pinned to core {args.server_core}" if server is not None else args.url,
        "max_lateness_ms": args.max_lateness_ms,
        "trials": [asdict(t) for t in trials],
    }
    if args.search:
        result["largest_kept_up"] = largest
        # the smallest failure decides the bound: was it the generator's?
        failed = [t for t in trials if not t.kept_up]
        bound = min(failed, key=lambda t: t.calls) if failed else None
        result["bound_by_generator"] = bound is not None and not bound.generator_kept_up
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        m = result["machine"]
        print(f"server: {result['server']}")
        print(f"machine: {m['nproc']} cores, {m['cpu']}, Python {m['python']}, "
              f"load average {m['loadavg'][0]:.2f} at the end")
        if args.search:
            note = (f" (the generator fell behind at {bound.calls}: the server may do more)"
                    if bound is not None and result["bound_by_generator"] else "")
            print(f"largest N that kept up on one core: {largest}{note} (target: ≥ 300)")
    return 0 if (trials and trials[-1].kept_up) or (args.search and largest) else 1


def _show(args: argparse.Namespace, trial: Trial) -> None:
    if not args.json:
        print("\n".join(trial.lines()), flush=True)
