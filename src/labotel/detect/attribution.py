"""Name what grows, within a budget: the containers that keep growing, and the lines that
allocate what goes into them.

Only the memory-leak detector uses this, only while a leak is suspected, and it must not
slow the application much even then. On a thread of its own, for
``leak_attribution_seconds``:

1. the containers are found by walking out from the application's roots
   (``detect.census``: no heap walk, paced to ``WALK_SHARE`` of the time);
2. every one to two ``PERIOD``s (1 s), at random (a leak that appends on a timer must not
   fall between bursts every time, and no second holds two bursts), a *burst* of tracing:
   tracemalloc on for ``BURST_SECONDS`` (0.05 s), then off again. With ``FRAMES`` frames
   it makes allocation-heavy code about ten times slower while on (3-4x with one), so it
   is on for 3-5% of the time. A burst ends by asking where the items added to the
   containers during it (and the objects those hold) were allocated:
   ``tracemalloc.get_object_traceback``, at most ``TRACEBACKS_PER_BURST`` C calls.
   Everything else waits until tracing is off again: with the application's threads
   contending for the GIL, each millisecond of work done while tracing kept tracemalloc on
   for several. Then, untraced, each container's length is recorded (an observation) and
   the tracebacks are turned into application lines;
3. at the end, the containers that grew at every observation are named with the lines
   that allocated their new items, their item types, and how they are held.

tracemalloc is taken as a lease from ``profile.heap``, which the heap profiler shares: a
tracer that was already running (heap profiling, a ``?seconds=`` request, the application
itself) is left on, and then every item's allocation is known, not only the bursts'.

No snapshot of all traces is taken (with a million traces that alone held the GIL for a
third of a second), and nothing is collected by ``gc.collect()`` here.
"""

from __future__ import annotations

import dataclasses
import heapq
import linecache
import logging
import sys
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable
from typing import Any

from labotel import fork_safe, own_random
from labotel.budget import Pacer, Stopped
from labotel.detect import census as census_module
from labotel.detect.census import Census, Found, GrowingContainer, instance_dict, newest_items
from labotel.detect.detection import Stack
from labotel.frames import application_frame
from labotel.profile import heap as tracer

log = logging.getLogger(__name__)

FRAMES = 10  # deep enough to walk out of stdlib helpers to the application line
TOP_SITES = 5
TOP_TYPES = 8
BURST_SECONDS = 0.05  # tracemalloc on, per burst...
PERIOD = 1.0  # ...beginning 1-2 periods after the last one began
MIN_OBSERVATIONS = 3  # a container must rise through these to be named
WALK_SHARE = 0.1  # of the time the container walk may take...
WALK_TIME_SHARE = 0.25  # ...for at most this share of the attribution (it then watches
MIN_WALK_SECONDS = 2.0  # the containers found so far: threads and the app's modules first)
GROWN_LOOKED_AT = 5  # containers (the fastest growing) whose new items are traced back
CONTENTS_LOOKED_AT = 8  # objects inside an item also traced back (a dict's values)
TRACEBACKS_PER_BURST = 256  # get_object_traceback calls while tracemalloc is on
MIN_SITE_SHARE = 0.02  # sites below 2% of the named growth are noise


@dataclasses.dataclass
class SiteGrowth:
    """Memory kept by the items one application line allocated into growing containers."""

    site: str  # file:line
    size: int  # bytes (estimated from the items' sizes)
    count: int  # items
    frames: tuple[tuple[str, int, str], ...]  # innermost first; "function" is the source line

    def describe(self) -> str:
        return f"{self.site} +{format_bytes(self.size)} in {self.count} items"

    def stack(self) -> Stack:
        return Stack(name=f"+{format_bytes(self.size)} allocated at {self.site}",
                     frames=self.frames)


