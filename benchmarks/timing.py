"""Timing helper shared by the benchmark scripts (imported as a sibling module)."""

from __future__ import annotations

import statistics
import time


def interleaved_medians(fns, repeats: int) -> list[float]:
    """Median seconds of each function, runs interleaved (a, b, a, b, ...) after one warm-up
    each, so a change in machine speed during the measurement hits every side alike."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, bucket in zip(fns, times, strict=True):
            t0 = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - t0)
    return [statistics.median(bucket) for bucket in times]
