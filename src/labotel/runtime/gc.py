"""Garbage collection: counts from ``gc.get_stats()`` and pause durations per generation.

The ``gc.callbacks`` hook only stores ``perf_counter()`` readings into preallocated
``array('d')`` slots: no lists, dicts or instrument calls while the collector runs.
Pauses are moved into the ``labotel.gc.pause.duration`` histogram at collection time
(before the SDK reads the histogram). At most ``RING`` pauses wait between two collections:
past that they are counted as dropped, and only ``labotel.gc.pause.time`` (a running total
kept by the callback itself) still has them.

The buckets follow a 1-3-10 ladder from 1 ms to 3 s, where pauses start to matter to
request latency. Sub-millisecond pauses (most of generations 0 and 1) share the first
bucket; their exact mean is ``_sum / _count``. Each bound is one series per generation.
"""

from __future__ import annotations

import gc
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry.metrics import CallbackOptions, Observation

from labotel import fork_safe
from labotel.component import Component
from labotel.context import Context

RING = 4096
PAUSE_BUCKETS = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0]
GENERATIONS = 3


class PauseRecorder:
    """Collects GC pauses lock-free from the gc callback; drained by one reader at a time."""

    def __init__(self) -> None:
        self.durations = array("d", bytes(8 * RING))
        self.generations = array("b", bytes(RING))
        self.started = array("d", bytes(8))
        self.written = 0  # total pauses written (monotonic)
        self.read = 0  # total pauses drained
        self.dropped = 0
        self.totals = array("d", bytes(8 * GENERATIONS))  # seconds per generation, lifetime
        self.max_pause = array("d", bytes(8 * GENERATIONS))
        self._drain_lock = fork_safe.lock()
        self._clock = time.perf_counter

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self.started[0] = self._clock()
            return
        duration = self._clock() - self.started[0]
        generation = info["generation"]
        self.totals[generation] += duration
        if duration > self.max_pause[generation]:
            self.max_pause[generation] = duration
        if self.written - self.read >= RING:
            self.dropped += 1
            return
        slot = self.written % RING
        self.durations[slot] = duration
        self.generations[slot] = generation
        self.written += 1

    def drain(self) -> list[tuple[int, float]]:
        """(generation, seconds) for every pause since the previous drain."""
        with self._drain_lock:
            end = self.written
            pauses = [(self.generations[i % RING], self.durations[i % RING])
                      for i in range(self.read, end)]
            self.read = end
        return pauses


class GCCollector(Component):
    name = "runtime.gc"

    def start(self, context: Context) -> None:
        self.recorder = PauseRecorder()
        # for /admin/monitoring/gc percentiles; a deque, so keeping them costs O(new pauses)
        self.recent: deque[tuple[int, float]] = deque(maxlen=RING)
        self._stats = gc.get_stats()
        meter = context.meter
        self.histogram = meter.create_histogram(
            "labotel.gc.pause.duration", unit="s",
            description="Time the garbage collector stopped the interpreter, per generation",
            explicit_bucket_boundaries_advisory=PAUSE_BUCKETS)

        def guard(callback: Callable[[CallbackOptions], Iterable[Observation]]) -> list:
            return [context.guarded(self.name, callback)]

        meter.create_observable_counter(
            "cpython.gc.collections", guard(self._collections), unit="{collection}",
            description="Collections run per generation")
        meter.create_observable_counter(
            "cpython.gc.collected_objects", guard(self._collected), unit="{object}",
            description="Objects freed by the collector per generation")
        meter.create_observable_counter(
            "cpython.gc.uncollectable_objects", guard(self._uncollectable), unit="{object}",
            description="Objects found uncollectable per generation")
        meter.create_observable_counter(
            "labotel.gc.pause.time", guard(self._pause_total), unit="s",
            description="Total seconds spent in GC pauses per generation")
        gc.callbacks.append(self.recorder)

    def stop(self) -> None:
        if self.recorder in gc.callbacks:
            gc.callbacks.remove(self.recorder)
        self.flush()

    def flush(self) -> list[tuple[int, float]]:
        """Move pauses from the ring into the histogram; keep the recent ones for views."""
        pauses = self.recorder.drain()
        for generation, seconds in pauses:
            self.histogram.record(seconds, {"cpython.gc.generation": generation})
        self.recent.extend(pauses)
        return pauses

    def _collections(self, _: CallbackOptions):
        self.flush()  # runs before the SDK reads the histogram in the same collection
        # the cycle's first GC instrument: the other two reuse this reading
        self._stats = gc.get_stats()
        for generation, stats in enumerate(self._stats):
            yield Observation(stats["collections"], {"cpython.gc.generation": generation})

    def _collected(self, _: CallbackOptions):
        for generation, stats in enumerate(self._stats):
            yield Observation(stats["collected"], {"cpython.gc.generation": generation})

    def _uncollectable(self, _: CallbackOptions):
        for generation, stats in enumerate(self._stats):
            yield Observation(stats["uncollectable"], {"cpython.gc.generation": generation})

    def _pause_total(self, _: CallbackOptions):
        for generation in range(GENERATIONS):
            yield Observation(self.recorder.totals[generation],
                              {"cpython.gc.generation": generation})

    def view(self) -> dict[str, Any]:
        """GC counts, thresholds and pause percentiles for /admin/monitoring/gc."""
        self.flush()
        per_generation = []
        for generation, stats in enumerate(gc.get_stats()):
            pauses = sorted(s for g, s in self.recent if g == generation)
            per_generation.append({
                "generation": generation,
                **stats,
                "pause_seconds_total": self.recorder.totals[generation],
                "pause_seconds_max": self.recorder.max_pause[generation],
                "recent_pauses": len(pauses),
                "pause_p50": _percentile(pauses, 0.5),
                "pause_p90": _percentile(pauses, 0.9),
                "pause_p99": _percentile(pauses, 0.99),
            })
        return {"enabled": gc.isenabled(), "threshold": gc.get_threshold(),
                "count": gc.get_count(), "generations": per_generation,
                "pauses_dropped": self.recorder.dropped}


def _percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, int(q * len(sorted_values)))
    return sorted_values[index]
