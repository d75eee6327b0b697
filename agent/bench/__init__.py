"""`callstream bench`: load and latency benchmarks (DESIGN.md "Performance").

Benchmarks, not timed tests: each prints its figures (and `--json`) for
BENCHMARKS.md. One module per benchmark, each with `add_arguments(parser)`
and `run(args) -> int`; `agent/bench/commands.py` registers them.
"""
