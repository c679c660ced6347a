"""Percentiles, ratios and units: the bench's arithmetic, pure and tested on its own."""

from __future__ import annotations

import math
from collections.abc import Sequence

MB = 1e6
"""The report's megabyte (MB, MB/s): 10**6 bytes."""


def ms(seconds: float) -> float:
    return seconds * 1000


def percentile(samples: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0..100), interpolating linearly between ranks.

    The same definition as NumPy's default, so figures can be checked there.
    """
    if not samples:
        raise ValueError("percentile of no samples")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p} outside 0..100")
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * p / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(samples: Sequence[float]) -> float:
    return percentile(samples, 50)


def ratio(gateway: float | None, direct: float | None) -> float | None:
    """gateway / direct, or None when either is missing or direct is zero."""
    if gateway is None or direct is None or direct == 0:
        return None
    return gateway / direct
