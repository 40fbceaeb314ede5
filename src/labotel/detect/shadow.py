"""Shadow memory: the last accesses to each resource, checked FastTrack-style.

Per resource we keep the last write and either the last read (while reads are totally
ordered, the common case: one epoch, O(1)) or, once two reads are concurrent, the last
read of each reading thread. An access conflicts with a recorded one when at least one of
them is a write, they come from different threads, and no happens-before edge orders the
recorded one before the current one. Timing plays no part.

Memory: at most ``max_resources`` resources are tracked, and at most ``max_bytes`` bytes
of shadow state (keys are bounded, ``detect.keys``; each access keeps ``stack_depth``
(code, line) pairs and the thread's label, never its clock); the least recently accessed
resource is forgotten first (a race on it that spans the eviction is missed, never
invented). ``bytes`` is an estimate from the sizes of real records, measured once.
"""

from __future__ import annotations

import collections
import sys
import time
from types import FrameType
from typing import Any

from labotel.detect.vectorclock import ThreadState, forgotten

# An access record is a plain tuple (cheapest to build on the hot path):
TID, CLOCK, STATE, WRITE, LOCATION, FRAMES, WHEN = range(7)
Access = tuple  # (tid, clock, ThreadLabel, write, explicit location | None, frames, monotonic)
Conflict = tuple  # (resource, previous Access, current Access)
_monotonic = time.monotonic


class Shadow:
    __slots__ = ("write", "read", "reads")

    def __init__(self) -> None:
        self.write: Access | None = None
        self.read: Access | None = None
        self.reads: dict[int, Access] | None = None  # read-shared mode: tid -> last read


def capture(frame: FrameType | None, depth: int) -> tuple:
    """(code, line) pairs, innermost first; lines are read now, names resolved on report."""
    frames = []
    while frame is not None and depth:
        frames.append((frame.f_code, frame.f_lineno))
        frame = frame.f_back
        depth -= 1
    return tuple(frames)


def _access_bytes(depth: int) -> int:
    """Bytes one access record holds: its tuple, its frames, its time."""
    frames = tuple((_access_bytes.__code__, n) for n in range(depth))
    record = (1, 1, None, True, None, frames, 1.5)
    return (sys.getsizeof(record) + sys.getsizeof(frames) + depth * sys.getsizeof(frames[0])
            + sys.getsizeof(1.5))


# an OrderedDict entry (hash slot + linked node) and a Shadow
ENTRY_BYTES = 120 + sys.getsizeof(Shadow())
READER_ENTRY_BYTES = 100  # a slot of a read-shared resource's per-thread dict


def key_bytes(key: Any) -> int:
    if type(key) is tuple:
        return sys.getsizeof(key) + sum(key_bytes(item) for item in key)
    return sys.getsizeof(key)


class ShadowMemory:
    """Resource -> Shadow, bounded LRU. Callers serialise access (one raw lock)."""

    def __init__(self, max_resources: int, stack_depth: int, max_bytes: int = 1 << 62):
        self.max_resources = max_resources
        self.max_bytes = max_bytes
        self.stack_depth = stack_depth
        self.table: collections.OrderedDict[Any, Shadow] = collections.OrderedDict()
        self.evicted = 0
        self.access_bytes = _access_bytes(stack_depth)
        self.bytes = 0

    def __len__(self) -> int:
        return len(self.table)

    def _resource_bytes(self, key: Any) -> int:
        # a write and a read record, whether or not both are there yet
        return ENTRY_BYTES + key_bytes(key) + 2 * self.access_bytes

    def _evict(self) -> None:
        table = self.table
        while len(table) > 1 and (len(table) > self.max_resources or self.bytes > self.max_bytes):
            key, shadow = table.popitem(last=False)
            self.bytes -= self._resource_bytes(key) + self._readers_bytes(shadow)
            self.evicted += 1

    def _readers_bytes(self, shadow: Shadow) -> int:
        reads = shadow.reads
        return len(reads) * (READER_ENTRY_BYTES + self.access_bytes) if reads else 0

    def access(self, resource: Any, write: bool, state: ThreadState, frame: FrameType | None,
               location: str | None) -> list[Conflict] | None:
        """Record an access; return the conflicts it has with unordered earlier accesses.

        ``resource`` must be a plain key (``detect.keys``): it is hashed and compared here.
        """
        table = self.table
        shadow = table.get(resource)
        if shadow is None:
            shadow = table[resource] = Shadow()
            self.bytes += self._resource_bytes(resource)
            if len(table) > self.max_resources or self.bytes > self.max_bytes:
                self._evict()
        else:
            table.move_to_end(resource)
        tid = state.tid
        clock = state.clock
        last_write = shadow.write
        if write:
            if last_write is not None and last_write[TID] == tid and last_write[CLOCK] == clock:
                return None  # same epoch: already checked
            current = (tid, clock, state.label, True, location,
                       capture(frame, self.stack_depth), _monotonic())
            conflicts = None
            vc = state.vc
            # "ordered before us" inlined: same thread, or our clock has seen that epoch.
            if (last_write is not None and last_write[TID] != tid
                    and vc.get(last_write[TID], 0) < last_write[CLOCK]):
                conflicts = self._conflict(conflicts, resource, last_write, current)
            if shadow.reads is not None:
                for read in shadow.reads.values():
                    if read[TID] != tid and vc.get(read[TID], 0) < read[CLOCK]:
                        conflicts = self._conflict(conflicts, resource, read, current)
                self.bytes -= self._readers_bytes(shadow)
                shadow.reads = None
            else:
                read = shadow.read  # type: ignore[assignment]
                if read is not None and read[TID] != tid and vc.get(read[TID], 0) < read[CLOCK]:
                    conflicts = self._conflict(conflicts, resource, read, current)
            shadow.read = None  # every earlier read is now ordered before, or reported
            shadow.write = current
            return conflicts
        last_read = shadow.read
        if last_read is not None and last_read[TID] == tid and last_read[CLOCK] == clock:
            return None
        reads = shadow.reads
        if reads is not None:
            mine = reads.get(tid)
            if mine is not None and mine[CLOCK] == clock:
                return None
        current = (tid, clock, state.label, False, location, capture(frame, self.stack_depth),
                   _monotonic())
        conflicts = None
        if (last_write is not None and last_write[TID] != tid
                and state.vc.get(last_write[TID], 0) < last_write[CLOCK]):
            conflicts = self._conflict(conflicts, resource, last_write, current)
        if reads is not None:
            if tid not in reads:
                self.bytes += READER_ENTRY_BYTES + self.access_bytes
            reads[tid] = current
        elif last_read is None or state.ordered(last_read[TID], last_read[CLOCK]):
            shadow.read = current
        else:  # two concurrent reads: keep one per thread from now on
            shadow.reads = {last_read[TID]: last_read, tid: current}
            shadow.read = None
            self.bytes += self._readers_bytes(shadow)
        if self.bytes > self.max_bytes:
            self._evict()
        return conflicts

    @staticmethod
    def _conflict(conflicts: list | None, resource: Any, previous: Access,
                  current: Access) -> list | None:
        if forgotten(previous[TID]):
            return conflicts  # too old to judge: stay silent rather than guess
        conflicts = conflicts or []
        conflicts.append((resource, previous, current))
        return conflicts
