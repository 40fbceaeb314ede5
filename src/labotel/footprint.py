"""labotel's own memory, part by part, in bytes.

Every part of labotel that keeps data in proportion to what the application does (race
shadow state, the detections kept for the views, spans queued for a collector) is bounded
in bytes and says here how much it holds now (an estimate from the sizes of its records).
The total is exported as ``labotel.internal.memory`` and taken off the memory-leak
detector's samples, so labotel's own growth is never reported as the application's leak.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from labotel import fork_safe

log = logging.getLogger(__name__)


class Footprint:
    def __init__(self) -> None:
        self._parts: dict[str, Callable[[], int]] = {}
        self._lock = fork_safe.lock()  # a forked child's components take it at stop

    def add(self, part: str, measure: Callable[[], int]) -> None:
        with self._lock:
            self._parts[part] = measure

    def remove(self, part: str) -> None:
        with self._lock:
            self._parts.pop(part, None)

    def breakdown(self) -> dict[str, int]:
        with self._lock:
            parts = list(self._parts.items())
        sizes = {}
        for part, measure in parts:
            try:
                sizes[part] = max(0, int(measure()))
            except Exception:  # a measure must never break a sample or a view
                log.debug("labotel: measuring %s failed", part, exc_info=True)
        return sizes

    def total(self) -> int:
        return sum(self.breakdown().values())
