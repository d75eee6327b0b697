"""`callstream bench calls`: end to end at tiny scale (shape, not speed), and its pure pieces."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.bench.calls import next_calls
from agent.bench.calls_frame_cost import measure
from agent.bench.calls_load import base64_bytes, caller_tape, media_message
from agent.bench.calls_server import (
    bucket_delta,
    bucket_quantiles,
    parse_metrics,
    parse_schedstat,
    run_queue_wait_seconds,
)
from agent.bench.process import parse_proc_stat
from agent.metrics import CALLS_ACTIVE
from twiml.messages import Media, encode_inbound, parse_message

REPO = Path(__file__).resolve().parents[1]
INF = float("inf")


def bench(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", "import sys; from agent.cli import main; sys.exit(main())", "bench", "calls", *args],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO,
    )


def test_three_calls_end_to_end_report_their_shape() -> None:
    done = bench("--calls", "3", "--seconds", "2", "--warmup", "1", "--json")
    assert done.returncode in (0, 1), done.stderr  # 1 = did not keep up: not asserted (a loaded machine)
    result = json.loads(done.stdout)
    assert set(result["machine"]) == {"nproc", "cpu", "python", "loadavg"}
    [trial] = result["trials"]
    assert trial["calls"] == 3 and trial["connected"] == 3
    assert trial["failed"] == 0 and trial["closed_by_server"] == 0
    assert trial["frames_sent"] > 0 and trial["frames_handled"] > 0
    assert trial["lateness"]["count"] > 0  # the server sampled its frame lateness
    assert trial["loop_lag"]["count"] > 0
    assert trial["server_cpu_pct"] is not None and trial["server_cpu_pct"] > 0
    assert trial["cpu_us_per_frame"] > 0 and trial["core_wait_pct"] is not None
    assert trial["generator"]["workers"] >= 1
    assert isinstance(trial["kept_up"], bool)
    assert trial["marks_echoed"] > 0  # the greeting played and its marks came back


def test_a_missing_server_is_named_before_any_call() -> None:
    done = bench("--url", "http://127.0.0.1:9", "--calls", "1", "--seconds", "1", timeout=60)
    assert done.returncode != 0
    assert "no callstream metrics at http://127.0.0.1:9/metrics" in done.stderr


def test_bad_counts_are_refused() -> None:
    done = bench("--calls", "0", timeout=60)
    assert done.returncode != 0 and "--calls must be at least 1" in done.stderr


def test_search_doubles_then_bisects_to_five_percent() -> None:
    history: list[tuple[int, bool]] = []
    capacity = 345
    tried = []
    while (n := next_calls(history, 50, 2000)) is not None:
        tried.append(n)
        history.append((n, n <= capacity))
    assert tried[:4] == [50, 100, 200, 400]
    best = max(n for n, ok in history if ok)
    assert capacity * 0.95 <= best <= capacity


def test_search_stops_at_max_calls_and_below_a_failing_start() -> None:
    assert next_calls([(100, True)], 100, 150) == 150
    assert next_calls([(100, True), (150, True)], 100, 150) is None
    history: list[tuple[int, bool]] = []
    while (n := next_calls(history, 8, 100)) is not None:
        history.append((n, n <= 2))
    assert max(n for n, ok in history if ok) == 2


def test_proc_stat_fields_count_after_the_command() -> None:
    # a command with spaces and parentheses; utime=1234 stime=56
    stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1234 56 0 0 20 0 3 0 99 0 0"
    assert parse_proc_stat(stat) == 1290.0


def test_schedstat_gives_the_run_queue_wait() -> None:
    assert parse_schedstat("233205221 33467825 411\n") == pytest.approx(0.033467825)
    assert run_queue_wait_seconds(os.getpid()) is not None
    assert run_queue_wait_seconds(2**22 + 12345) is None  # no such process: unknown, not an error


def test_quantiles_from_cumulative_buckets() -> None:
    text = (
        "# TYPE x_ms histogram\n"
        'x_ms_bucket{le="1.0"} 50.0\nx_ms_bucket{le="2.0"} 90.0\nx_ms_bucket{le="10.0"} 100.0\n'
        'x_ms_bucket{le="+Inf"} 100.0\nx_ms_count 100.0\nx_ms_sum 120.0\n'
    )
    histograms, _ = parse_metrics(text)
    q = bucket_quantiles(bucket_delta({}, histograms, "x_ms"))
    assert q.count == 100 and q.p50 == pytest.approx(1.0) and q.max == 10.0 and not q.over
    assert q.p99 == pytest.approx(2 + 8 * 0.9)
    over = bucket_quantiles(((1.0, 0.0), (5.0, 1.0), (INF, 3.0)))
    assert over.over and over.max == 5.0 and over.p99 == 5.0
    assert bucket_quantiles(((1.0, 0.0), (INF, 0.0))).count == 0


def test_prebuilt_media_messages_are_twilios() -> None:
    tape, cycles = caller_tape()
    assert cycles > 0 and len(tape) == cycles * 200
    built = media_message(7, 3, 40, tape[0], "MZ" + "a" * 32)
    parsed = parse_message(built)
    assert isinstance(parsed, Media)
    assert built == encode_inbound(parsed)
    assert base64_bytes(tape[0]) == 160 == len(parsed.payload)
    assert base64_bytes("YQ==") == 1 and base64_bytes("YWI=") == 2 and base64_bytes("") == 0


async def test_the_in_process_frame_cost_runs_a_real_session() -> None:
    active = CALLS_ACTIVE._value.get()
    parse_us, media_us = await measure(100)
    assert parse_us > 0 and media_us > 0
    assert CALLS_ACTIVE._value.get() == active  # the call ended: no session left counted as active
