"""The in-process sampler's own machinery: stacks walked only where they changed, and the
CPU budget that spaces ticks out when they cost more than it allows."""

from __future__ import annotations

import sys
import threading
import time

import pytest

import labotel
from labotel.profile import cpu
from tests.unit.test_pprof_support import (
    comments,
    decode,
    get,
    hot_spin,
    running,
    start,
    top_function,
    wait_for_profile,
    wait_for_thread,
)


class StackChecker:
    """Compares the sampler's incremental walk with a full walk, call after call."""

    def __init__(self):
        self.sampler = cpu.Sampler(cpu.WALL, 100, lambda: None)
        self.state = cpu._ThreadState("test", None, None, 0)
        self.checked = 0

    def check(self) -> None:
        frame = sys._getframe(1)
        incremental = self.sampler._stack(self.state, frame)
        assert incremental == self.sampler.builder.frame_stack(frame)
        self.checked += 1


def test_incremental_stacks_are_the_full_walks_through_calls_returns_and_generators():
    checker = StackChecker()
    check = checker.check

    def recurse(depth: int) -> None:
        check()
        if depth:
            recurse(depth - 1)  # deeper, then back: the held frames are reused
            check()
            recurse(depth // 2)  # a second branch from the same frame, another line
        check()

    def generator():
        while True:
            check()  # the same generator frame, resumed from different callers
            yield

    resumed = generator()

    def first_caller():
        next(resumed)
        check()

    def second_caller():
        first_caller()
        next(resumed)
        check()

    def via_one():
        next(resumed)

    def via_another():
        next(resumed)

    recurse(6)
    second_caller()
    first_caller()
    via_one()
    via_another()  # nothing walked in between: the held generator frame had another caller
    for _ in range(3):
        recurse(2)  # the same frames' positions, fresh frame objects each time
    assert checker.checked > 100


def test_stacks_deeper_than_the_limit_keep_their_innermost_frames():
    checker = StackChecker()
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 2000))

    def dive(depth: int) -> None:
        if depth:
            dive(depth - 1)
            if depth % 50 == 0:
                checker.check()
        else:
            checker.check()

    dive(400)
    dive(300)
    assert len(checker.state.stack) <= 256
    assert checker.checked == 16


def squares(count: int) -> int:
    return sum(i * i for i in range(count))


def deep_spin(stop: threading.Event, depth: int = 40) -> None:
    if depth:
        deep_spin(stop, depth - 1)
    else:
        # Calls at the top, so each tick finds a new innermost frame and walks the changed
        # frames (a tight loop is found at the same instruction each time: a GIL switch
        # point, and an unchanged stack is not walked at all).
        while not stop.is_set():
            squares(2_000)


def test_a_thread_not_charged_holds_no_frames():
    sampler = cpu.Sampler(cpu.CPU, 100, lambda: None)
    held_by_spinner = False
    asleep = threading.Event()
    # not the main thread: this loop's own CPU adds up to a charged period now and then
    sleeper = threading.Thread(target=asleep.wait, name="sleeper")
    sleeper.start()
    with running(deep_spin, name="spinner") as threads:
        sampler.start()
        try:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not held_by_spinner:
                time.sleep(0.02)
                spinner = sampler._threads.get(threads[0].ident)
                # charged at a tick, and deep: its frames are held for the next walk
                held_by_spinner = spinner is not None and len(spinner.frames) > 40
                blocked = sampler._threads[sleeper.ident]
                assert not blocked.frames and blocked.top is None  # blocked: holds nothing
        finally:
            sampler.stop()
            asleep.set()
            sleeper.join()
    assert held_by_spinner
    assert not sampler._threads  # and nothing at all once stopped


