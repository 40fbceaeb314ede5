"""Memory-leak detector: a cheap trend watch that turns on attribution only when needed.

Always on: every ``leak_sample_interval`` seconds a background thread reads resident
memory (RSS) and the C-allocator heap (``runtime.heap``). A leak is *suspected* when either
series has grown steadily (``detect.trend``) at ``memory_leak_min_rate`` bytes/s or faster
over at least half of ``leak_window``. Before attribution begins, one full garbage
collection (within a CPU and stall budget) checks that the growth is not garbage cycles
waiting for the application's own collection: if the collection gives back half the rise
or more, the suspicion is cleared. While attribution runs, samples follow a collection
as the same budget allows. No collection is forced while memory is flat: a full
collection stops every application thread for its whole length.

While suspected: for ``leak_attribution_seconds`` the containers that keep growing are
watched and their new items traced back to the lines that allocate them, in short bursts
of tracemalloc (``detect.attribution``, within a budget). The leak is
*reported* only if memory kept growing all through the attribution too (each third of its
samples above the one before); otherwise the suspicion is cleared (a cache that finished
filling, one big allocation) and judged afresh.

Growth that no Python allocation site explains (native memory) is reported only after a
second attribution in a row finds the same.

Second trigger: resident memory above ``memory_limit_bytes`` is reported at once.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import time
import tracemalloc
from collections import deque
from typing import Any

import psutil

from labotel.budget import STALL_BUDGET, Pacer, Stopped
from labotel.config import Settings
from labotel.context import Context
from labotel.detect import census as census_module
from labotel.detect.attribution import Attribution, AttributionResult, format_bytes
from labotel.detect.detection import Detection
from labotel.detect.periodic import SamplingDetector
from labotel.detect.trend import Trend, trend
from labotel.runtime.heap import malloc_in_use, small_object_blocks

GC_BUDGET = 0.005  # share of wall time the sampler may spend in gc.collect()
GARBAGE_SHARE = 0.5  # a collection giving back this share of the rise clears a suspicion
GC_SECONDS_PER_BLOCK = 20e-9  # a full collection's cost per pymalloc block, until measured
BURST_WAIT = 0.5  # seconds a sample waits for an attribution burst to end
MIN_POINTS = 5  # samples needed before any verdict
CONFIRM_POINTS = 3  # samples during attribution needed to confirm
EXPLAINED_SHARE = 0.1  # traced growth / memory growth below which the leak is native
COOLDOWN_WINDOWS = 5  # after a report, windows to wait before attributing again
LIMIT_REARM = 0.9  # the limit is reported again after memory fell below 90% of it
SERIES = ("rss", "heap")
SERIES_LABEL = {"rss": "resident memory (RSS)", "heap": "C-allocator heap (malloc in use)"}


@dataclasses.dataclass(frozen=True)
class MemorySample:
    time: float  # time.monotonic()
    rss: int
    heap: int | None  # malloc in use; None without glibc
    small_blocks: int  # pymalloc blocks (objects <= 512 B)
    after_gc: bool
    own: int = 0  # labotel's own memory, already taken off rss and heap

    def value(self, series: str) -> int | None:
        return self.rss if series == "rss" else self.heap


@dataclasses.dataclass
class Suspicion:
    since: float
    series: str
    trend: Trend


def kept_growing(during: Trend | None, overall: Trend | None, min_rate: float) -> bool:
    """Did memory keep growing while attribution watched (``during``), and over the
    window as a whole (``overall``)?

    Growth must go on all through the tracing (each third of its samples higher than the
    one before), not just start it: a cache still filling when the suspicion was raised
    rises early in the attribution and then stops.
    """
    return (during is not None and during.points >= CONFIRM_POINTS and during.sustained
            and during.slope >= min_rate / 2 and during.rise > 0
            and overall is not None and overall.growing(min_rate))


class MemoryLeakDetector(SamplingDetector):
    name = "detect.memory"
    thread_name = "labotel-memory-leak"
    view_name = "heap"

    def configure(self, settings: Settings) -> None:
        self.min_rate = settings.memory_leak_min_rate
        self.limit = settings.memory_limit_bytes
        self.attribution_seconds = settings.leak_attribution_seconds

    def _reset(self) -> None:
        self._process = psutil.Process(os.getpid())
        self.samples: deque[MemorySample] = deque()
        self.state = "watching"  # watching | attributing | cooldown
        self.suspicion: Suspicion | None = None
        self._attribution: Attribution | None = None
        self.last_attribution: dict[str, Any] | None = None
        self._last_attribution_at = 0.0
        self._evidence_since = time.monotonic()
        self._cooldown_until = 0.0
        self._limit_armed = True
        self._unexplained = False
        self._gc_cost = 0.0
        self._gc_per_block = GC_SECONDS_PER_BLOCK
        self.gc_skipped: str | None = None
        self._last_collect = float("-inf")
        self.collections = 0
        self.last_collection_check: dict[str, Any] | None = None
        self.reports = 0
        self.attributions = 0

    def start(self, context: Context) -> None:
        super().start(context)
        context.footprint.add("leak_attribution", self._attribution_bytes)

    def _attribution_bytes(self) -> int:
        attribution = self._attribution
        return attribution.bytes() if attribution is not None else 0

    def stop(self) -> None:
        self.context.footprint.remove("leak_attribution")
        super().stop()
        with self._lock:
            if self._attribution is not None:
                self._attribution.abandon()
                self._attribution = None

    def after_fork_in_child(self) -> None:
        # The child's memory is its own story: start judging afresh. The heap profiler
        # (started before us) has already dropped tracemalloc leases held at fork time.
        if self._attribution is not None:
            self._attribution.forget()
        super().after_fork_in_child()

    # -- sampling ----------------------------------------------------------------------
    def take_sample(self, collect: bool = False) -> MemorySample:
        """RSS and C heap less what is not the application's: tracemalloc's own tables and
        labotel's own memory (``context.footprint``: shadow state, detections, queued
        spans), so neither can be reported as the application's leak. With ``collect``,
        after a full collection if the budgets allow one now."""
        attribution = self._attribution
        if attribution is not None:
            attribution.wait_idle(BURST_WAIT)
        now = time.monotonic()
        after_gc = collect and self._collect(now) == "collected"
        overhead = tracemalloc.get_tracemalloc_memory() if tracemalloc.is_tracing() else 0
        own = self.context.footprint.total()
        heap = malloc_in_use()
        return MemorySample(
            time=now, rss=self._process.memory_info().rss - overhead - own,
            heap=None if heap is None else heap - overhead - own,
            small_blocks=small_object_blocks(), after_gc=after_gc, own=own)

    def _collect(self, now: float) -> str:
        """A full collection, if the budgets allow one now: ``"collected"``; ``"wait"``
        when ``GC_BUDGET`` (for what the last one cost) allows none yet; ``"without"`` when
        the application turned GC off, or when the collection would stop every thread for
        longer than ``STALL_BUDGET`` (predicted from the heap's size and the last
        collection's cost per block)."""
        if not gc.isenabled():  # the application turned GC off on purpose
            self.gc_skipped = ("the application turned garbage collection off: a suspected "
                               "leak is judged without a collection")
            return "without"
        # The stall first: waiting for the CPU budget is pointless when the collection
        # it would allow is over the stall budget anyway.
        blocks = small_object_blocks()
        predicted = blocks * self._gc_per_block
        if predicted > STALL_BUDGET:
            self.gc_skipped = (f"a full collection would stop the application for about "
                               f"{predicted * 1000:.0f} ms (over {STALL_BUDGET * 1000:.0f} ms): "
                               "a suspected leak is judged without one")
            return "without"
        self.gc_skipped = None
        if now < self._next_collect_allowed():
            return "wait"
        began = time.perf_counter()
        gc.collect()
        self._gc_cost = time.perf_counter() - began
        self._gc_per_block = self._gc_cost / max(blocks, 1)
        self._last_collect = now
        self.collections += 1
        return "collected"

    def _next_collect_allowed(self) -> float:
        return self._last_collect + self._gc_cost / GC_BUDGET

    def _growth_survives_collection(self, suspicion: Suspicion, before: MemorySample) -> bool:
        """Is the suspected growth still there after a full collection? Garbage cycles
        that outlived the young generations wait for the application's own full
        collection, and pile up meanwhile as steadily as a leak does. False also while
        the collection budget makes the check wait (the next sample judges again)."""
        now = time.monotonic()
        outcome = self._collect(now)
        if outcome == "wait":
            wait = self._next_collect_allowed() - now
            self._record_check(suspicion, f"waiting {wait:.1f} s for the collection budget "
                                          f"({GC_BUDGET:.1%} of the time)")
            return False
        if outcome == "without":
            self._record_check(suspicion, f"attributing without a collection: {self.gc_skipped}")
            return True
        after = dataclasses.replace(self.take_sample(), after_gc=True)
        self._append(after)
        # Either series: freed memory stays in the process (RSS) unless the allocator
        # returns it, but malloc's in-use figure falls at once.
        freed = max((b - a for series in SERIES
                     if (b := before.value(series)) is not None
                     and (a := after.value(series)) is not None), default=0)
        garbage = freed >= GARBAGE_SHARE * suspicion.trend.rise
        self._record_check(suspicion,
                           "cleared: the growth was garbage" if garbage else "attributing",
                           freed_bytes=freed, gc_seconds=round(self._gc_cost, 6))
        if garbage:  # judge only what comes after the collection
            self._evidence_since = after.time
        else:
            # Attribution's growth is counted from the collected sample: the one before it
            # still held the garbage just freed, and as the first point of the trend it
            # would make real growth look as if it had stalled.
            suspicion.since = after.time
        return not garbage

    def _record_check(self, suspicion: Suspicion, outcome: str, **figures: Any) -> None:
        self.last_collection_check = {"series": suspicion.series,
                                      "rise_bytes": suspicion.trend.rise, **figures,
                                      "outcome": outcome}

    def _append(self, sample: MemorySample) -> None:
        with self._lock:
            self.samples.append(sample)
            while self.samples and self.samples[0].time < sample.time - self.window:
                self.samples.popleft()

    def tick(self) -> None:
        # While attribution checks a suspicion, samples follow a full collection when the
        # budget allows: garbage that piles up meanwhile (small objects: their memory
        # stays in the process after the check's collection) must not read as growth.
        sample = self.take_sample(collect=self.state == "attributing")
        self._append(sample)
        self._check_limit(sample)
        if self.state == "attributing":
            assert self.suspicion is not None and self._attribution is not None
            if self._attribution.done(sample.time):
                self._finish_attribution(sample.time)
            return
        if self.state == "cooldown":
            if sample.time < self._cooldown_until:
                return
            self.state = "watching"
        suspicion = self.judge(sample.time)
        if suspicion is not None and self._growth_survives_collection(suspicion, sample):
            self._begin_attribution(suspicion)

    # -- decisions ---------------------------------------------------------------------
    def trends(self, since: float) -> dict[str, Trend]:
        with self._lock:
            samples = [s for s in self.samples if s.time >= since]
        result = {}
        for series in SERIES:
            points = [(s.time, value) for s in samples
                      if (value := s.value(series)) is not None]
            if len(points) >= 2:
                result[series] = trend([t for t, _ in points], [float(v) for _, v in points])
        return result

    def judge(self, now: float) -> Suspicion | None:
        """The series growing fastest, if one has grown steadily for half a window."""
        since = max(self._evidence_since, now - self.window)
        growing = [
            (found.slope, series, found) for series, found in self.trends(since).items()
            # Half a window, less half an interval of slack for timer jitter.
            if found.points >= MIN_POINTS and found.span >= (self.window - self.interval) / 2
            and found.growing(self.min_rate)]
        if not growing:
            return None
        _, series, found = max(growing)
        return Suspicion(since=now, series=series, trend=found)

    def _begin_attribution(self, suspicion: Suspicion) -> None:
        attribution = Attribution(self.attribution_seconds)
        attribution.begin(suspicion.since)
        self.attributions += 1
        with self._lock:
            self._attribution, self.suspicion, self.state = attribution, suspicion, "attributing"

    def _finish_attribution(self, now: float) -> None:
        suspicion, attribution = self.suspicion, self._attribution
        assert suspicion is not None and attribution is not None
        try:
            result = attribution.finish()
        finally:
            with self._lock:
                self._attribution = None
        during = self.trends(suspicion.since).get(suspicion.series)
        overall = self.trends(max(self._evidence_since, now - self.window)).get(suspicion.series)
        grew = kept_growing(during, overall, self.min_rate)
        # Growth the steadily growing Python sites do not explain (a C extension, or
        # allocator high-water marks moving under churn) must be seen by two attributions
        # in a row.
        explained = during is not None and result.traced_growth >= (
            EXPLAINED_SHARE * during.slope * result.seconds)
        native_again = grew and not explained and self._unexplained
        confirmed = grew and (explained or native_again)
        self._unexplained = grew and not explained and not native_again
        if confirmed:
            outcome = "reported"
        elif self._unexplained:
            outcome = "unexplained: memory grew but no Python site did; attributing again"
        else:
            outcome = "cleared: growth did not continue"
        self.last_attribution = {"outcome": outcome, "series": suspicion.series,
                                 **result.as_dict()}
        self._last_attribution_at = now
        with self._lock:
            self.suspicion = None
            if confirmed:
                self.state, self._cooldown_until = "cooldown", now + COOLDOWN_WINDOWS * self.window
                self._evidence_since = now
            else:
                # Judge only fresh samples from here: the ramp that raised the suspicion
                # (a filling cache, one big allocation) has been looked at already. After
                # an unexplained one too: reusing that ramp would let allocator creep
                # under churn confirm a native "leak" on a healthy service.
                self.state, self._evidence_since = "watching", suspicion.since
        if confirmed:
            assert overall is not None
            self.reports += 1
            self.context.reporter.report(
                self._leak_detection(suspicion.series, overall, result, explained))

    def _check_limit(self, sample: MemorySample) -> None:
        if sample.rss < self.limit * LIMIT_REARM:
            self._limit_armed = True
        if sample.rss < self.limit or not self._limit_armed:
            return
        self._limit_armed = False
        self.reports += 1
        self.context.reporter.report(self._limit_detection(sample))

    # -- reports -----------------------------------------------------------------------
    def _leak_detection(self, series: str, found: Trend, result: AttributionResult,
                        explained: bool) -> Detection:
        last = self.samples[-1]
        top = result.sites[0] if result.sites and explained else None
        site = top.site if top else "unknown"
        rate = f"{format_bytes(found.slope)}/s"
        where = (f"biggest growing allocation site {top.describe()}" if top else
                 "no Python allocation site grew enough to explain it (native memory: a C "
                 "extension or library)")
        lines = [
            f"Memory leak in pid {os.getpid()}: {SERIES_LABEL[series]} grew steadily at "
            f"{rate} (Theil-Sen slope) over the last {found.span:.0f} s, and kept growing "
            f"while attribution watched it for {result.seconds:.0f} s.",
            f"Now: RSS {format_bytes(last.rss)}, C heap "
            f"{format_bytes(last.heap) if last.heap is not None else 'n/a'}, "
            f"{last.small_blocks} small objects; limit {format_bytes(self.limit)}.",
        ]
        if not top:
            lines.append(f"{where}.")
        if result.sites:
            lines.append(f"Allocation sites of the new items (+{format_bytes(result.traced_growth)}"
                         " in all, estimated from the items' sizes):")
            for number, growth in enumerate(result.sites, 1):
                lines.append(f"  {number}. {growth.describe()}")
                lines += [f"       {src}  ({f}:{ln})" for f, ln, src in growth.frames[:4]]
        if result.types:
            lines.append("Object types that grew: " + ", ".join(
                f"{name} +{n}" for name, n in result.types))
        if result.containers:
            lines.append("Containers that grew:")
            lines += [f"  {c.describe()}" for c in result.containers]
        attributes: dict[str, Any] = {
            "labotel.leak.trigger": "trend",
            "labotel.leak.site": site,
            "labotel.leak.series": series,
            "labotel.leak.growth_rate": found.slope,
            "labotel.leak.size": last.rss,
            "labotel.leak.heap_size": last.heap,
            "labotel.leak.window": found.span,
            "labotel.leak.traced_growth": result.traced_growth,
            "labotel.leak.sites": [g.describe() for g in result.sites],
            "labotel.leak.types": [f"{name} +{n}" for name, n in result.types],
            "labotel.leak.containers": [c.describe() for c in result.containers],
        }
        if top:
            attributes["code.filepath"], _, lineno = top.site.rpartition(":")
            attributes["code.lineno"] = int(lineno)
        return Detection(
            kind="memory_leak",
            summary=f"memory leak: {SERIES_LABEL[series]} growing {rate}; {where}",
            message="\n".join(lines), attributes=attributes,
            stacks=[g.stack() for g in result.sites], fingerprint=(site,))

    def _limit_detection(self, sample: MemorySample) -> Detection:
        try:  # paced: this runs on the sampler thread, in the application's process
            census = census_module.take_census(Pacer(0.1, stop=self._sampler.stopping), top=3)
        except Stopped:  # labotel is shutting down
            census = census_module.Census([], 0, False)
        largest = [f"{census_module.type_name(type(f.container))} with {f.sizes[0]} items, "
                   f"{f.held_by()}" for f in census.containers]
        counted: dict[str, int] = {}
        for found in census.containers:
            for name, n in census_module.item_types(found.container):
                counted[name] = counted.get(name, 0) + n
        types = sorted(counted.items(), key=lambda pair: pair[1], reverse=True)[:5]
        census.release()
        current = self.trends(sample.time - self.window).get("rss")
        rate = current.slope if current else 0.0
        summary = (f"memory limit: resident memory {format_bytes(sample.rss)} passed "
                   f"memory_limit_bytes={format_bytes(self.limit)}")
        message = (f"{summary} in pid {os.getpid()} (trend {format_bytes(rate)}/s over the "
                   f"last {current.span if current else 0:.0f} s). Item types in the largest "
                   "containers: "
                   + ", ".join(f"{name} {n}" for name, n in types)
                   + ". Largest containers: " + ", ".join(largest)
                   + ". A steady leak is named by line once its trend is confirmed; "
                   "/debug/pprof/heap?seconds=30 shows where memory is allocated now.")
        return Detection(
            kind="memory_leak", summary=summary, message=message,
            attributes={"labotel.leak.trigger": "limit", "labotel.leak.site": "unknown",
                        "labotel.leak.size": sample.rss, "labotel.leak.heap_size": sample.heap,
                        "labotel.leak.limit": self.limit, "labotel.leak.growth_rate": rate,
                        "labotel.leak.types": [f"{name} {n}" for name, n in types],
                        "labotel.leak.containers": largest},
            fingerprint=("memory_limit",))

    # -- admin view --------------------------------------------------------------------
    def view(self) -> dict[str, Any]:
        now = time.monotonic()
        with self._lock:
            samples = list(self.samples)
            suspicion = self.suspicion
            state = self.state
        trends = self.trends(max(self._evidence_since, now - self.window))
        last = self.last_attribution
        return {"memory_leak": {
            "state": state,
            "options": {"leak_sample_interval": self.interval, "leak_window": self.window,
                        "memory_leak_min_rate": self.min_rate,
                        "memory_limit_bytes": self.limit,
                        "leak_attribution_seconds": self.attribution_seconds},
            "trend": {series: {**t.as_dict(), "growing": t.growing(self.min_rate)}
                      for series, t in trends.items()},
            "suspicion": None if suspicion is None else {
                "series": suspicion.series, "seconds_ago": round(now - suspicion.since, 3),
                "slope_bytes_per_second": suspicion.trend.slope},
            "last_attribution": None if last is None else {
                **last, "finished_seconds_ago": round(now - self._last_attribution_at, 3)},
            "gc_collect_seconds": round(self._gc_cost, 6),
            "gc_collect_skipped": self.gc_skipped,
            "gc_collections": self.collections,
            "last_gc_check": self.last_collection_check,
            "reports": self.reports,
            "attributions": self.attributions,
            "samples": [{"seconds_ago": round(now - s.time, 3), "rss_bytes": s.rss,
                         "heap_bytes": s.heap, "small_objects": s.small_blocks,
                         "after_gc": s.after_gc, "labotel_own_bytes": s.own} for s in samples],
        }}
