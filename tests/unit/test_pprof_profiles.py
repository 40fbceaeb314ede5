"""What the profiles say: CPU goes to the busy function, heap to the allocating one,
goroutine dumps show blocked threads and suspended asyncio tasks where they wait."""

import asyncio
import gc
import os
import sys
import threading
import time
import tracemalloc

import pytest

import labotel
from tests.unit.test_leaks_memory import source_line
from tests.unit.test_pprof_support import (
    BACKENDS,
    allocate_blocks,
    blocked_in_known_function,
    comments,
    decode,
    function_names,
    get,
    hot_spin,
    label_values,
    location_functions,
    running,
    sample_types,
    start,
    top_function,
    wait_for_profile,
)

SPIN = f"{hot_spin.__module__}.hot_spin"
BLOCKED = f"{blocked_in_known_function.__module__}.blocked_in_known_function"
ALLOCATE = f"{allocate_blocks.__module__}.allocate_blocks"


@pytest.fixture
def url():
    monitor = start(profile_rate_hz=100, profile_backend="in-process")
    yield monitor.admin_url + "/debug/pprof/"
    labotel.shutdown()


@pytest.fixture(params=BACKENDS)
def sampled_url(request):
    """Each backend in turn; the in-process sampler without a budget to keep, so its
    profile has Go's exact period (the budget has its own tests)."""
    monitor = start(profile_rate_hz=100, profile_backend=request.param, profile_cpu_budget=1.0)
    yield monitor.admin_url + "/debug/pprof/"
    labotel.shutdown()


def labelled_threads(profile, function: str) -> set[str]:
    return label_values(profile, function, "thread")


def labelled_names(profile, function: str) -> set[str]:
    return label_values(profile, function, "name")


def thread_total(profile, thread: str, value_index: int = 1) -> int:
    return sum(s.value[value_index] for s in profile.sample
               if any(profile.string_table[lb.str] == thread for lb in s.label))


def test_cpu_profile_charges_the_busy_thread_and_not_the_blocked_one(sampled_url):
    url = sampled_url
    with running(hot_spin, name="spinner"), running(blocked_in_known_function, name="idle"):
        profile = decode(get(url + "profile?seconds=2").body)
    assert sample_types(profile) == [("samples", "count"), ("cpu", "nanoseconds")]
    assert profile.period == 10_000_000 and profile.duration_nanos >= 1_900_000_000
    assert top_function(profile) == SPIN
    assert labelled_threads(profile, SPIN) == {"spinner-0"}
    assert BLOCKED not in function_names(profile)  # blocked: no CPU, no samples
    assert all(s.value[1] == s.value[0] * profile.period for s in profile.sample)
    # One spinning thread on a shared box: a good part of 2 s, never more than the wall time.
    # py-spy (from its start to its exit) samples at random intervals of 10 ms on average
    # (against aliasing), so its count of about 200 varies like a Poisson count, by ~7%.
    limit = profile.duration_nanos * (1.3 if "py-spy" in comments(profile)[0] else 1.0)
    assert 0.2e9 < thread_total(profile, "spinner-0") <= limit + profile.period


def test_cpu_profile_puts_cpu_on_the_hot_lines(sampled_url):
    with running(two_hot_lines, name="spinner"):
        profile = decode(get(sampled_url + "profile?seconds=2").body)
    by_line: dict[int, int] = {}
    lines = {loc.id: loc.line[0].line for loc in profile.location}
    functions = location_functions(profile)
    for sample in profile.sample:
        if functions[sample.location_id[0]] == f"{__name__}.two_hot_lines":
            line = lines[sample.location_id[0]]
            by_line[line] = by_line.get(line, 0) + sample.value[1]
    first = two_hot_lines.__code__.co_firstlineno
    heavy, light = first + 4, first + 5  # the loop body below: ten times the work, and once
    assert by_line.get(heavy, 0) > 3 * by_line.get(light, 0) > 0, by_line
    assert sum(by_line.values()) > 0.8 * thread_total(profile, "spinner-0")


def two_hot_lines(stop: threading.Event) -> None:
    total = 0
    while not stop.is_set():
        for _ in range(2_000):
            total += sum(range(300))
            total += sum(range(30))


def test_wall_profile_includes_blocked_threads(sampled_url):
    url = sampled_url
    with running(blocked_in_known_function, name="idle", count=2):
        profile = decode(get(url + "wall?seconds=1").body)
    assert sample_types(profile) == [("samples", "count"), ("wall", "nanoseconds")]
    assert labelled_threads(profile, BLOCKED) == {"idle-0", "idle-1"}
    per_thread = sum(s.value[1] for s in profile.sample
                     if any(profile.string_table[lb.str] == "idle-0" for lb in s.label))
    # about one second of wall time per thread; py-spy's samples are lost, not stretched,
    # when the machine is busy (exactly 0.8 s with two suites running on 2 cores)
    assert 0.7e9 < per_thread < 1.5e9


