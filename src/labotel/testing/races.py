"""Which races labotel reported since the last look: how ``pytest --race`` tells the
races of one test (or of the time between tests) from the others.

It reads ``labotel.detections("race_condition")``: a new report appears there, and a race
seen again at the same two locations raises the ``count`` of the first report instead.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class SeenRace:
    report: Any  # the Detection
    times: int  # how often it happened since the last look
    repeat: bool  # first reported before the last look

    def describe(self) -> str:
        text = self.report.message or self.report.summary
        if self.repeat:
            return (f"(this race was first reported earlier in the run; it happened "
                    f"{self.times} more time{'s' if self.times != 1 else ''} here)\n{text}")
        if self.times > 1:
            return f"(it happened {self.times} times)\n{text}"
        return text


class RaceLedger:
    def __init__(self) -> None:
        self._counts: dict[int, tuple[Any, int]] = {}  # id(report) -> (report, count)

    def take(self) -> list[SeenRace]:
        """Races reported, or reported again, since the previous call (oldest first)."""
        import labotel

        seen: list[SeenRace] = []
        counts: dict[int, tuple[Any, int]] = {}
        for report in reversed(labotel.detections("race_condition")):
            count = report.count
            counts[id(report)] = (report, count)
            before = self._counts.get(id(report))
            if before is None or before[0] is not report:
                seen.append(SeenRace(report, count, repeat=False))
            elif count > before[1]:
                seen.append(SeenRace(report, count - before[1], repeat=True))
        self._counts = counts
        return seen


def describe(races: list[SeenRace]) -> str:
    return "\n\n".join(race.describe() for race in races)