def test_shallow_stacks_are_walked_whole_and_deep_ones_incrementally():
    checker = StackChecker()
    held: list[int] = []

    def at_depth(depth: int) -> None:
        if depth:
            at_depth(depth - 1)
        else:
            checker.check()
            held.append(len(checker.state.frames))

    def walks() -> None:  # on a thread of its own: pytest's stack is deep already
        at_depth(5)
        at_depth(cpu._HOLD_DEPTH + 5)
        at_depth(cpu._HOLD_DEPTH + 8)
        at_depth(5)

    thread = threading.Thread(target=walks)
    thread.start()
    thread.join()
    assert checker.checked == 4
    # Shallow: nothing held. The first deep walk is whole too (the last stack was shallow),
    # the next holds its frames for the walk after; shallow again: let go.
    assert held[0] == held[1] == 0 and held[2] > cpu._HOLD_DEPTH and held[3] == 0


def test_a_sampler_over_its_budget_samples_less_often_and_says_so():
    budget = 0.002  # a tick costs 30-100 us here, so 100 Hz would need 0.3-1%
    monitor = start(profile_backend="in-process", profile_cpu_budget=budget)
    try:
        with running(hot_spin, name="spinner") as threads:
            spinner_clock = cpu.thread_cpu_clock(threads[0])
            replies: list = []
            request = threading.Thread(target=lambda: replies.append(
                get(monitor.admin_url + "/debug/pprof/profile?seconds=6")))
            spun = time.clock_gettime(spinner_clock)
            request.start()
            wait_for_profile()
            wait_for_thread("labotel-cpu-profiler")
            (sampler,) = [t for t in threading.enumerate() if t.name == "labotel-cpu-profiler"]
            clock = cpu.thread_cpu_clock(sampler)
            # past the sampler's start-up, and long enough that the bucket's one second of
            # savings and one slow tick (0.2-0.7 ms under load) are small beside the budget
            time.sleep(0.5)
            used, since = time.clock_gettime(clock), time.monotonic()
            time.sleep(5)
            used, elapsed = time.clock_gettime(clock) - used, time.monotonic() - since
            request.join(15)
            spun = time.clock_gettime(spinner_clock) - spun
    finally:
        labotel.shutdown()
    # The token bucket: at most the budget, plus one second's allowance, plus one tick.
    assert used / elapsed < 2 * budget, used / elapsed
    profile = decode(replies[0].body)
    assert profile.period > 15_000_000  # slowed from 100 Hz, and the period says so
    (comment,) = comments(profile)
    assert "in-process sampler at 100 Hz" in comment and "slowed to" in comment
    assert top_function(profile) == f"{hot_spin.__module__}.hot_spin"
    spinner = [s for s in profile.sample
               if profile.string_table[s.label[0].str] == "spinner-0"]
    charged = sum(s.value[1] for s in spinner) / 1e9
    # Fewer, heavier samples; the CPU time is still the spinner's (its clock ran a little
    # longer than the profile; the last charge is rounded to 10 ms).
    assert 0.5 * spun < charged < spun + 0.005, (charged, spun)
    samples = sum(s.value[0] for s in profile.sample)
    total = sum(s.value[1] for s in profile.sample)
    assert abs(total / samples - profile.period) <= 1  # the period is the mean one


def test_reading_every_threads_clock_at_start_and_stop_counts_as_the_samplers_cpu():
    """With thousands of threads, start() and the last tick read a clock per thread on
    the requesting thread (16-35 ms with 5000): the profile's own CPU includes them."""
    release = threading.Event()
    size = threading.stack_size(256 * 1024)
    try:
        crowd = [threading.Thread(target=release.wait, daemon=True) for _ in range(1000)]
        for thread in crowd:
            thread.start()
    finally:
        threading.stack_size(size)
    try:
        sampler = cpu.Sampler(cpu.CPU, 100, lambda: None)
        began = time.thread_time_ns()
        sampler.start()
        sampler.stop()  # before its first tick, most likely: then the caller's work is all
        spent_here = time.thread_time_ns() - began
    finally:
        release.set()
    assert sampler.own_cpu_ns >= 0.5 * spent_here > 0, (sampler.own_cpu_ns, spent_here)


@pytest.mark.parametrize("budget", [0.0, -1, "lots"])
def test_a_bad_budget_is_refused_naming_the_option(budget):
    with pytest.raises(ValueError, match="profile_cpu_budget"):
        labotel.start(admin_address="", profile_cpu_budget=budget)
