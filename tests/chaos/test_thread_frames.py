"""Reading other threads' frames never deadlocks or crashes the process. On CPython 3.11
a collection can start inside the read (making a frame object): one that frees a
``threading.local`` takes the lock ``sys._current_frames()`` holds (deadlock), and one
that runs finalizers lets the frame's own thread return from it while the read still
points into it (segmentation fault, walking ``f_back``). labotel reads them in the
thread-leak sampler, the goroutine and task views, the loop watchdog, the loop finder and
the profilers, on the application's process, whatever garbage the application makes."""

from __future__ import annotations

import itertools
import subprocess
import sys
import textwrap

import pytest

PROGRAM = textwrap.dedent("""
    import faulthandler, gc, threading
    from labotel.runtime.thread_frames import current_frames

    faulthandler.dump_traceback_later(20, exit=True)

    class Holder:  # application garbage: a thread-local in a reference cycle
        def __init__(self):
            self.local = threading.local()
            self.local.value = 1
            self.me = self

    stop = False

    def inner(n):
        return n + 1

    def spin():  # threads whose frames change, so frame objects are made on each read
        n = 0
        while not stop:
            n = inner(n)

    threads = [threading.Thread(target=spin, daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    threshold = gc.get_threshold()
    for _ in range(2000):
        gc.set_threshold(100_000)
        Holder()
        gc.set_threshold(1)  # the next allocation collects: inside the frames read
        current_frames()
    gc.set_threshold(*threshold)
    stop = True
    print("no deadlock")
""")


def test_reading_every_threads_frame_survives_thread_local_garbage():
    # with `sys._current_frames()` in place of `current_frames()` (and `import sys`), this
    # program hangs on CPython 3.11.7 at once
    result = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and "no deadlock" in result.stdout, result.stderr[-3000:]


def test_no_collection_can_start_while_the_frames_are_read(monkeypatch):
    """The mechanism: on 3.11 the first GC threshold is out of reach during the read, and
    is back as it was right after (the same program hangs with a bare
    sys._current_frames() there, whichever allocation comes first)."""
    import gc

    from labotel.runtime import thread_frames

    seen = []

    def read_frames():
        seen.append(gc.get_threshold())
        return {}

    monkeypatch.setattr(sys, "_current_frames", read_frames)
    before = gc.get_threshold()
    assert thread_frames.current_frames() == {}
    assert gc.get_threshold() == before
    if sys.version_info[:2] == (3, 11):
        assert seen == [(1 << 30, *before[1:])]
    else:
        assert seen == [before]


CHURN = textwrap.dedent("""
    import faulthandler, sys, threading, time
    faulthandler.enable()
    sys.setswitchinterval(1e-5)  # the GIL changes hands as often as it can

    class Finalized:  # application garbage whose collection runs Python code
        def __init__(self):
            self.me = self

        def __del__(self):
            total = 0
            for i in range(50):
                total += i

    def deep(n):  # past one 16 KiB stack chunk, so returning frees it
        if n:
            return deep(n - 1)
        Finalized()
        Finalized()
        return 0

    stop = False

    def churn():
        while not stop:
            deep(300)

    def readers():
        \"\"\"labotel's reads of other threads' frames, each on its own.\"\"\"
        import asyncio
        from labotel.detect import loop_blocked, threads as thread_leaks
        from labotel.profile import cpu, stacks
        from labotel.runtime import aio, loops
        from labotel.runtime import threads as thread_views
        from labotel.runtime.thread_frames import current_frames, stack
        from labotel.testing import leaks

        loop = asyncio.new_event_loop()

        async def nested(n):
            if n:
                return await nested(n - 1)
            while not stop:
                deep(100)
                await asyncio.sleep(0)

        threading.Thread(target=loop.run_until_complete, args=(nested(20),),
                         daemon=True).start()
        builder = cpu.new_builder("wall", 10_000_000)

        def each_frame(read):
            return lambda: [read(f) for f in current_frames().values()]

        return {
            "loops": loops._find_running_loops,
            "thread view": lambda: thread_views.thread_view(stacks=True),
            "task view": lambda: aio.task_view(stacks=True),
            "goroutines": lambda: stacks.collect(stacks.new_builder("goroutine")),
            "thread leak stack": each_frame(thread_leaks.thread_stack),
            "watchdog stack": each_frame(lambda f: loop_blocked._stack(stack(f))),  # as _take
            "watchdog callback": each_frame(loop_blocked._running_callback),
            "profile stack": each_frame(builder.frame_stack),
            "test leak stack": each_frame(leaks._thread_stack),
        }

    workers = [threading.Thread(target=churn) for _ in range(3)]
    for worker in workers:
        worker.start()
    sampler = None
    if sys.argv[1] == "profiler":
        from labotel.profile import cpu
        sampler = cpu.Sampler("wall", 1000, lambda: None, cpu_budget=1.0)
        sampler.start()
        time.sleep(float(sys.argv[2]))
        sampler.stop()
        reads = sampler.ticks
    else:
        read = readers()[sys.argv[1]]
        end = time.monotonic() + float(sys.argv[2])
        reads = 0
        while time.monotonic() < end:
            read()
            reads += 1
    stop = True
    for worker in workers:
        worker.join()
    print("reads", reads)
""")

