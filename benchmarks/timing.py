"""Timing helpers shared by the benchmarks: samples of a call, and their median and p95."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def timings(fn: Callable[[], object], repeat: int) -> list[float]:
    """``repeat`` timed calls of ``fn`` in milliseconds, after one untimed call (caches and plans warm)."""
    fn()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def summary(name: str, samples: list[float], width: int = 28) -> tuple[float, float]:
    """Print and return the median and p95 of ``samples`` (the slowest when fewer than 20)."""
    median = statistics.median(samples)
    p95 = statistics.quantiles(samples, n=20)[-1] if len(samples) >= 20 else max(samples)
    print(f"{name:<{width}} median {median:8.2f} ms   p95 {p95:8.2f} ms   ({len(samples)} runs)")
    return median, p95