def test_heap_without_tracing_explains_how_to_enable_it(url):
    assert not tracemalloc.is_tracing()
    reply = get(url + "heap")
    assert reply.status == 400 and reply.headers["X-Go-Pprof"] == "1"
    assert "LABOTEL_HEAP_PROFILING=1" in reply.text and "heap_profiling=True" in reply.text
    assert "?seconds=" in reply.text
    assert not tracemalloc.is_tracing()


def test_heap_window_traces_then_stops_and_names_the_allocator(url):
    keep: list = []
    done = threading.Event()

    def allocate_during_window():
        gate.wait()
        allocate_blocks(keep)
        done.set()

    gate = threading.Event()
    worker = threading.Thread(target=allocate_during_window)
    worker.start()
    replies: list = []
    request = threading.Thread(target=lambda: replies.append(get(url + "heap?seconds=2")))
    request.start()
    deadline = time.monotonic() + 10
    while not tracemalloc.is_tracing() and time.monotonic() < deadline:
        time.sleep(0.001)
    gate.set()
    request.join(10)
    worker.join(5)
    reply = replies[0]
    assert reply.status == 200 and done.is_set()
    assert reply.headers["Content-Disposition"] == 'attachment; filename="heap-delta"'
    assert not tracemalloc.is_tracing()  # started for the window, stopped after it
    profile = decode(reply.body)
    assert sample_types(profile) == [("inuse_objects", "count"), ("inuse_space", "bytes")]
    assert profile.string_table[profile.default_sample_type] == "inuse_space"
    assert top_function(profile) == ALLOCATE
    ours = sum(s.value[1] for s in profile.sample)
    assert ours >= 2000 * 1024


def test_heap_profiling_option_traces_from_start_and_gc_param_collects():
    monitor = start(heap_profiling=True, heap_profile_frames=8)
    try:
        assert tracemalloc.is_tracing() and tracemalloc.get_traceback_limit() == 8
        keep: list = []
        allocate_blocks(keep, 500)
        url = monitor.admin_url + "/debug/pprof/heap"
        reply = get(url)
        assert reply.headers["Content-Disposition"] == 'attachment; filename="heap"'
        assert ALLOCATE in function_names(decode(reply.body))
        # what the first request kept (names read per file) is the profiler's, not the app's
        names = function_names(decode(get(url).body))
        assert ALLOCATE in names
        assert not [n for n in names if n.startswith(("labotel.profile.", "tracemalloc."))]
        text = get(url + "?debug=1").text
        assert text.startswith("heap profile: ") and "@ heap/2" in text
        assert f"\t{ALLOCATE}+0x0\t" in text and "# TracedMemory = " in text
        gc.disable()
        try:
            make_cyclic_garbage()
            assert "make_cyclic_garbage" in get(url + "?debug=1").text
            assert "make_cyclic_garbage" not in get(url + "?debug=1&gc=1").text
        finally:
            gc.enable()
    finally:
        labotel.shutdown()
    assert not tracemalloc.is_tracing()  # the lease labotel took is returned


def make_cyclic_garbage():
    for _ in range(200):
        node = {"payload": bytearray(512)}
        node["self"] = node


def test_heap_window_leaves_an_application_tracer_running(url):
    tracemalloc.start()
    try:
        assert get(url + "heap?seconds=1").status == 200
        assert tracemalloc.is_tracing()
    finally:
        tracemalloc.stop()


def test_goroutine_profile_has_blocked_threads_folded_and_dumped(url):
    with running(blocked_in_known_function, name="waiter", count=3):
        profile = decode(get(url + "goroutine").body)
        folded = get(url + "goroutine?debug=1").text
        dump = get(url + "goroutine?debug=2").text
    assert sample_types(profile) == [("goroutine", "count")]
    assert labelled_names(profile, BLOCKED) == {"waiter-0", "waiter-1", "waiter-2"}
    assert folded.startswith("goroutine profile: total ")
    records = folded.split("\n", 1)[1].split("\n\n")  # after the header line
    record = next(block for block in records if BLOCKED in block)
    assert record.startswith("3 @ 0x")  # three identical stacks folded into one record
    assert '# labels: {"kind":"thread"}' in record
    assert f"\t{BLOCKED}+0x" in record and __file__.replace("profiles", "support") in record
    block = next(b for b in dump.split("\n\n") if 'thread "waiter-1"' in b)
    header, *lines = block.splitlines()
    assert header.startswith("goroutine ") and header.endswith("]:")
    assert "[sleeping, " in header and ", daemon]" in header  # the kernel's thread state
    assert f"{BLOCKED}(...)" in lines
    assert lines[-2].startswith("created by tests.unit.test_pprof_support.running")


