"""Summaries of a distribution of counts (token lengths, turns) as the data report gives them; its own module so
that every measuring module (`tunelab.data.lengths`, `tunelab.data.preferences`) can use them without importing
another."""

from __future__ import annotations

import math
from statistics import median_low


def length_summary(lengths: list[int], limit: int) -> dict:
    """min / median / 95th percentile (nearest rank) / max, the limit, and how many exceed it."""
    ordered = sorted(lengths)
    return {
        "min": ordered[0],
        "median": ordered[(len(ordered) - 1) // 2],
        "p95": ordered[math.ceil(0.95 * len(ordered)) - 1],
        "max": ordered[-1],
        "limit": limit,
        "over": sum(length > limit for length in ordered),
    }


def spread(counts: list[int]) -> dict:
    """min / median (the lower one of an even count, so it is a count that occurs) / max."""
    return {"min": min(counts), "median": median_low(counts), "max": max(counts)}
