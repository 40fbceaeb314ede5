"""The blocked-loop watchdog on uvloop, the loop ``uvicorn[standard]`` runs.

uvloop runs its callbacks from C: there is no ``Handle._run`` frame to find the running
callback by, and its ``run_forever`` is not ``BaseEventLoop``'s, so labotel found no loop
at all (no lag, no task origins, no blocked-loop report). Loops are now announced by
``asyncio.Runner`` (``asyncio.run()``, ``uvloop.run()``) and by ``run_forever`` wrapped on
``uvloop.Loop`` (a loop run by hand), and the running callback is the frame just inside
the code the heartbeat was called from.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import uvloop

from tests.unit.test_loop_blocked import (
    BLOCKING_LINE,
    blocking_callback,
    busy_with_short_callbacks,
    handle_request,
    many_short_steps,
    metric,
    reports,
    start,
    wait_for_report,
)

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
BLOCKING_FILE = handle_request.__code__.co_filename


@pytest.fixture
def monitor():
    import labotel

    yield start()
    labotel.shutdown()


def run_on_uvloop(main) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


def test_a_coroutine_calling_time_sleep_on_uvloop_is_reported_with_its_line(monitor):
    seen: list[type] = []

    async def main() -> None:
        seen.append(type(asyncio.get_running_loop()))
        await asyncio.sleep(0)  # labotel hooks the loop's task factory in its first pass
        await asyncio.create_task(handle_request(0.35), name="request-42")
        await asyncio.sleep(0.1)

    run_on_uvloop(main)
    assert seen == [uvloop.Loop]
    (report,) = wait_for_report()
    attributes = report.attributes
    assert (attributes["code.filepath"], attributes["code.lineno"],
            attributes["code.function"]) == (BLOCKING_FILE, BLOCKING_LINE, "handle_request")
    assert 0.2 <= attributes["labotel.loop.blocked_seconds"] <= 1.0
    assert attributes["labotel.loop.task"] == "request-42"
    assert attributes["labotel.loop.task.created_at"].startswith(__file__ + ":")
    assert attributes["thread.name"] == threading.current_thread().name
    assert metric(monitor, "labotel_asyncio_loop_blocks_total") == 1


def test_a_plain_callback_on_uvloop_is_named(monitor):
    async def main() -> None:
        asyncio.get_running_loop().call_soon(blocking_callback)
        await asyncio.sleep(0.4)

    run_on_uvloop(main)
    (report,) = wait_for_report()
    assert report.attributes["code.function"] == "blocking_callback"
    assert report.attributes["labotel.loop.task"] is None
    assert report.attributes["labotel.loop.callback"].startswith("blocking_callback (")


def test_a_uvloop_busy_with_many_short_callbacks_is_not_reported(monitor):
    lateness: list[float] = []
    run_on_uvloop(lambda: busy_with_short_callbacks(lateness))
    time.sleep(0.3)
    assert max(lateness) > 0.15  # the probe was as late as a blocked loop's would be
    assert reports() == []


def test_many_short_task_steps_on_uvloop_are_not_reported(monitor):
    run_on_uvloop(many_short_steps)
    time.sleep(0.3)
    assert reports() == []


def test_uvloop_loops_are_counted_and_their_lag_measured(monitor):
    from labotel.runtime import loops

    seen: list[tuple[bool, float]] = []

    async def main() -> None:
        await asyncio.sleep(1.2)  # a few lag probes (loop_lag_interval 0.5 s by default)
        # other tests' loops may still run on threads of their own: this one is counted
        seen.append((asyncio.get_running_loop() in loops.running_loops(),
                     metric(monitor, "labotel_asyncio_loops")))

    run_on_uvloop(main)
    ((known, counted),) = seen
    assert known and counted >= 1, seen
    assert metric(monitor, "labotel_asyncio_loop_lag_seconds_count") >= 1


def test_a_runner_run_from_a_running_loop_is_refused_as_without_labotel(monitor):
    """The announcing wrapper asks the runner for its loop only where the runner would
    make one: called from a running loop, Runner.run() refuses before making any."""
    outcome: list[object] = []

    async def main() -> None:
        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
        coroutine = asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="running event loop"):
            runner.run(coroutine)
        coroutine.close()
        outcome.append(runner._loop)
        runner.close()

    run_on_uvloop(main)
    assert outcome == [None]


def test_a_uvloop_loop_run_by_hand_is_watched_too(monitor):
    """No Runner (aiohttp's run_app, older code): found by uvloop.Loop.run_forever."""
    async def main() -> None:
        await asyncio.sleep(0)
        await asyncio.create_task(handle_request(0.35), name="by-hand")
        await asyncio.sleep(0.1)

    loop = uvloop.new_event_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    (report,) = wait_for_report()
    assert (report.attributes["code.filepath"], report.attributes["code.lineno"]) == (
        BLOCKING_FILE, BLOCKING_LINE)
    assert report.attributes["labotel.loop.task"] == "by-hand"


def test_start_called_on_a_running_uvloop_watches_that_loop():
    """labotel.start() from a coroutine (a FastAPI lifespan under uvicorn[standard]): the
    loop already runs, and uvloop's run_forever leaves no frame to find it by."""
    import labotel

    found: list[bool] = []

    async def main() -> None:
        start()
        await asyncio.sleep(0.2)
        from labotel.runtime import loops

        found.append(asyncio.get_running_loop() in loops.running_loops())
        await asyncio.create_task(handle_request(0.35), name="after-start")
        await asyncio.sleep(0.1)

    try:
        uvloop.run(main())
        assert found == [True]
        (report,) = wait_for_report()
        assert report.attributes["code.lineno"] == BLOCKING_LINE
    finally:
        labotel.shutdown()


def test_a_uvloop_loop_already_running_on_another_thread_is_found():
    """uvloop.run() on a thread before start(): found through its Runner's frame."""
    import labotel
    from labotel.runtime import loops

    ready, stop = threading.Event(), threading.Event()

    async def serve() -> None:
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.01)

    thread = threading.Thread(target=uvloop.run, args=(serve(),))
    thread.start()
    try:
        assert ready.wait(5)
        start()
        deadline = time.monotonic() + 5
        while not any(isinstance(loop, uvloop.Loop) for loop in loops.running_loops()):
            assert time.monotonic() < deadline, "the running uvloop loop was not found"
            time.sleep(0.01)
    finally:
        stop.set()
        thread.join(5)
        labotel.shutdown()


