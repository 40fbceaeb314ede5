"""Name what grows: tracemalloc for a bounded time, plus object counts by type.

Only the memory-leak detector uses this, and only while a leak is suspected: tracemalloc
makes every allocation several times slower, so it runs for ``leak_attribution_seconds``
and is then stopped again. It is taken as a lease from ``profile.heap``, which the heap
profiler shares: a tracer that was already running (heap profiling, a ``?seconds=``
request, the application itself) is left on, and nobody stops it under the other's feet.

A snapshot taken at one instant also holds whatever short-lived objects happen to be
alive (a request being built, a batch being parsed). So the traced size of every
allocation site is observed at each sample during attribution, and only sites whose size
rose steadily across those observations are named.
"""

from __future__ import annotations

import collections
import dataclasses
import gc
import linecache
import operator
import os
import time
import tracemalloc
from collections import Counter
from typing import Any

from labotel.detect.census import (
    Census,
    GrowingContainer,
    count_types,
    growing_containers,
    take_census,
    type_name,
)
from labotel.detect.detection import Stack
from labotel.detect.frames import application_frame
from labotel.profile import heap as tracer
from labotel.runtime.origins import APPLICATION_DIRS

FRAMES = 10  # deep enough to walk out of stdlib helpers to the application line
TOP_SITES = 5
TOP_TYPES = 8

_OWN_DIRS = (os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep,
             os.path.dirname(tracemalloc.__file__) + os.sep + "tracemalloc.py")
MIN_TYPE_SHARE = 0.05  # likewise for object types, relative to the type that grew most
MIN_TYPE_GROWTH = 50  # objects: fewer is bookkeeping, not a leak
_SIZE = operator.itemgetter(1)
OBSERVATIONS = 4  # snapshots spread over the attribution time
MIN_SITE_SHARE = 0.02  # sites below 2% of the steady growth are noise, not the leak
MAX_FALLS = 0  # observations where a leaking site's size may fall
MIN_RISE_SHARE = 0.5  # share of observations where it must rise


@dataclasses.dataclass
class SiteGrowth:
    """Traced memory at one application line: its size, or how much it grew."""

    site: str  # file:line
    size: int  # bytes
    count: int  # blocks
    frames: tuple[tuple[str, int, str], ...]  # innermost first; "function" is the source line

    def describe(self) -> str:
        return f"{self.site} +{format_bytes(self.size)} in {self.count} blocks"

    def stack(self) -> Stack:
        return Stack(name=f"+{format_bytes(self.size)} allocated at {self.site}",
                     frames=self.frames)


@dataclasses.dataclass
class AttributionResult:
    seconds: float
    traced_growth: int  # bytes the steadily growing sites gained
    sites: list[SiteGrowth]
    types: list[tuple[str, int]]  # (type name, count growth), biggest first
    containers: list[GrowingContainer]
    observations: int
    started_tracemalloc: bool

    def as_dict(self) -> dict[str, Any]:
        return {"seconds": round(self.seconds, 3), "traced_growth_bytes": self.traced_growth,
                "observations": self.observations,
                "sites": [{"site": s.site, "size_bytes": s.size, "blocks": s.count,
                           "traceback": [f"{f}:{ln}  {src}" for f, ln, src in s.frames]}
                          for s in self.sites],
                "types": [{"type": name, "count_growth": n} for name, n in self.types],
                "containers": [c.describe() for c in self.containers],
                "started_tracemalloc": self.started_tracemalloc}


