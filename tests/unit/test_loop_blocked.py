"""The blocked-loop watchdog: a coroutine or callback that holds the event loop is reported
with its line, while it is still blocking; busy and idle loops are not."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import threading
import time

import pytest

import labotel
from tests.unit.test_pprof_support import get

# An exception a hook lets into an application thread must fail the test, not warn.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")


def start(**options) -> labotel.Monitor:
    labotel.shutdown()
    settings = dict(admin_address="127.0.0.1:0", leak_detection=False,
                    service_name="loop-test")
    settings.update(options)
    return labotel.start(**settings)


@pytest.fixture
def monitor():
    yield start()
    labotel.shutdown()


def reports() -> list[labotel.Detection]:
    return labotel.detections("loop_blocked")


def wait_for_report(count: int = 1, timeout: float = 5.0) -> list[labotel.Detection]:
    deadline = time.monotonic() + timeout
    while len(reports()) < count:
        assert time.monotonic() < deadline, f"no loop_blocked report: {reports()}"
        time.sleep(0.01)
    return reports()


def metric(monitor, name: str) -> float:
    text = get(monitor.admin_url + "/metrics").text
    match = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
    assert match, f"{name} not on /metrics"
    return float(match.group(1))


async def handle_request(seconds: float) -> None:
    await asyncio.sleep(0.05)
    time.sleep(seconds)  # BLOCKING LINE: the loop can do nothing else meanwhile
    await asyncio.sleep(0.05)


BLOCKING_LINE = next(number for number, line in enumerate(open(__file__), 1)
                     if line.strip().endswith("# BLOCKING LINE: the loop can do nothing else "
                                              "meanwhile"))


def run_blocking_task(seconds: float = 0.35) -> None:
    async def main() -> None:
        await asyncio.sleep(0)  # labotel hooks the loop's task factory in its first pass
        await asyncio.create_task(handle_request(seconds), name="request-42")
        await asyncio.sleep(0.1)

    asyncio.run(main())


def test_a_coroutine_calling_time_sleep_is_reported_with_its_line(monitor):
    run_blocking_task()
    (report,) = wait_for_report()
    attributes = report.attributes
    assert (attributes["code.filepath"], attributes["code.lineno"],
            attributes["code.function"]) == (__file__, BLOCKING_LINE, "handle_request")
    assert 0.2 <= attributes["labotel.loop.blocked_seconds"] <= 1.0
    assert attributes["labotel.loop.still_blocked"] is False
    assert attributes["labotel.loop.task"] == "request-42"
    assert attributes["labotel.loop.task.coroutine"] == "handle_request"
    assert attributes["labotel.loop.task.created_at"].startswith(__file__ + ":")
    assert attributes["thread.name"] == threading.current_thread().name
    (stack,) = report.stacks
    assert stack.frames[0] == (__file__, BLOCKING_LINE, "handle_request")
    assert any(function == "Handle._run" for _, _, function in stack.frames)  # the whole one
    assert f"{__file__}:{BLOCKING_LINE}" in report.summary
    assert report.message.startswith("EVENT LOOP BLOCKED")
    assert metric(monitor, "labotel_asyncio_loop_blocks_total") == 1
    assert metric(monitor, "labotel_asyncio_loop_blocked_time_seconds_total") >= 0.2


def test_the_same_line_blocking_again_is_one_report_counted_twice(monitor):
    run_blocking_task()
    wait_for_report()
    run_blocking_task()
    deadline = time.monotonic() + 5
    while reports()[0].count < 2:
        assert time.monotonic() < deadline, reports()
        time.sleep(0.01)
    assert len(reports()) == 1
    assert metric(monitor, "labotel_asyncio_loop_blocks_total") == 2
    assert metric(monitor, "labotel_detections_total{labotel_detection_kind=\"loop_blocked\"}") \
        == 1


def blocking_callback() -> None:
    time.sleep(0.3)


def test_a_plain_callback_is_named(monitor):
    async def main() -> None:
        asyncio.get_running_loop().call_soon(blocking_callback)
        await asyncio.sleep(0.4)

    asyncio.run(main())
    (report,) = wait_for_report()
    assert report.attributes["code.function"] == "blocking_callback"
    assert report.attributes["labotel.loop.task"] is None
    assert report.attributes["labotel.loop.callback"].startswith("blocking_callback (")


def short_callback() -> None:
    sum(range(5000))  # tens of microseconds


async def busy_with_short_callbacks(lateness: list[float]) -> None:
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        for _ in range(5000):  # one pass of the loop runs them all: 0.1 s or more
            loop.call_soon(short_callback)
        asked = time.monotonic()
        await asyncio.sleep(0)
        lateness.append(time.monotonic() - asked)


def test_a_loop_busy_with_many_short_callbacks_is_not_reported(monitor):
    lateness: list[float] = []
    asyncio.run(busy_with_short_callbacks(lateness))
    time.sleep(0.3)
    assert max(lateness) > 0.15  # the probe was as late as a blocked loop's would be
    assert reports() == []


async def short_steps() -> None:
    for _ in range(5):
        sum(range(10000))
        await asyncio.sleep(0)


async def many_short_steps() -> None:
    started = time.monotonic()
    await asyncio.gather(*(short_steps() for _ in range(2000)))
    assert time.monotonic() - started > 0.5  # rounds of 2000 steps: late probes


def test_many_short_task_steps_are_not_reported(monitor):
    asyncio.run(many_short_steps())
    time.sleep(0.3)
    assert reports() == []


def test_an_idle_loop_is_not_reported(monitor):
    asyncio.run(asyncio.sleep(1.0))
    time.sleep(0.2)
    assert reports() == []


def test_a_block_shorter_than_the_threshold_is_not_reported():
    start(loop_block_threshold=0.3)
    try:
        run_blocking_task(0.15)
        time.sleep(0.3)
        assert reports() == []
    finally:
        labotel.shutdown()


def test_a_loop_that_stays_blocked_is_reported_while_it_still_is(monitor):
    seen_while_blocked: list = []

    def look() -> None:
        deadline = time.monotonic() + 2.5
        while not reports() and time.monotonic() < deadline:
            time.sleep(0.01)
        seen_while_blocked.extend(reports())

    watcher = threading.Thread(target=look)
    watcher.start()
    run_blocking_task(2.0)  # threshold 0.1 s + 1 s: reported about 1.2 s into the block
    watcher.join()
    (report,) = seen_while_blocked
    assert report.attributes["labotel.loop.still_blocked"] is True
    assert 1.0 <= report.attributes["labotel.loop.blocked_seconds"] < 2.0
    assert "is still blocked" in report.summary
    time.sleep(0.2)
    assert metric(monitor, "labotel_asyncio_loop_blocked_time_seconds_total") >= 1.8


def test_a_loop_in_another_thread(monitor):
    thread = threading.Thread(target=run_blocking_task, name="loop-thread")
    thread.start()
    thread.join()
    (report,) = wait_for_report()
    assert report.attributes["thread.name"] == "loop-thread"
    assert report.attributes["code.lineno"] == BLOCKING_LINE


def test_shutdown_while_a_loop_is_blocked_does_not_wait_for_it():
    start()
    thread = threading.Thread(target=run_blocking_task, args=(1.5,))
    thread.start()
    time.sleep(0.4)
    started = time.monotonic()
    labotel.shutdown()
    assert time.monotonic() - started < 1.0
    assert not any(t.name == "labotel-loop-watchdog" for t in threading.enumerate())
    thread.join()


def test_off_means_no_watchdog_and_no_reports():
    start(loop_block_detection=False)
    try:
        assert not any(t.name == "labotel-loop-watchdog" for t in threading.enumerate())
        run_blocking_task()
        time.sleep(0.2)
        assert reports() == []
    finally:
        labotel.shutdown()


def test_the_threshold_is_checked():
    with pytest.raises(ValueError, match="loop_block_threshold"):
        labotel.start(loop_block_threshold=0)


def test_the_goroutines_view_shows_the_watchdog(monitor):
    view = json.loads(get(monitor.admin_url + "/admin/monitoring/goroutines").text)
    assert view["loop_block_detection"]["loop_block_threshold"] == 0.1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_watches_its_own_loops(monitor):
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            run_blocking_task()
            found = wait_for_report()
            payload = {"line": found[0].attributes["code.lineno"],
                       "watchdogs": [t.name for t in threading.enumerate()
                                     if t.name == "labotel-loop-watchdog"]}
        except BaseException as error:  # noqa: BLE001 - reported to the parent
            payload, code = {"error": repr(error)}, 1
        os.write(writer, json.dumps(payload).encode())
        os._exit(code)
    os.close(writer)
    with os.fdopen(reader) as pipe:
        payload = json.loads(pipe.read())
    os.waitpid(pid, 0)
    assert payload == {"line": BLOCKING_LINE, "watchdogs": ["labotel-loop-watchdog"]}


def test_a_failing_watchdog_is_counted_and_the_loop_runs_on(monitor, monkeypatch):
    from labotel.detect import loop_blocked

    def broken(frame):
        raise RuntimeError("injected watchdog fault")

    monkeypatch.setattr(loop_blocked, "_running_callback", broken)
    run_blocking_task()  # the probe is overdue during the block: the watchdog looks, fails
    assert asyncio.run(asyncio.sleep(0.01, result="still fine")) == "still fine"
    text = get(monitor.admin_url + "/metrics").text
    assert 'labotel_internal_errors_total{labotel_component="detect.loop_blocked"}' in text
    assert any(t.name == "labotel-loop-watchdog" for t in threading.enumerate())


def test_a_block_spent_in_garbage_collection_says_so_and_is_one_entry(monitor, monkeypatch):
    from labotel.detect import loop_blocked

    # As if every second the loop was stopped had been a collection in some thread.
    monkeypatch.setattr(loop_blocked.BlockedLoopDetector, "_gc_seconds",
                        lambda self: time.monotonic())
    run_blocking_task()
    (report,) = wait_for_report()
    assert report.attributes["labotel.loop.gc_seconds"] >= 0.2
    assert "s of it in garbage collection" in report.summary
    assert "Mostly garbage collection" in report.message
    assert report.fingerprint == ("garbage collection",)
    assert report.attributes["code.lineno"] == BLOCKING_LINE  # still where it was stopped


def test_a_block_without_collections_names_its_line(monitor):
    run_blocking_task()
    (report,) = wait_for_report()
    assert report.attributes["labotel.loop.gc_seconds"] < 0.1  # the runtime collectors ran
    assert report.fingerprint == (f"{__file__}:{BLOCKING_LINE}",)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread CPU clocks")
@pytest.mark.parametrize(("used_cpu", "runnable_looks", "starved"), [
    (0.0, 4, True),  # ready to run at every look, and it never ran: the machine's doing
    (0.0, 0, False),  # asleep at every look (time.sleep, a socket): the line's doing
    (0.8, 4, False),  # it ran: a CPU-bound callback
])
def test_a_loop_thread_the_machine_did_not_run_is_told_apart(used_cpu, runnable_looks,
                                                             starved):
    from labotel.detect import loop_blocked

    native_id = threading.get_native_id()
    now_cpu = loop_blocked._thread_cpu(native_id)
    suspect = loop_blocked.Suspect(sys._getframe(), 0.0, 1.0, None, native_id,
                                   now_cpu - int(used_cpu * 1e9), looks=4,
                                   runnable_looks=runnable_looks)
    assert loop_blocked._starved(suspect, held=1.0) is starved


def test_the_callback_is_named_from_one_read_of_the_stack():
    """The function just inside ``Handle._run`` is named from the stack read once for the
    report; a callback not on that stack (it returned before the read) names nothing, not
    the outermost frame."""
    from labotel.detect import loop_blocked
    from labotel.runtime.thread_frames import stack

    elsewhere = (x for x in ()).gi_frame  # a frame that is not on this thread's stack

    def handle_run():
        callback = sys._getframe()

        def called_by_the_loop():
            frames = stack(sys._getframe())
            return (loop_blocked._callback_name(frames, callback),
                    loop_blocked._callback_name(frames, elsewhere),
                    loop_blocked._stack(frames))

        return called_by_the_loop()

    named, unnamed, located = handle_run()
    assert named.startswith("test_the_callback_is_named_from_one_read_of_the_stack."
                            "<locals>.handle_run.<locals>.called_by_the_loop (")
    assert unnamed is None
    assert [function for _, _, function in located[:2]] == [
        "test_the_callback_is_named_from_one_read_of_the_stack.<locals>.handle_run.<locals>"
        ".called_by_the_loop",
        "test_the_callback_is_named_from_one_read_of_the_stack.<locals>.handle_run"]
