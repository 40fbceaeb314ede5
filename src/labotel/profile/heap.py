"""The heap profile: live Python allocations by allocation stack, from tracemalloc.

tracemalloc slows allocation-heavy code several times, so it is never left running by
accident: it runs for the whole process only with ``heap_profiling`` on, or for the
``?seconds=N`` window of one request. Everyone who needs it takes a *lease*; it stops
when the last lease started by labotel is returned, and a tracer the application started
itself is never stopped.

tracemalloc records only allocations that are still alive, so the profile has
``inuse_objects``/``inuse_space``; past (freed) allocations are unknown and not invented.
"""

from __future__ import annotations

import fnmatch
import gc
import threading
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager

from labotel.profile import text
from labotel.profile.pprof import ProfileBuilder

SAMPLE_TYPES = [("inuse_objects", "count"), ("inuse_space", "bytes")]
# Allocations made by the profiling request itself (snapshots, builders) are left out:
# a stack with a frame in one of these files.
_OWN_FILES = (tracemalloc.__file__, "*/labotel/profile/*")
_own_by_file: dict[str, bool] = {}
_MAX_FILES_KNOWN = 4096

_lock = threading.Lock()
_leases = 0
_started_here = False


def acquire(frames: int) -> None:
    """Take a lease on tracemalloc, starting it (with ``frames`` frames) if it is off."""
    global _leases, _started_here
    with _lock:
        if not tracemalloc.is_tracing():
            tracemalloc.start(frames)
            _started_here = True
        _leases += 1


def release() -> None:
    """Return a lease; the last one stops tracemalloc if labotel started it."""
    global _leases, _started_here
    with _lock:
        _leases = max(_leases - 1, 0)
        if _leases == 0 and _started_here:
            _started_here = False
            tracemalloc.stop()


@contextmanager
def leased(frames: int) -> Iterator[None]:
    acquire(frames)
    try:
        yield
    finally:
        release()


def reset_after_fork(held: int) -> None:
    """In a forked child only ``held`` leases survive (requests stayed in the parent)."""
    global _lock, _leases, _started_here
    _lock = threading.Lock()
    _leases = held
    if held == 0 and _started_here:
        _started_here = False
        tracemalloc.stop()


def snapshot(collect: bool) -> tracemalloc.Snapshot:
    """Every live trace; labotel's own are left out per stack, once grouped (see ``own``)."""
    if collect:
        gc.collect()
    return tracemalloc.take_snapshot()


def statistics(current: tracemalloc.Snapshot) -> list[tracemalloc.Statistic]:
    """Live allocations per stack, labotel's own profiling left out."""
    return [stat for stat in current.statistics("traceback") if not own(stat.traceback)]


def own(traceback: tracemalloc.Traceback) -> bool:
    """Whether the profiler itself made this allocation. Asked per grouped stack (a few
    hundred), not per trace: ``Snapshot.filter_traces`` matched every frame of every trace
    with fnmatch, all of it traced too, and took 2.5-10 s in a small process."""
    for frame in traceback:
        known = _own_by_file.get(frame.filename)
        if known is None:
            if len(_own_by_file) >= _MAX_FILES_KNOWN:
                _own_by_file.clear()
            known = any(fnmatch.fnmatch(frame.filename, pattern) for pattern in _OWN_FILES)
            _own_by_file[frame.filename] = known
        if known:
            return True
    return False


def heap_profile(builder: ProfileBuilder, current: tracemalloc.Snapshot,
                 earlier: tracemalloc.Snapshot | None = None) -> ProfileBuilder:
    """Samples per allocation stack: live now, or the change since ``earlier``."""
    if earlier is None:
        for stat in statistics(current):
            builder.add(_stack(builder, stat.traceback), [stat.count, stat.size])
    else:
        for diff in current.compare_to(earlier, "traceback"):
            if (diff.count_diff or diff.size_diff) and not own(diff.traceback):
                builder.add(_stack(builder, diff.traceback), [diff.count_diff, diff.size_diff])
    return builder


def new_builder() -> ProfileBuilder:
    # Every allocation is recorded (no sampling), hence a period of one byte.
    return ProfileBuilder(SAMPLE_TYPES, ("space", "bytes"), 1, default_sample_type="inuse_space")


def _stack(builder: ProfileBuilder, traceback: tracemalloc.Traceback) -> tuple[int, ...]:
    # tracemalloc lists the oldest frame first; pprof wants the allocation site first.
    return tuple(builder.line_location(frame.filename, frame.lineno)
                 for frame in reversed(traceback))


def debug_text(builder: ProfileBuilder) -> str:
    """Go's ``heap?debug=1`` legacy text, biggest in-use first, plus tracemalloc totals."""
    records = sorted(builder.samples.items(), key=lambda item: -item[1][1])
    objects = sum(values[0] for _, values in records)
    size = sum(values[1] for _, values in records)
    lines = [f"heap profile: {objects}: {size} [{objects}: {size}] @ heap/2"]
    for (stack, _), (count, nbytes) in records:
        locations = [builder.locations[i - 1] for i in stack]
        lines.append(f"{count}: {nbytes} [{count}: {nbytes}] {text.stack_key(locations)}")
        lines.extend(text.stack_record(locations))
    current, peak = tracemalloc.get_traced_memory()
    lines += ["", "# tracemalloc (it keeps no freed allocations: [alloc] figures equal in-use)",
              f"# TracedMemory = {current}", f"# PeakTracedMemory = {peak}",
              f"# TracemallocOverhead = {tracemalloc.get_tracemalloc_memory()}",
              f"# TracebackLimit = {tracemalloc.get_traceback_limit()}", ""]
    return text.tabwrite(lines)
