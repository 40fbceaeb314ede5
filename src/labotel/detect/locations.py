"""Shadow state for instrumented code, with Python's semantics (``race_instrument``).

A location is an object plus an attribute name or item key (or a module plus a global
name). Single operations on it are atomic, like Go's ``sync/atomic``: two writes never
race. What races is a *read-modify-write*: a thread read the location and then wrote it
in the same epoch (no release in between; ``race_runtime`` finds these in the thread's
own table, without a lock). Per location we keep the last write and the last
read-modify-write of each thread not yet ordered before a later one, and report:

- a read-modify-write when another thread's write is unordered with it (that write could
  have landed between the read and the write);
- a write when another thread's read-modify-write is unordered with it.

Identity survives address reuse: each location keeps a weak reference to its object (or,
for objects that have none, such as ``dict`` and ``list``, the object itself, dropped by
a sweep once labotel holds the last reference), and a location found under the same
``id()`` with another object is started afresh. Bounded like ``ShadowMemory``: at most
``max_locations`` locations and ``max_bytes`` bytes, least recently used forgotten.
"""

from __future__ import annotations

import collections
import sys
import weakref
from types import FrameType
from typing import Any

from labotel.detect.shadow import CLOCK, TID, capture, key_bytes
from labotel.detect.vectorclock import ThreadState, forgotten

_monotonic = __import__("time").monotonic
_ref = weakref.ref
LOCATION_BYTES = 400  # table slot, Location, weakref share (estimate, see bytes())
SWEEP_EVERY = 4096  # strongly held objects added between two sweeps


class Location:
    __slots__ = ("ref", "strong", "writes", "rmws")

    def __init__(self, ref: Any, strong: Any):
        self.ref = ref
        self.strong = strong
        self.writes: dict[int, tuple] = {}  # tid -> last write not ordered before another
        self.rmws: dict[int, tuple] = {}  # tid -> last read-modify-write, likewise


def _unordered(vc: dict, previous: tuple, tid: int) -> bool:
    return previous[TID] != tid and vc.get(previous[TID], 0) < previous[CLOCK]


class LocationShadow:
    """Bounded table of locations; callers serialise access (the detector's raw lock)."""

    def __init__(self, max_locations: int, stack_depth: int, max_bytes: int):
        self.max_locations = max_locations
        self.max_bytes = max_bytes
        self.stack_depth = stack_depth
        self.table: collections.OrderedDict[tuple, Location] = collections.OrderedDict()
        self.bytes = 0
        self.evicted = 0
        self.strong_added = 0
        self.reused = 0
        self.record_bytes = 64 + stack_depth * 64

    def __len__(self) -> int:
        return len(self.table)

    def _location(self, marker: tuple, obj: Any, garbage: list) -> Location:
        table = self.table
        location = table.get(marker)
        if location is not None:
            if obj is None or location.strong is obj or (
                    location.ref is not None and location.ref() is obj):
                table.move_to_end(marker)
                return location
            # another object now lives at this address: a new location
            garbage.append(location)
            self._drop(marker)
            self.reused += 1
        ref = strong = None
        if obj is not None:
            try:
                ref = _ref(obj)
            except TypeError:  # dict, list, slots without __weakref__, some C types
                strong = obj
                self.strong_added += 1
        location = table[marker] = Location(ref, strong)
        self.bytes += LOCATION_BYTES + key_bytes(marker[1])
        if len(table) > self.max_locations or self.bytes > self.max_bytes:
            self._evict(garbage)
        if self.strong_added >= SWEEP_EVERY:
            self._sweep(garbage)
        return location

    def _drop(self, marker: tuple) -> None:
        location = self.table.pop(marker)
        self.bytes -= (LOCATION_BYTES + key_bytes(marker[1])
                       + self.record_bytes * (len(location.writes) + len(location.rmws)))

    def _evict(self, garbage: list) -> None:
        table = self.table
        while len(table) > 1 and (len(table) > self.max_locations or self.bytes > self.max_bytes):
            marker = next(iter(table))
            garbage.append(table[marker])
            self._drop(marker)
            self.evicted += 1

    def _sweep(self, garbage: list) -> None:
        """Forget locations of strongly held objects nobody else references any more."""
        self.strong_added = 0
        holders: dict[int, list] = {}
        for marker, location in self.table.items():
            if location.strong is not None:
                holders.setdefault(id(location.strong), []).append(marker)
        for markers in holders.values():
            obj = self.table[markers[0]].strong
            # references: each location's, this local, getrefcount's argument
            if sys.getrefcount(obj) <= len(markers) + 2:
                for marker in markers:
                    garbage.append(self.table[marker])
                    self._drop(marker)
            del obj

    def write(self, obj: Any, marker: tuple, rmw: bool, state: ThreadState,
              frame: FrameType | None, site: tuple, garbage: list) -> list | None:
        """Record a write (a read-modify-write when ``rmw``); return the conflicts."""
        location = self._location(marker, obj, garbage)
        tid, vc = state.tid, state.vc
        current = (tid, state.clock, state.label, True, None,
                   capture(frame, self.stack_depth), _monotonic(), site, rmw)
        conflicts = None
        reported = set()
        if rmw:
            for previous in location.writes.values():
                if _unordered(vc, previous, tid) and not forgotten(previous[TID]):
                    conflicts = conflicts or []
                    conflicts.append((previous, current))
                    reported.add(previous[TID])
        for previous in location.rmws.values():
            if (previous[TID] not in reported and _unordered(vc, previous, tid)
                    and not forgotten(previous[TID])):
                conflicts = conflicts or []
                conflicts.append((previous, current))
        self._keep(location.writes, current, vc, tid, garbage)
        if rmw:
            self._keep(location.rmws, current, vc, tid, garbage)
        return conflicts

    def _keep(self, records: dict, current: tuple, vc: dict, tid: int,
              garbage: list) -> None:
        """Add ``current``; drop records ordered before it (it stands for them now)."""
        before = len(records)
        for other in [k for k, previous in records.items()
                      if k != tid and not _unordered(vc, previous, tid)]:
            del records[other]
        records[tid] = current
        self.bytes += self.record_bytes * (len(records) - before)
        if self.bytes > self.max_bytes:
            self._evict(garbage)
