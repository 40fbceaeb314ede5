"""Robust growth tests over a short series of (time, value) samples.

The leak detectors ask one question: "has this kept growing over the whole span?" Three
checks answer it together, each guarding against a different healthy pattern:

- the Theil–Sen slope (median of all pairwise slopes) ignores outliers such as a GC
  sawtooth or a spike, and most pairs of points must rise, not just the median one
  (the Mann–Kendall idea): noise rises and falls about equally;
- the medians of the first, middle and last thirds must rise in turn: a cache that fills
  and then plateaus rises only in the early thirds;
- no single step may carry most of the rise: one big allocation is a step, a leak is a
  ramp.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence

MAX_POINTS = 120  # Theil–Sen is O(n^2): longer series are thinned evenly first
MAX_STEP_SHARE = 0.5  # largest single rise allowed, as a share of all rises
MIN_CONCORDANCE = 0.7  # share of (later, earlier) pairs that rose, among pairs that moved


@dataclasses.dataclass(frozen=True)
class Trend:
    slope: float  # units per second (Theil–Sen)
    rise: float  # median of the last third minus median of the first third
    span: float  # seconds covered
    points: int
    sustained: bool  # every third higher than the one before
    largest_step_share: float  # largest single rise / sum of rises (1.0 = one step)
    concordance: float  # share of point pairs that rose, among pairs that changed

    def growing(self, min_rate: float, min_rise: float = 0.0) -> bool:
        """True when the series grew steadily at ``min_rate`` per second or faster."""
        return (self.sustained and self.slope >= min_rate and self.rise > 0
                and self.rise >= min_rise
                and self.rise >= min_rate * self.span * 0.5
                and self.largest_step_share <= MAX_STEP_SHARE
                and self.concordance >= MIN_CONCORDANCE)

    def as_dict(self) -> dict[str, float | int | bool]:
        return dataclasses.asdict(self)


def theil_sen_slope(times: Sequence[float], values: Sequence[float]) -> float:
    """Median of the slopes between every pair of points (0.0 for fewer than two)."""
    slopes = [(values[j] - values[i]) / (times[j] - times[i])
              for i in range(len(times)) for j in range(i + 1, len(times))
              if times[j] > times[i]]
    return statistics.median(slopes) if slopes else 0.0


def thin(times: Sequence[float], values: Sequence[float],
         limit: int = MAX_POINTS) -> tuple[list[float], list[float]]:
    """At most ``limit`` points, evenly spread, always keeping the first and last."""
    n = len(times)
    if n <= limit:
        return list(times), list(values)
    picks = sorted({round(i * (n - 1) / (limit - 1)) for i in range(limit)})
    return [times[i] for i in picks], [values[i] for i in picks]


def trend(times: Sequence[float], values: Sequence[float]) -> Trend:
    """Judge a series; needs at least three points to say anything is sustained."""
    times, values = thin(times, values)
    n = len(values)
    if n < 3:
        return Trend(0.0, 0.0, (times[-1] - times[0]) if n else 0.0, n, False, 1.0, 0.0)
    third = n // 3
    first = values[:third]
    middle = values[third:n - third]
    last = values[n - third:]
    m1, m2, m3 = statistics.median(first), statistics.median(middle), statistics.median(last)
    rises = [b - a for a, b in zip(values, values[1:], strict=False) if b > a]
    share = max(rises) / sum(rises) if rises else 1.0
    return Trend(slope=theil_sen_slope(times, values), rise=m3 - m1,
                 span=times[-1] - times[0], points=n, sustained=m1 < m2 < m3,
                 largest_step_share=share, concordance=concordance(values))


def concordance(values: Sequence[float]) -> float:
    """Share of pairs (earlier, later) where the later value is higher, ties left out."""
    up = down = 0
    for i, earlier in enumerate(values):
        for later in values[i + 1:]:
            if later > earlier:
                up += 1
            elif later < earlier:
                down += 1
    return up / (up + down) if up + down else 0.0