def test_a_uvloop_loop_run_by_hand_on_another_thread_before_start_is_found_by_its_task():
    """``loop.run_until_complete(main())`` on a thread, no Runner, before start(): its
    run_forever is C and leaves no frame; its unfinished task names it."""
    import labotel

    ready, stop = threading.Event(), threading.Event()
    loop = uvloop.new_event_loop()

    async def serve() -> None:
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.01)

    thread = threading.Thread(target=lambda: loop.run_until_complete(serve()))
    thread.start()
    try:
        assert ready.wait(5)
        start()
        asyncio.run_coroutine_threadsafe(handle_request(0.35), loop)
        (report,) = wait_for_report()
        assert (report.attributes["code.filepath"], report.attributes["code.lineno"]) == (
            BLOCKING_FILE, BLOCKING_LINE)
    finally:
        stop.set()
        thread.join(5)
        loop.close()
        labotel.shutdown()


def test_a_uvloop_loop_a_thread_runs_as_its_target_before_start_is_found():
    """``Thread(target=loop.run_forever)`` before start(), no task on the loop: found as
    the thread's target, and a callback blocking it later is reported."""
    import labotel

    loop = uvloop.new_event_loop()
    thread = threading.Thread(target=loop.run_forever)
    thread.start()
    try:
        deadline = time.monotonic() + 5
        while not loop.is_running():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        start()
        time.sleep(0.2)  # the heartbeat's first beats
        loop.call_soon_threadsafe(blocking_callback)
        (report,) = wait_for_report()
        assert report.attributes["code.function"] == "blocking_callback"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
        labotel.shutdown()
