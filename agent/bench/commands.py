"""Registers `callstream bench calls|bargein|turn|webhook` (one module each)."""

from __future__ import annotations

import importlib
from typing import Any

BENCHMARKS = {
    "calls": "concurrent real-time calls against a server process: CPU per call, frame lateness, capacity",
    "bargein": "caller speech onset while the agent talks -> clear sent: p50/p95/max, false barge-ins on noise",
    "turn": "agent overhead per turn: STT final in -> first TTS frame out (TTS cached)",
    "webhook": "POST /twilio/voice latency p50/p99 at a fixed request rate",
}


def add_bench_commands(sub: Any) -> None:
    bench = sub.add_parser("bench", help="load and latency benchmarks (results for BENCHMARKS.md)")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    for name, help_text in BENCHMARKS.items():
        module = importlib.import_module(f"agent.bench.{name}")
        parser = bench_sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(parser)
        parser.add_argument("--json", action="store_true", help="machine-readable result")
        parser.set_defaults(func=module.run)