READERS = ["loops", "thread view", "task view", "goroutines", "thread leak stack",
           "watchdog stack", "watchdog callback", "profile stack", "test leak stack",
           "profiler"]


@pytest.mark.parametrize("reader", READERS)
def test_reading_stacks_while_their_threads_return_does_not_crash(reader):
    # on CPython 3.11.7, a bare f_back walk in this program (the loop finder's, before the
    # fix) ends in a segmentation fault within seconds, 3 runs of 3; 3.10, 3.12 and 3.13
    # never crash, so there this checks only that each reader keeps working
    result = subprocess.run([sys.executable, "-c", CHURN, reader, "3"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    reads = int(result.stdout.split()[-1])
    assert reads > 10, result.stdout


def _python_walk(frame):
    frames = []
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back
    return frames


def test_outward_reads_the_same_frames_as_f_back_in_steps_and_up_to_a_limit():
    from labotel.runtime.thread_frames import CHUNKS, outward

    def deep(n):
        return deep(n - 1) if n else sys._getframe()

    innermost = deep(sum(CHUNKS) + CHUNKS[-1] + 5)  # past every step size on 3.11
    expected = _python_walk(innermost)
    assert list(outward(innermost)) == expected
    bounds = itertools.accumulate(CHUNKS + (CHUNKS[-1],))
    for limit in {0, 1, len(expected), *(b + d for b in bounds for d in (-1, 0, 1))}:
        assert list(outward(innermost, limit)) == expected[:limit], limit
    assert list(outward(None)) == []


def test_held_off_puts_the_first_threshold_out_of_reach_only_during_the_call():
    import gc

    from labotel.runtime.thread_frames import attribute, held_off

    before = gc.get_threshold()
    inside = held_off(gc.get_threshold)  # a C function reading the threshold in the call
    assert gc.get_threshold() == before
    if sys.version_info[:2] == (3, 11):
        assert inside == (1 << 30, *before[1:])
    else:
        assert inside == before
    try:
        gc.set_threshold(0)  # an application that turned collection off keeps it off
        assert held_off(gc.get_threshold)[0] == (1 << 30 if sys.version_info[:2] == (3, 11)
                                                   else 0)
        assert gc.get_threshold()[0] == 0
    finally:
        gc.set_threshold(*before)
    with pytest.raises(ZeroDivisionError):  # a failing call still puts it back
        held_off(lambda: 1 / 0)
    assert gc.get_threshold() == before

    def local_frame():
        marker = "here"  # noqa: F841 (read through f_locals)
        return sys._getframe()

    assert attribute(local_frame(), "f_locals")["marker"] == "here"
    assert attribute(object(), "f_locals") is None


def test_a_coroutines_frame_is_read_while_it_runs_and_none_once_finished():
    import asyncio

    from labotel.runtime.aio import frame_of

    seen = []

    async def running():
        seen.append(frame_of(coroutine))
        return sys._getframe()

    coroutine = running()
    own_frame = asyncio.run(coroutine)
    assert seen == [own_frame]
    assert frame_of(coroutine) is None