async def inner_sleeper():
    await asyncio.sleep(30)


async def outer_waiter():
    await inner_sleeper()


def test_goroutine_dump_walks_suspended_task_coroutine_chains(url):
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def serve():
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True, name="loop-thread")
    thread.start()
    ready.wait(5)
    task = asyncio.run_coroutine_threadsafe(_spawn(loop), loop).result(5)
    try:
        dump = get(url + "goroutine?debug=2").text
        profile = decode(get(url + "goroutine").body)
    finally:
        loop.call_soon_threadsafe(task.cancel)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
    block = next(b for b in dump.split("\n\n") if 'task "sleepy"' in b)
    header, *lines = block.splitlines()
    assert "[awaiting Future, task \"sleepy\"]:" in header
    functions = [line for line in lines if line.endswith("(...)")]
    assert functions == ["asyncio.tasks.sleep(...)", f"{__name__}.inner_sleeper(...)",
                         f"{__name__}.outer_waiter(...)"]  # innermost first
    assert lines[-2] == f"created by {__name__}._spawn"
    assert labelled_names(profile, f"{__name__}.inner_sleeper") == {"sleepy"}


async def _spawn(loop):
    await asyncio.sleep(0.05)  # let labotel notice the loop and wrap its task factory
    task = loop.create_task(outer_waiter(), name="sleepy")
    await asyncio.sleep(0.05)
    return task


def spawn_from_known_site(release: threading.Event) -> threading.Thread:
    thread = threading.Thread(target=release.wait, name="spawned", daemon=True)
    thread.start()
    return thread


def test_threadcreate_names_where_threads_were_started(url):
    release = threading.Event()
    thread = spawn_from_known_site(release)
    try:
        profile = decode(get(url + "threadcreate").body)
        text = get(url + "threadcreate?debug=1").text
    finally:
        release.set()
        thread.join(5)
    assert sample_types(profile) == [("threadcreate", "count")]
    assert labelled_names(profile, f"{__name__}.spawn_from_known_site") == {"spawned"}
    assert text.startswith("threadcreate profile: total ")
    assert "(main thread)" in text


def test_goroutine_delta_counts_threads_started_during_the_window(url):
    release = threading.Event()
    started: list = []

    def start_two_later():
        release.wait(0.3)
        started.extend(spawn_from_known_site(release) for _ in range(2))

    helper = threading.Thread(target=start_two_later)
    helper.start()
    try:
        reply = get(url + "goroutine?seconds=1")
    finally:
        release.set()
        helper.join(5)
        for thread in started:
            thread.join(5)
    assert reply.headers["Content-Disposition"] == 'attachment; filename="goroutine-delta"'
    profile = decode(reply.body)
    functions = location_functions(profile)
    gained = [s for s in profile.sample
              if functions[s.location_id[-1]] == "threading.Thread._bootstrap"
              and any(profile.string_table[lb.str] == "spawned" for lb in s.label)]
    assert sum(s.value[0] for s in gained) == 2
    assert profile.duration_nanos >= 1_000_000_000


def burn_cpu(seconds: float, used: dict, name: str, lived: dict | None = None) -> None:
    """Spin until this thread has used ``seconds`` of its own CPU, then exit."""
    start, born = time.thread_time(), time.monotonic()
    while time.thread_time() - start < seconds:
        sum(range(1000))
    used[name] = time.thread_time()
    if lived is not None:
        lived[name] = time.monotonic() - born


