"""Small statistics for noisy measurements: medians, spreads and percentiles."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by linear interpolation."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median and the spread (min, max) of several runs."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "runs": float(len(values))}  # fmt: skip


def in_order_fraction(starts_by_seq: Sequence[float]) -> float:
    """Of all pairs published in order (i < j), the fraction that also started in order."""
    n = len(starts_by_seq)
    pairs = n * (n - 1) // 2
    ordered = sum(
        1 for i in range(n) for j in range(i + 1, n) if starts_by_seq[i] <= starts_by_seq[j]
    )
    return ordered / pairs if pairs else 1.0
