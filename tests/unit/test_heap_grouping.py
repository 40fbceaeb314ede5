"""The heap profile groups tracemalloc's traces per stack without an object per trace, and
the /debug/pprof/ index counts those stacks without stalling a big process."""

import re
import tracemalloc

import pytest

import labotel
from labotel.compat import cpython
from labotel.profile import heap
from tests.unit.test_pprof_support import allocate_blocks, decode, get, start


@pytest.fixture
def tracing():
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start(8)
    yield
    if not was_tracing:
        tracemalloc.stop()


def public_totals(snapshot: tracemalloc.Snapshot) -> dict:
    """What tracemalloc's own statistics say, in stack_totals' shape."""
    totals = {}
    for stat in snapshot.statistics("traceback"):
        frames = tuple((frame.filename, frame.lineno) for frame in reversed(stat.traceback))
        if not heap.own(frames):
            totals[frames] = (stat.count, stat.size)
    return totals


def test_stack_totals_match_tracemallocs_own_statistics(tracing):
    keep: list = []
    allocate_blocks(keep, 300)
    keep.extend([i] for i in range(1000))
    snapshot = tracemalloc.take_snapshot()
    totals = heap.stack_totals(snapshot)
    assert totals == public_totals(snapshot)
    code = allocate_blocks.__code__
    allocating = [frames for frames in totals
                  if frames[0] == (code.co_filename, code.co_firstlineno + 2)]
    assert allocating, "the allocation site comes first"
    count, size = totals[allocating[0]]
    assert count >= 300 and size >= 300 * 1024


def test_stack_totals_never_build_the_public_statistics(tracing, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("an object per trace: 17 us each while tracemalloc runs")

    snapshot = tracemalloc.take_snapshot()
    expected = public_totals(snapshot)
    monkeypatch.setattr(tracemalloc.Snapshot, "statistics", refuse)
    assert heap.stack_totals(snapshot) == expected


def test_without_the_raw_traces_the_public_statistics_give_the_same(tracing, monkeypatch):
    keep: list = []
    allocate_blocks(keep, 200)
    snapshot = tracemalloc.take_snapshot()
    fast = heap.stack_totals(snapshot)
    monkeypatch.setattr(cpython, "tracemalloc_traces", lambda snapshot: None)
    assert heap.stack_totals(snapshot) == fast


def named_samples(profile) -> list:
    """Each sample as (its stack's function names, allocation site first; its values)."""
    names = {f.id: profile.string_table[f.name] for f in profile.function}
    where = {loc.id: (names[loc.line[0].function_id], loc.line[0].line) for loc in profile.location}
    return sorted((tuple(where[i] for i in sample.location_id), list(sample.value))
                  for sample in profile.sample)


def test_a_delta_holds_what_tracemallocs_own_comparison_does(tracing):
    keep: list = [bytearray(64) for _ in range(100)]
    before = tracemalloc.take_snapshot()
    allocate_blocks(keep, 250)
    del keep[:50]
    after = tracemalloc.take_snapshot()
    ours = named_samples(decode(heap.heap_profile(heap.new_builder(), after, before).encode(0)))
    public = heap.new_builder()
    for diff in after.compare_to(before, "traceback"):
        frames = tuple((f.filename, f.lineno) for f in reversed(diff.traceback))
        if (diff.count_diff or diff.size_diff) and not heap.own(frames):
            public.add(heap._stack(public, frames), [diff.count_diff, diff.size_diff])
    assert ours == named_samples(decode(public.encode(0)))
    by_leaf = {stack[0][0]: values for stack, values in ours}
    assert by_leaf[f"{allocate_blocks.__module__}.allocate_blocks"][1] >= 250 * 1024
    assert any(values[0] < 0 for _, values in ours)  # the 50 bytearrays freed
    assert all(values != [0, 0] for _, values in ours)


def heap_count(page: str) -> str:
    return re.search(r"<tr><td>([^<]*)</td><td><a href='heap\?debug=1'>", page).group(1)


def test_the_index_counts_stacks_fresh_and_in_a_big_process_shows_the_last_profiles(
        monkeypatch):
    monitor = start(heap_profiling=True)
    try:
        index = monitor.admin_url + "/debug/pprof/"
        assert int(heap_count(get(index).text)) > 0
        monkeypatch.setattr(heap, "FRESH_COUNT_MAX_TRACEMALLOC_BYTES", 0)
        monkeypatch.setattr(heap, "_last_stack_count", None)
        assert heap_count(get(index).text) == "-"  # not counted: no profile taken yet
        profile = decode(get(index + "heap").body)
        assert heap_count(get(index).text) == str(len(profile.sample))
    finally:
        labotel.shutdown()


def test_the_capability_is_there_on_this_interpreter():
    from labotel import compat

    assert compat.probe()["cpython.tracemalloc_traces"].available