@dataclasses.dataclass
class AttributionResult:
    seconds: float
    traced_growth: int  # bytes the named sites' items account for (estimated)
    sites: list[SiteGrowth]
    types: list[tuple[str, int]]  # (type name, count growth), biggest first
    containers: list[GrowingContainer]
    observations: int
    started_tracemalloc: bool
    walk: dict[str, Any] = dataclasses.field(default_factory=dict)
    traced_seconds: float = 0.0  # tracemalloc was on this long, in bursts

    def as_dict(self) -> dict[str, Any]:
        return {"seconds": round(self.seconds, 3), "traced_growth_bytes": self.traced_growth,
                "observations": self.observations,
                "sites": [{"site": s.site, "size_bytes": s.size, "items": s.count,
                           "traceback": [f"{f}:{ln}  {src}" for f, ln, src in s.frames]}
                          for s in self.sites],
                "types": [{"type": name, "count_growth": n} for name, n in self.types],
                "containers": [c.describe() for c in self.containers],
                "started_tracemalloc": self.started_tracemalloc,
                "traced_seconds": round(self.traced_seconds, 3), "walk": self.walk}


class _Tally:
    """Where the new items of one growing container were allocated."""

    def __init__(self) -> None:
        self.sites: Counter[str] = Counter()
        self.frames: dict[str, tuple[tuple[str, int, str], ...]] = {}
        self.sampled = 0  # items looked at
        self.item_bytes = 0  # their estimated sizes


@dataclasses.dataclass
class _TracedItem:
    """A new item of a growing container, and where it and what it holds were allocated
    (``None`` where tracemalloc was off at the time)."""

    container_id: int
    item: Any
    tracebacks: list[tracemalloc.Traceback | None]


