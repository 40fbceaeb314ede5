"""Shadow memory: the last accesses to each resource, checked FastTrack-style.

Per resource we keep the last write and either the last read (while reads are totally
ordered, the common case: one epoch, O(1)) or, once two reads are concurrent, the last
read of each reading thread. An access conflicts with a recorded one when at least one of
them is a write, they come from different threads, and no happens-before edge orders the
recorded one before the current one. Timing plays no part.

Memory: at most ``max_resources`` resources are tracked; the least recently accessed one is
forgotten first (a race on it that spans the eviction is missed, never invented). Each
access keeps ``stack_depth`` (code, line) pairs for the report.
"""

from __future__ import annotations

import collections
import time
from types import FrameType
from typing import Any

from labotel.detect.vectorclock import ThreadState, forgotten

# An access record is a plain tuple (cheapest to build on the hot path):
TID, CLOCK, STATE, WRITE, LOCATION, FRAMES, WHEN = range(7)
Access = tuple  # (tid, clock, ThreadState, write, explicit location | None, frames, monotonic)
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


class ShadowMemory:
    """Resource -> Shadow, bounded LRU. Callers serialise access (one raw lock)."""

    def __init__(self, max_resources: int, stack_depth: int):
        self.max_resources = max_resources
        self.stack_depth = stack_depth
        self.table: collections.OrderedDict[Any, Shadow] = collections.OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self.table)

    def access(self, resource: Any, write: bool, state: ThreadState, frame: FrameType | None,
               location: str | None) -> list[Conflict] | None:
        """Record an access; return the conflicts it has with unordered earlier accesses."""
        table = self.table
        shadow = table.get(resource)
        if shadow is None:
            shadow = table[resource] = Shadow()
            if len(table) > self.max_resources:
                table.popitem(last=False)
                self.evicted += 1
        else:
            table.move_to_end(resource)
        tid = state.tid
        clock = state.clock
        last_write = shadow.write
        if write:
            if last_write is not None and last_write[TID] == tid and last_write[CLOCK] == clock:
                return None  # same epoch: already checked
            current = (tid, clock, state, True, location, capture(frame, self.stack_depth),
                       _monotonic())
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
                shadow.reads = None
            else:
                read = shadow.read
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
        current = (tid, clock, state, False, location, capture(frame, self.stack_depth),
                   _monotonic())
        conflicts = None
        if (last_write is not None and last_write[TID] != tid
                and state.vc.get(last_write[TID], 0) < last_write[CLOCK]):
            conflicts = self._conflict(conflicts, resource, last_write, current)
        if reads is not None:
            reads[tid] = current
        elif last_read is None or state.ordered(last_read[TID], last_read[CLOCK]):
            shadow.read = current
        else:  # two concurrent reads: keep one per thread from now on
            shadow.reads = {last_read[TID]: last_read, tid: current}
            shadow.read = None
        return conflicts

    @staticmethod
    def _conflict(conflicts: list | None, resource: Any, previous: Access,
                  current: Access) -> list | None:
        if forgotten(previous[TID]):
            return conflicts  # too old to judge: stay silent rather than guess
        conflicts = conflicts or []
        conflicts.append((resource, previous, current))
        return conflicts
