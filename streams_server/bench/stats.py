"""Summaries of samples: percentiles the way every figure in the table is computed."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Summary:
    """Order statistics of a sample of values (usually milliseconds)."""

    n: int
    mean: float
    p50: float
    p90: float
    p99: float
    max: float
    min: float

    def to_json(self) -> dict[str, Any]:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}


EMPTY = Summary(0, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` quantile (0..1) of an already sorted sample; NaN if empty."""
    if not sorted_values:
        return math.nan
    index = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[index]


def summarize(values: Sequence[float]) -> Summary:
    """Mean, p50/p90/p99 (nearest rank), min and max of ``values``."""
    if not values:
        return EMPTY
    ordered = sorted(values)
    return Summary(
        n=len(ordered),
        mean=sum(ordered) / len(ordered),
        p50=percentile(ordered, 0.50),
        p90=percentile(ordered, 0.90),
        p99=percentile(ordered, 0.99),
        max=ordered[-1],
        min=ordered[0],
    )


def ms(seconds: float) -> float:
    """Seconds to milliseconds."""
    return seconds * 1000.0


MIB = 1024 * 1024