class Attribution:
    """One bounded attribution: ``begin()``, then ``done()`` is polled, then ``finish()``
    (or ``abandon()``)."""

    def __init__(self, seconds: float, frames: int = FRAMES):
        self.seconds = seconds
        self.frames = frames
        self.started_tracemalloc = False
        self.began = 0.0
        self.observations = 0
        self.traced_seconds = 0.0
        self._census: Census | None = None
        self._walking: census_module.Walk | None = None
        self._walk: dict[str, Any] = {}
        self._tallies: dict[int, _Tally] = {}
        self._stop = threading.Event()
        self._leased = False
        self._lease_lock = fork_safe.lock()
        self._thread: threading.Thread | None = None
        self._idle = threading.Event()  # set while no burst of labotel's is tracing
        self._idle.set()
        self.failed = False

    def begin(self, now: float | None = None) -> None:
        """Start the attribution thread; ``now`` is the sample time it is counted from."""
        self.began = time.monotonic() if now is None else now
        self.started_tracemalloc = not tracemalloc.is_tracing()
        self._thread = threading.Thread(target=self._run, name="labotel-attribution",
                                        daemon=True)
        self._thread.start()

    def done(self, now: float) -> bool:
        """Time is up and there were enough observations (or the thread gave up)."""
        if self.failed:
            return True
        return now - self.began >= self.seconds and self.observations >= MIN_OBSERVATIONS

    # -- the attribution thread ----------------------------------------------------------
    def _run(self) -> None:
        try:
            pacer = Pacer(WALK_SHARE, stop=self._stop,
                          seconds=max(MIN_WALK_SECONDS, self.seconds * WALK_TIME_SHARE))
            self._walking = census_module.Walk()
            census = census_module.take_census(pacer, walk=self._walking)
            self._walk = {**census.as_dict(), "seconds_of_work": round(pacer.worked, 3)}
            self._census = census
            self._walking = None
            while not self._stop.is_set():
                self._burst()
                # bursts begin 1-2 PERIODs apart, at random: in step with an application's
                # timer they would see its appends always, or never; and no second holds
                # two of them
                gap = own_random.generator.uniform(PERIOD - BURST_SECONDS,
                                                   2 * PERIOD - BURST_SECONDS)
                if self._stop.wait(gap):
                    break
        except Stopped:
            pass
        except Exception:
            self.failed = True
            log.debug("labotel: leak attribution failed", exc_info=True)
        finally:
            self._walking = None
            self._release()

    def _burst(self) -> None:
        census = self._census
        if census is None:
            return
        lengths = _length_readers(census)  # before tracing starts
        self._idle.clear()
        self._lease()
        began = time.monotonic()
        traced: list[_TracedItem] = []
        try:
            if self._stop.wait(BURST_SECONDS):
                return
            traced = _trace_back_added(lengths)
        finally:
            self._release()
            self._idle.set()
            self.traced_seconds += time.monotonic() - began
        self._observe(census, traced)

    def bytes(self) -> int:
        """labotel's own memory here: the walk's working set while it runs, then the
        census records and the tallies."""
        walking, census = self._walking, self._census
        return ((walking.bytes() if walking is not None else 0)
                + (census.bytes() if census is not None else 0)
                + 300 * sum(len(t.sites) for t in list(self._tallies.values())))

    def wait_idle(self, timeout: float) -> None:
        """Wait for the burst in progress to end: memory samples are taken between bursts,
        so tracemalloc's tables (freed when a burst ends) never show as growth."""
        self._idle.wait(timeout)

    def _observe(self, census: Census, traced: list[_TracedItem]) -> None:
        """Untraced: record each container's length, and tally where the items traced back
        in the burst were allocated."""
        census.observe()
        self.observations += 1
        for entry in traced:
            tally = self._tallies.setdefault(entry.container_id, _Tally())
            tally.sampled += 1
            tally.item_bytes += approximate_size(entry.item)
            site, frames = allocation_site(entry.tracebacks, tally.frames)
            if site is not None:
                tally.sites[site] += 1
                tally.frames.setdefault(site, frames)

    def _lease(self) -> None:
        with self._lease_lock:
            if not self._leased and not self._stop.is_set():
                tracer.acquire(self.frames)
                self._leased = True

    def _release(self) -> None:
        with self._lease_lock:
            if self._leased:
                self._leased = False
                tracer.release()
        self._idle.set()

    # -- the detector's side ------------------------------------------------------------
    def finish(self) -> AttributionResult:
        """Name what grew steadily; tracemalloc is off again unless someone else needs it."""
        self._end()
        census = self._census
        self._census = None
        containers: list[GrowingContainer] = []
        sites: dict[str, SiteGrowth] = {}
        types: Counter[str] = Counter()
        if census is not None:
            for growth, found in census_module.growing_containers(census, limit=10):
                described = census_module.describe_growing(growth, found)
                if len(containers) < 3:
                    containers.append(described)
                sampled = sum(n for _, n in described.items) or 1
                for name, n in described.items:
                    types[name] += growth * n // sampled
                tally = self._tallies.get(id(found.container))
                if tally is None or not tally.sampled:
                    continue
                item_size = tally.item_bytes / tally.sampled
                traced = sum(tally.sites.values()) or 1
                for site, n in tally.sites.items():
                    share = n / traced
                    entry = sites.setdefault(site, SiteGrowth(site, 0, 0, tally.frames[site]))
                    entry.size += int(growth * share * item_size)
                    entry.count += int(growth * share)
            census.release()
        ranked = sorted(sites.values(), key=lambda s: s.size, reverse=True)
        total = sum(site.size for site in ranked)
        ranked = [site for site in ranked if site.size >= total * MIN_SITE_SHARE]
        self._tallies = {}
        return AttributionResult(
            seconds=time.monotonic() - self.began, traced_growth=sum(s.size for s in ranked),
            sites=ranked[:TOP_SITES], types=types.most_common(TOP_TYPES),
            containers=containers, observations=self.observations,
            started_tracemalloc=self.started_tracemalloc, walk=self._walk,
            traced_seconds=self.traced_seconds)

    def _end(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(2.0)
        self._release()

    def abandon(self) -> None:
        """Stop now; tracemalloc stops (freeing every trace) if nobody else holds it."""
        self._end()
        if self._census is not None:
            self._census.release()  # do not keep the containers alive
            self._census = None
        self._tallies = {}

    def forget(self) -> None:
        """In a forked child: the thread stayed in the parent and the profiler already
        reset the leases; just let go. The events are new ones: the
        parent's attribution thread may have been inside one at fork (the child then hung
        for ever setting the copied stop event, in ``os.fork()``'s after-fork hooks)."""
        self._stop = threading.Event()
        self._stop.set()
        self._idle = threading.Event()
        self._idle.set()
        self._thread = None
        self._leased = False
        self._census = None
        self._tallies = {}


# -- the burst's two ends ------------------------------------------------------------------
_LengthReader = tuple[Found, Callable[[Any], int], int]  # (container, its __len__, length)


def _length_readers(census: Census) -> list[_LengthReader]:
    """Each watched container's built-in ``__len__`` and its length now."""
    readers = []
    for found in census.containers:
        length = census_module.builtin_length_of(type(found.container))
        if length is not None:
            readers.append((found, length, length(found.container)))
    return readers


def _trace_back_added(lengths: list[_LengthReader]) -> list[_TracedItem]:
    """While tracing: where the items added since ``lengths`` were read (the burst's own,
    so tracemalloc saw them allocated) and what they hold were allocated, for the
    containers that grew most. Built-in reads and C calls only, at most
    ``TRACEBACKS_PER_BURST`` tracebacks."""
    # a generator: while tracing, every object allocated here costs a traceback too
    grown = heapq.nlargest(GROWN_LOOKED_AT, (
        (growth, found) for found, length, before in lengths
        if (growth := length(found.container) - before) > 0), key=lambda pair: pair[0])
    traced: list[_TracedItem] = []
    budget = TRACEBACKS_PER_BURST
    for growth, found in grown:
        for item in newest_items(found.container, min(growth, census_module.ITEM_SAMPLE)):
            if budget <= 0:
                return traced
            objects = [item, *_contents(item)][:budget]
            budget -= len(objects)
            traced.append(_TracedItem(id(found.container), item, [
                tracemalloc.get_object_traceback(obj) for obj in objects]))
    return traced


# -- what an item is, and where it was allocated ------------------------------------------
_SMALL = (str, bytes, bytearray, int, float)


def _contents(item: Any) -> list[Any]:
    """Objects an item holds (one level), read through built-in methods only."""
    kind = type(item)
    if issubclass(kind, dict):
        return newest_items(item, CONTENTS_LOOKED_AT)
    if issubclass(kind, (list, tuple)):
        return newest_items(item, CONTENTS_LOOKED_AT)
    if issubclass(kind, _SMALL):
        return []
    namespace = instance_dict(item)
    return list(dict.values(namespace))[:CONTENTS_LOOKED_AT] if namespace else []


def allocation_site(tracebacks: list[tracemalloc.Traceback | None],
                    known: dict[str, tuple[tuple[str, int, str], ...]] | None = None,
                    ) -> tuple[str | None, tuple[tuple[str, int, str], ...]]:
    """The application line that allocated an item (or, if it came from a free list or
    was allocated while nothing traced, the objects it holds), by majority of the
    ``tracebacks`` of the item and its contents. The source lines of a site already in
    ``known`` are not read again."""
    votes: Counter[str] = Counter()
    frames_of: dict[str, tuple[tuple[str, int, str], ...]] = {}
    for traceback in tracebacks:
        if not traceback:
            continue
        frames = tuple((frame.filename, frame.lineno, "") for frame in reversed(traceback))
        index = application_frame(frames)
        site = f"{frames[index][0]}:{frames[index][1]}"
        votes[site] += 1
        if site not in frames_of:
            frames_of[site] = (known or {}).get(site) or tuple(
                (f, ln, _source(f, ln)) for f, ln, _ in frames[index:index + 6])
    if not votes:
        return None, ()
    site = votes.most_common(1)[0][0]
    return site, frames_of[site]


def approximate_size(item: Any) -> int:
    """Bytes an item keeps, itself and one level of what it holds (built-in types only)."""
    size = _own_size(item)
    return size + sum(_own_size(obj) for obj in _contents(item))


_SIZED = frozenset({str, bytes, bytearray, int, float, tuple, list, dict, set, frozenset})


def _own_size(obj: Any) -> int:
    # sys.getsizeof only where __sizeof__ is the built-in one
    return sys.getsizeof(obj) if type(obj) in _SIZED else 64


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
