"""Percentile summaries for benchmark samples."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Summary:
    count: int
    p50: float
    p95: float
    p99: float
    max: float

    def as_dict(self) -> dict[str, float]:
        return {"count": self.count, "p50": self.p50, "p95": self.p95, "p99": self.p99, "max": self.max}

    def line(self, unit: str = "ms") -> str:
        return (f"n={self.count} p50={self.p50:.2f}{unit} p95={self.p95:.2f}{unit} "
                f"p99={self.p99:.2f}{unit} max={self.max:.2f}{unit}")


def summarize(samples: list[float]) -> Summary:
    """p50/p95/p99/max of the samples (linear interpolation); all zero when there are none."""
    if not samples:
        return Summary(0, 0.0, 0.0, 0.0, 0.0)
    values = np.asarray(samples, dtype=float)
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return Summary(len(samples), float(p50), float(p95), float(p99), float(values.max()))
