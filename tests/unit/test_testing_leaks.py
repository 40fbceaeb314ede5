"""labotel.testing on real threads and real asyncio tasks (loops in this thread, in
background threads, stopped and closed ones)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import labotel
from labotel.testing import (
    Baseline,
    find_leaks,
    format_leaks,
    ignore_current,
    install,
    no_leaks,
    uninstall,
    verify_no_leaks,
)
from tests.unit.test_leaks_memory import source_line as line_in


def site(marker: str) -> str:
    return line_in(marker, __file__)


@pytest.fixture(autouse=True)
def hooks():
    install()
    yield
    uninstall()


@pytest.fixture
def release():
    """An Event every leaked member waits on; set (and members joined) after the test."""
    event = threading.Event()
    yield event
    event.set()
    deadline = time.monotonic() + 5
    for thread in threading.enumerate():
        if thread.name.startswith("leaky") and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))


def blocked(release: threading.Event) -> None:
    release.wait()  # BLOCKED


def start_blocked(release: threading.Event, name: str) -> threading.Thread:
    thread = threading.Thread(target=blocked, args=(release,), name=name, daemon=True)
    thread.start()  # STARTED BY HELPER
    return thread


@pytest.fixture
def background_loop():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="leaky-loop", daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop).result(5)
    yield loop
    for task in asyncio.run_coroutine_threadsafe(_all_tasks(), loop).result(5):
        loop.call_soon_threadsafe(task.cancel)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


async def _all_tasks():
    return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]


async def forever(event: asyncio.Event) -> None:
    await event.wait()  # TASK WAITS


def test_threads_are_grouped_by_the_line_that_started_them(release):
    before = ignore_current()
    for index in range(3):
        threading.Thread(target=blocked, args=(release,), name=f"leaky-{index}",
                         daemon=True).start()  # LOOP START
    start_blocked(release, "leaky-helper")
    groups = find_leaks(before)
    assert [(g.kind, g.site, g.count) for g in groups] == [
        ("thread", site("# LOOP START"), 3), ("thread", site("# STARTED BY HELPER"), 1)]
    group = groups[0]
    assert group.created_at[0][2] == "test_threads_are_grouped_by_the_line_that_started_them"
    assert group.stack[group.stack.index(next(f for f in group.stack if f[2] == "blocked"))][
        1] == int(site("# BLOCKED").rsplit(":", 1)[1])
    assert group.at_stack == 3 and sorted(group.names) == ["leaky-0", "leaky-1", "leaky-2"]
    assert group.created_by == f"{__name__}.test_threads_are_grouped_by_the_line_that_started_them"
    assert group.top == f"{__name__}.blocked"  # Event.wait's frames are passed over
    report = format_leaks(groups)
    assert report.startswith("4 leaked threads:")
    assert f"3 threads created at {site('# LOOP START')}" in report
    assert f"blocked ({site('# BLOCKED')})" in report


def test_what_lived_before_the_baseline_is_not_a_leak(release):
    early = start_blocked(release, "leaky-early")
    before = ignore_current()
    assert find_leaks(before) == []
    assert early in [m for g in find_leaks() for m in g.members]  # no baseline: it is found


def test_main_thread_calling_thread_and_labotel_threads_are_left_out():
    before = ignore_current()
    labotel.start(admin_address="127.0.0.1:0", runtime_metrics=True,
                  leak_sample_interval=0.05)  # debug server and detector threads
    try:
        assert find_leaks(before) == []
    finally:
        labotel.shutdown()
    found = []
    checker = threading.Thread(target=lambda: found.append(find_leaks(before)))
    checker.start()
    checker.join()
    assert found == [[]]  # the checking thread itself is not reported


def test_a_thread_that_ends_within_the_grace_period_is_no_leak():
    before = ignore_current()
    threading.Thread(target=time.sleep, args=(0.2,)).start()
    assert find_leaks(before)  # still running now
    began = time.monotonic()
    verify_no_leaks(before, grace=5.0)
    assert time.monotonic() - began < 4.0  # returned once it ended, not at the deadline


def test_verify_raises_assertion_error_with_the_report_after_the_grace(release):
    before = ignore_current()
    start_blocked(release, "leaky-one")
    began = time.monotonic()
    with pytest.raises(AssertionError) as failure:
        verify_no_leaks(before, grace=0.3)
    assert 0.25 <= time.monotonic() - began < 3
    message = str(failure.value)
    assert message.startswith("1 leaked thread:")
    assert f"1 thread created at {site('# STARTED BY HELPER')} (in start_blocked)" in message
    assert "Names: leaky-one" in message


def test_task_left_on_a_background_loop_names_the_line_that_handed_it_over(
        release, background_loop):
    before = ignore_current()
    event = asyncio.run_coroutine_threadsafe(_event(), background_loop).result(5)
    asyncio.run_coroutine_threadsafe(forever(event), background_loop)  # HANDED OVER
    # the loop makes the task when it runs the hand-over callback: wait for one after it
    asyncio.run_coroutine_threadsafe(asyncio.sleep(0), background_loop).result(5)
    groups = find_leaks(before, grace=0.2)
    assert [(g.kind, g.site, g.count) for g in groups] == [
        ("task", site("# HANDED OVER"), 1)]
    assert groups[0].stack[-1][2] == "forever" and groups[0].top == f"{__name__}.forever"
    assert "still pending" in groups[0].describe()


async def _event() -> asyncio.Event:
    return asyncio.Event()


def test_task_created_inside_the_background_loop_names_its_line(background_loop):
    before = ignore_current()

    async def spawn():
        asyncio.get_running_loop().create_task(forever(asyncio.Event()))  # SPAWNED IN LOOP

    asyncio.run_coroutine_threadsafe(spawn(), background_loop).result(5)
    groups = find_leaks(before)
    assert [(g.kind, g.site) for g in groups] == [("task", site("# SPAWNED IN LOOP"))]


def test_a_pending_task_on_a_stopped_loop_is_a_leak_on_a_closed_loop_is_not():
    before = ignore_current()
    loop = asyncio.new_event_loop()
    # held here: asyncio keeps tasks only weakly, and this one's only other references form
    # a cycle (its event's waiter wakes it) that any collection would free meanwhile
    held = []

    async def main():
        loop = asyncio.get_running_loop()
        held.append(loop.create_task(forever(asyncio.Event())))  # ON STOPPED LOOP

    loop.run_until_complete(main())
    try:
        assert [(g.kind, g.site) for g in find_leaks(before)] == [
            ("task", site("# ON STOPPED LOOP"))]
    finally:
        loop.close()
    assert find_leaks(before) == []


def test_asyncio_run_cancels_its_tasks_so_nothing_leaks():
    before = ignore_current()

    async def main():
        asyncio.create_task(forever(asyncio.Event()))
        await asyncio.sleep(0)

    asyncio.run(main())
    assert find_leaks(before) == []


def test_ignore_options_match_top_creator_or_any_frame(release):
    before = ignore_current()
    start_blocked(release, "leaky-ignored")
    name = __name__
    assert find_leaks(before, ignore_top=[f"{name}.blocked"]) == []
    assert find_leaks(before, ignore_created_by=[f"{name}.start_blocked"]) == []
    assert find_leaks(before, ignore=[f"{name}.blocked"]) == []
    assert find_leaks(before, ignore=[f"{name}.start_blocked"]) == []
    assert find_leaks(before, ignore_any=["threading.Thread.run"]) == []
    # a function that is neither the top nor the creator does not hide it
    assert len(find_leaks(before, ignore=["threading.Thread.run"])) == 1
    assert len(find_leaks(before, ignore_top=[f"{name}.start_blocked"])) == 1
    assert len(find_leaks(before, ignore=["not_imported_module.function"])) == 1


@pytest.mark.parametrize("bad", ["blocked", "a..b", "mod.<lambda>", 3])
def test_a_bad_function_name_is_a_value_error_naming_the_option(bad):
    with pytest.raises(ValueError, match="ignore_top"):
        find_leaks(ignore_top=[bad])
    with pytest.raises(ValueError, match="grace"):
        no_leaks(grace=-1)


def test_no_leaks_as_context_manager_and_decorator(release):
    with no_leaks(grace=0.1):
        worker = threading.Thread(target=time.sleep, args=(0.01,))
        worker.start()
        worker.join()
    with pytest.raises(AssertionError, match="1 leaked thread"):
        with no_leaks(grace=0.1):
            start_blocked(release, "leaky-in-block")

    @no_leaks(grace=0.1, ignore_created_by=[f"{__name__}.start_blocked"])
    def ignored():
        start_blocked(release, "leaky-ignored-by-decorator")

    ignored()
    ignored()  # one decorator, called again: a fresh baseline each call

    @no_leaks(grace=0.1)
    def leaky():
        start_blocked(release, "leaky-decorated")

    with pytest.raises(AssertionError):
        leaky()


def test_no_leaks_lets_an_exception_of_the_block_through_unchanged(release):
    with pytest.raises(KeyError):
        with no_leaks(grace=0.1):
            start_blocked(release, "leaky-raising")
            raise KeyError("the block's own failure")


def test_async_no_leaks_lets_the_loop_finish_its_tasks_during_the_grace():
    async def main():
        async with no_leaks(grace=2.0):
            asyncio.create_task(asyncio.sleep(0.1))  # finishes during the grace: no leak
        with pytest.raises(AssertionError) as failure:
            async with no_leaks(grace=0.1):
                asyncio.create_task(forever(asyncio.Event()))  # ASYNC LEAK
        return str(failure.value)

    message = asyncio.run(main())
    assert f"1 task created at {site('# ASYNC LEAK')}" in message

    @no_leaks(grace=0.1)
    async def decorated():
        asyncio.create_task(forever(asyncio.Event()))

    with pytest.raises(AssertionError, match="1 leaked task"):
        asyncio.run(decorated())


def test_hooks_survive_a_monitor_shutdown_and_go_with_the_last_holder():
    original = threading.Thread.start
    labotel.start(admin_address="")
    labotel.shutdown()  # the monitor was a second holder; the test's hooks stay
    assert threading.Thread.start is original
    assert getattr(original, "__wrapped__", None) is not None
    assert getattr(asyncio.BaseEventLoop.create_task, "__wrapped__", None) is not None
    uninstall()
    assert getattr(threading.Thread.start, "__wrapped__", None) is None
    assert getattr(asyncio.BaseEventLoop.create_task, "__wrapped__", None) is None
    assert getattr(asyncio.run_coroutine_threadsafe, "__wrapped__", None) is None
    install()


def test_a_thread_started_before_the_hooks_has_an_unknown_site(release):
    uninstall()
    before = Baseline(threading.enumerate())
    start_blocked(release, "leaky-unhooked")
    install()
    groups = find_leaks(before)
    assert [(g.site, g.count) for g in groups] == [("unknown", 1)]
    assert "unknown (created before labotel.testing.install())" in groups[0].describe()
