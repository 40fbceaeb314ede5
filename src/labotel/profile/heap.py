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
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager

from labotel import fork_safe
from labotel.compat import cpython
from labotel.profile import text
from labotel.profile.pprof import ProfileBuilder

SAMPLE_TYPES = [("inuse_objects", "count"), ("inuse_space", "bytes")]
# Allocations made by the profiling request itself (snapshots, builders) are left out:
# a stack with a frame in one of these files.
_OWN_FILES = (tracemalloc.__file__, "*/labotel/profile/*")
_own_by_file: dict[str, bool] = {}
_MAX_FILES_KNOWN = 4096

# The index page counts the stacks of a fresh snapshot only while tracemalloc holds at most
# this much (about 300 000 traces at 50-60 bytes each; taking and grouping them holds the
# GIL ~0.2 s); above it, it shows the count of the last heap profile taken.
FRESH_COUNT_MAX_TRACEMALLOC_BYTES = 16 << 20
_last_stack_count: int | None = None

_lock = fork_safe.lock()
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
    global _leases, _started_here
    _leases = held
    if held == 0 and _started_here:
        _started_here = False
        tracemalloc.stop()


def snapshot(collect: bool) -> tracemalloc.Snapshot:
    """Every live trace; labotel's own are left out per stack, once grouped (see ``own``)."""
    if collect:
        collect_fully()
    return tracemalloc.take_snapshot()


COLLECT_WAIT = 1.0  # seconds ``collect_fully`` waits out another thread's collection


def collect_fully() -> None:
    """A full collection that really ran. ``gc.collect()`` does nothing while another
    thread's collection is under way (its ``gc.callbacks``, Python code, let this thread
    in): a ``?gc=1`` profile then kept the garbage. Tried again until the oldest
    generation's count of collections moves, for at most ``COLLECT_WAIT``."""
    deadline = time.monotonic() + COLLECT_WAIT
    while True:
        before = gc.get_stats()[-1]["collections"]
        gc.collect()
        if gc.get_stats()[-1]["collections"] != before or time.monotonic() > deadline:
            return
        time.sleep(0.001)  # let that collection end


Frames = tuple[tuple[str, int], ...]  # (filename, lineno), the allocation site first


def stack_totals(current: tracemalloc.Snapshot) -> dict[Frames, tuple[int, int]]:
    """Live blocks and bytes per allocation stack, labotel's own profiling left out.

    Grouped from the raw traces, allocating nothing per trace: ``Snapshot.statistics``
    builds objects for each one, and while tracemalloc runs every one of those
    allocations is traced as well (10.6 s for 600 000 traces, against 0.12 s here)."""
    raw = cpython.tracemalloc_traces(current)
    if raw is None:
        public = {_frames(stat.traceback): (stat.count, stat.size)
                  for stat in current.statistics("traceback")}
        return {frames: totals for frames, totals in public.items() if not own(frames)}
    sizes_by_stack: dict[Frames, list[int]] = {}
    get = sizes_by_stack.get
    for trace in raw:
        sizes = get(trace[2])
        if sizes is None:
            sizes = sizes_by_stack[trace[2]] = []
        sizes.append(trace[1])
    return {frames: (len(sizes), sum(sizes))
            for frames, sizes in sizes_by_stack.items() if not own(frames)}


def stack_count() -> int | None:
    """Allocation stacks in a heap profile now, for the index page; in a process with more
    traces than ``FRESH_COUNT_MAX_TRACEMALLOC_BYTES`` hold, the last profile's (None
    before the first)."""
    if tracemalloc.get_tracemalloc_memory() > FRESH_COUNT_MAX_TRACEMALLOC_BYTES:
        return _last_stack_count
    return len(stack_totals(snapshot(False)))


def own(frames: Frames) -> bool:
    """Whether the profiler itself made this allocation. Asked per grouped stack (a few
    hundred), not per trace: ``Snapshot.filter_traces`` matched every frame of every trace
    with fnmatch, all of it traced too, and took 2.5-10 s in a small process."""
    for filename, _ in frames:
        known = _own_by_file.get(filename)
        if known is None:
            if len(_own_by_file) >= _MAX_FILES_KNOWN:
                _own_by_file.clear()
            known = any(fnmatch.fnmatch(filename, pattern) for pattern in _OWN_FILES)
            _own_by_file[filename] = known
        if known:
            return True
    return False


def heap_profile(builder: ProfileBuilder, current: tracemalloc.Snapshot,
                 earlier: tracemalloc.Snapshot | None = None) -> ProfileBuilder:
    """Samples per allocation stack: live now, or the change since ``earlier``."""
    global _last_stack_count
    now = stack_totals(current)
    if earlier is None:
        _last_stack_count = len(now)
        for frames, (count, size) in now.items():
            builder.add(_stack(builder, frames), [count, size])
        return builder
    before = stack_totals(earlier)
    for frames in now.keys() | before.keys():
        count, size = now.get(frames, (0, 0))
        count_before, size_before = before.get(frames, (0, 0))
        if count != count_before or size != size_before:
            builder.add(_stack(builder, frames), [count - count_before, size - size_before])
    return builder


def new_builder() -> ProfileBuilder:
    # Every allocation is recorded (no sampling), hence a period of one byte.
    return ProfileBuilder(SAMPLE_TYPES, ("space", "bytes"), 1, default_sample_type="inuse_space")


def _stack(builder: ProfileBuilder, frames: Frames) -> tuple[int, ...]:
    return tuple(builder.line_location(filename, lineno) for filename, lineno in frames)


def _frames(traceback: tracemalloc.Traceback) -> Frames:
    # the public Traceback lists the oldest frame first; pprof wants the allocation site first
    return tuple((frame.filename, frame.lineno) for frame in reversed(traceback))


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