class Attribution:
    """One bounded tracemalloc session: ``begin()``, ``observe()`` at every sample, then
    ``finish()`` (or ``abandon()``)."""

    def __init__(self, seconds: float, frames: int = FRAMES):
        self.seconds = seconds
        self.frames = frames
        self._last_observed = 0.0
        self.started_tracemalloc = False
        self._leased = False
        self.began = 0.0
        self._observed: list[dict[str, SiteGrowth]] = []
        self._types: list[Counter[type]] = []
        self._census: Census | None = None

    def begin(self, now: float | None = None) -> None:
        """Start tracing; ``now`` is the sample time the attribution is counted from."""
        self._census = take_census()  # before tracing: it would be traced itself
        self.started_tracemalloc = not tracemalloc.is_tracing()
        tracer.acquire(self.frames)
        self._leased = True
        self.began = time.monotonic() if now is None else now
        self._observed, self._types = [], []
        if not self.started_tracemalloc:  # already tracing: now is a real baseline
            self.observe()

    def done(self, now: float) -> bool:
        """Time is up and there are enough observations to tell a ramp from noise."""
        return now - self.began >= self.seconds and len(self._observed) >= 2

    def due(self, now: float) -> bool:
        """Observations are spread over the attribution time, whatever the sample rate."""
        return now - self._last_observed >= self.seconds / OBSERVATIONS * 0.9

    def observe(self) -> None:
        """One observation of every site's traced size and of object counts by type."""
        self._last_observed = time.monotonic()
        if gc.isenabled():
            gc.collect()  # uncollected cycles pile up between collections: not a leak
        self._types.append(count_types())  # before the snapshot: its objects stay out
        if self._census is not None:
            self._census.observe()
        if tracemalloc.is_tracing():
            self._observed.append(site_sizes(tracemalloc.take_snapshot()))

    def finish(self) -> AttributionResult:
        """Name what grew steadily, and stop tracemalloc if nobody else needs it."""
        census = self._census
        try:
            self.observe()
        finally:
            self._census = None
            self.abandon()
        sites = steady_sites(self._observed)
        traced = sum(site.size for site in sites)
        sites = [site for site in sites if site.size >= traced * MIN_SITE_SHARE]
        types: list[tuple[str, int]] = []
        containers: list[GrowingContainer] = []
        types = steady_types(self._types)[:TOP_TYPES]
        if types:  # drop the bookkeeping noise next to what really grew
            types = [(name, n) for name, n in types
                     if n >= max(types[0][1] * MIN_TYPE_SHARE, MIN_TYPE_GROWTH)]
        if census is not None:
            containers = growing_containers(census)
            census.release()
        known = {name for name, _ in types}
        for container in containers:  # untracked items (str, bytes, simple dicts) show here
            sampled = sum(n for _, n in container.items) or 1
            types += [(name, container.growth * n // sampled) for name, n in container.items
                      if name not in known]
            known.update(name for name, _ in container.items)
        observations = len(self._observed)
        self._observed, self._types = [], []
        return AttributionResult(
            seconds=time.monotonic() - self.began, traced_growth=traced,
            sites=sites[:TOP_SITES], types=types, containers=containers,
            observations=observations, started_tracemalloc=self.started_tracemalloc)

    def abandon(self) -> None:
        """Return the lease: tracemalloc stops (freeing every trace) if nobody else holds it."""
        if self._census is not None:
            self._census.release()  # do not keep the containers alive
            self._census = None
        if self._leased:
            self._leased = False
            tracer.release()

    def forget(self) -> None:
        """In a forked child: the profiler already reset the leases; just let go."""
        self._leased = False
        self._census = None
        self._observed, self._types = [], []


def site_sizes(snapshot: tracemalloc.Snapshot) -> dict[str, SiteGrowth]:
    """Traced size per application line (several tracebacks can end at one line)."""
    # Sum by raw traceback first: one tight loop over the traces, where the public
    # Snapshot.statistics() builds objects per trace and costs several times more.
    # Group raw traces by traceback with no allocation per trace: while tracemalloc runs,
    # every new object (even an int above 256) costs a traceback capture.
    by_traceback: collections.defaultdict[tuple, list] = collections.defaultdict(list)
    for trace in snapshot.traces._traces:  # (domain, size, traceback, total frames)
        by_traceback[trace[2]].append(trace)
    by_site: dict[str, SiteGrowth] = {}
    biggest: dict[str, int] = {}
    for traceback, traces in by_traceback.items():
        size, count = sum(map(_SIZE, traces)), len(traces)
        # tracemalloc stores frames innermost first
        if any(filename.startswith(_OWN_DIRS) and not filename.startswith(APPLICATION_DIRS)
               for filename, _ in traceback):
            continue  # labotel's own allocations (this sampler, the census) are not the app's
        frames = tuple((filename, lineno, "") for filename, lineno in traceback)
        index = application_frame(frames)
        site = f"{frames[index][0]}:{frames[index][1]}"
        entry = by_site.get(site)
        if entry is None:
            entry = by_site[site] = SiteGrowth(site, 0, 0, ())
        entry.size += size
        entry.count += count
        if size > biggest.get(site, 0):  # show the traceback that holds the most
            biggest[site] = size
            entry.frames = tuple((f, ln, _source(f, ln)) for f, ln, _ in
                                 frames[index:index + 6])
    return by_site


def steady(sizes: list[int]) -> bool:
    """Never fell, mostly rose, and ended higher than it began."""
    steps = [b - a for a, b in zip(sizes, sizes[1:], strict=False)]
    return (len(steps) >= 1 and sizes[-1] > sizes[0]
            and sum(step < 0 for step in steps) <= MAX_FALLS
            and sum(step > 0 for step in steps) >= MIN_RISE_SHARE * len(steps))


def steady_sites(observed: list[dict[str, SiteGrowth]]) -> list[SiteGrowth]:
    """Sites whose traced size rose steadily across the observations, by growth."""
    if len(observed) < 2:
        return []
    first, last = observed[0], observed[-1]
    grown = []
    for site, now in last.items():
        if steady([o[site].size if site in o else 0 for o in observed]):
            before = first.get(site)
            grown.append(SiteGrowth(site, now.size - (before.size if before else 0),
                                    now.count - (before.count if before else 0), now.frames))
    return sorted(grown, key=lambda s: s.size, reverse=True)


def steady_types(counts: list[Counter[type]]) -> list[tuple[str, int]]:
    """Object types whose count rose steadily, by growth."""
    if len(counts) < 2:
        return []
    grown = [(type_name(kind), n - counts[0].get(kind, 0)) for kind, n in counts[-1].items()
             if steady([c.get(kind, 0) for c in counts])]
    return sorted(((name, n) for name, n in grown if not name.startswith("labotel.")),
                  key=lambda pair: pair[1], reverse=True)


def _source(filename: str, lineno: int) -> str:
    text = linecache.getline(filename, lineno).strip()
    return text[:100] if text else "?"


def format_bytes(size: float) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