def test_cpu_samples_match_each_short_lived_threads_own_cpu_clock(sampled_url):
    url = sampled_url
    used: dict = {}
    replies: list = []
    request = threading.Thread(target=lambda: replies.append(get(url + "profile?seconds=2")))
    request.start()
    backend = wait_for_profile().backend
    lived: dict = {}
    burners = [threading.Thread(target=burn_cpu, args=(0.25, used, f"burner-{i}", lived),
                                name=f"burner-{i}") for i in range(2)]
    for thread in burners:  # born during the profile, gone before it ends
        thread.start()
    for thread in burners:
        thread.join()
    request.join(10)
    profile = decode(replies[0].body)
    per_thread: dict = {}
    for sample in profile.sample:
        (name,) = [profile.string_table[lb.str] for lb in sample.label]
        per_thread[name] = per_thread.get(name, 0) + sample.value[1] / 1e9
    for name, seconds in used.items():
        # Ground truth: the thread's own CPU clock. The in-process sampler can only miss
        # the part used after its last tick before the thread exited. py-spy counts the
        # samples at which the thread held the GIL: about its CPU on a quiet machine, but
        # a thread holding the GIL while it waits for a core (a busy box) counts as well,
        # so its bound is the thread's lifetime, with room for py-spy's random intervals.
        low, high = (seconds - 0.08, seconds + 0.01) if backend == "in-process" else (
            seconds * 0.5, lived[name] * 1.3 + 0.02)
        assert low <= per_thread.get(name, 0) <= high, (name, per_thread, lived)


def test_a_dump_taken_while_a_uvloop_task_blocks_shows_the_blocking_line(url):
    """uvloop keeps its loop's thread in C: the registry's record of it gives the running
    task its live frames (before, only its outermost coroutine frame)."""
    uvloop = pytest.importorskip("uvloop")

    async def blocking_handler():
        await asyncio.sleep(0.05)  # let labotel notice the loop and wrap its task factory
        return get(url + "goroutine?debug=2").text  # BLOCKS THE LOOP

    async def main():
        return await asyncio.create_task(blocking_handler(), name="handler")

    dump = uvloop.run(main())
    block = next(b for b in dump.split("\n\n") if 'task "handler"' in b)
    header, *lines = block.splitlines()
    assert header.endswith('[running, task "handler"]:'), block
    functions = [line for line in lines if line.endswith("(...)")]
    # innermost first: the call it blocks in, down to the task's coroutine, nothing of uvloop
    assert functions[-2:] == ["tests.unit.test_pprof_support.get(...)",
                              f"{__name__}.{blocking_handler.__qualname__}(...)"], block
    assert f"{source_line('# BLOCKS THE LOOP', __file__)} " in block, block


def test_a_running_task_is_read_from_its_threads_live_frames():
    from labotel.profile import stacks

    async def leaf():
        return stacks.task_frames(asyncio.current_task(), sys._getframe())

    async def root():
        return await leaf()

    frames = asyncio.run(root())
    assert [f.f_code.co_name for f in frames] == ["leaf", "root"]  # nothing of the loop


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_can_profile_while_the_parent_is_profiling(url):
    monitor = labotel.monitor.current()
    replies: list = []
    request = threading.Thread(target=lambda: replies.append(get(url + "profile?seconds=1")))
    request.start()
    wait_for_profile()
    pid = os.fork()
    if pid == 0:  # the child: the parent's sampler and request did not come along
        code = 1
        try:
            slot = monitor.component("profile").cpu
            sampler = slot.begin(100, lambda: None)
            slot.end(sampler)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    request.join(10)
    assert os.waitstatus_to_exitcode(status) == 0
    assert replies[0].status == 200


def test_gc_param_collects_even_while_another_threads_collection_is_under_way():
    """``gc.collect()`` does nothing while another thread's collection runs (here held
    open by a slow ``gc.callbacks`` entry, as any Python callback can let other threads
    in): the ``?gc=1`` profile kept the garbage (seen once in CI on 3.12). The route now
    collects again once that collection is over."""
    from labotel.profile import heap

    inside, release = threading.Event(), threading.Event()
    collector_thread: list = []

    def slow_callback(phase: str, info: dict) -> None:
        if phase == "start" and threading.current_thread() in collector_thread:
            inside.set()
            release.wait(5)  # the collection stays under way meanwhile

    def collect_elsewhere() -> None:
        gc.collect()

    gc.disable()
    gc.callbacks.append(slow_callback)
    try:
        tracemalloc.start(8)
        try:
            make_cyclic_garbage()
            other = threading.Thread(target=collect_elsewhere)
            collector_thread.append(other)
            other.start()
            assert inside.wait(5)
            threading.Timer(0.05, release.set).start()  # that collection ends a bit later
            snapshot = heap.snapshot(collect=True)
            other.join(5)
            assert not [trace for trace in snapshot.traces
                        if any(frame.filename == __file__
                               and frame.lineno in _CYCLIC_GARBAGE_LINES
                               for frame in trace.traceback)]
        finally:
            tracemalloc.stop()
    finally:
        gc.callbacks.remove(slow_callback)
        gc.enable()
        release.set()


_CYCLIC_GARBAGE_LINES = range(make_cyclic_garbage.__code__.co_firstlineno,
                              make_cyclic_garbage.__code__.co_firstlineno + 4)
