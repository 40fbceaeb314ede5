"""The thread- and task-leak detector on real threads and real asyncio tasks.

Sampling is shortened (every 0.25-0.5 s instead of 5 s; windows keep the default 12
samples); creation rates are the real ones from the issue (one every 0.1 s).
bench/leak_detection.py runs the same leaks with the default windows.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading
import time

import pytest

import labotel
from tests.metrics_helpers import fetch
from tests.unit.test_leaks_memory import source_line as line_in
from tests.unit.test_leaks_memory import wait_for

FAST = {"leak_sample_interval": 0.5, "leak_window": 6.0}


def start(**options):
    labotel.shutdown()
    return labotel.start(admin_address="127.0.0.1:0", service_name="leak-test",
                         **{**FAST, **options})


def source_line(marker: str) -> str:
    return line_in(marker, __file__)


def block_forever(release: threading.Event) -> None:
    release.wait()  # BLOCKED HERE


def test_thread_created_every_100ms_and_blocked_is_reported_with_its_creation_line():
    monitor = start()
    release = threading.Event()
    began = time.monotonic()
    try:
        while time.monotonic() - began < 20 and not labotel.detections("thread_leak"):
            threading.Thread(target=block_forever, args=(release,), daemon=True).start()  # SPAWN
            time.sleep(0.1)
        detections = labotel.detections("thread_leak")
        assert detections, monitor.component("detect.threads").view()
        _, _, body = fetch(monitor.admin_url + "/admin/monitoring/goroutines")
    finally:
        release.set()
    detection = detections[0]
    site = source_line("# SPAWN")
    attributes = detection.attributes
    assert attributes["labotel.leak.site"] == site
    assert attributes["code.lineno"] == int(site.rsplit(":", 1)[1])
    assert attributes["labotel.leak.trigger"] == "trend"
    assert attributes["labotel.leak.count"] >= 10 and attributes["labotel.leak.growth"] >= 10
    assert 5 < attributes["labotel.leak.growth_rate"] < 15  # about 10 per second
    blocked_at = source_line("# BLOCKED HERE")
    assert attributes["labotel.leak.stuck_at"] == f"{blocked_at} in block_forever"
    assert detection.fingerprint == (site,)
    stuck, created = detection.stacks
    assert (__file__, int(source_line("# BLOCKED HERE").rsplit(":", 1)[1]), "block_forever") \
        in stuck.frames
    assert created.frames[0][:2] == (__file__, attributes["code.lineno"])
    assert site in detection.message and "stuck at" in detection.message
    view = json.loads(body)["leak_detection"]
    group = next(g for g in view["threads"]["groups"] if g["site"] == site)
    assert group["growing"] and group["reported_seconds_ago"] is not None
    assert group["departed"] == 0 and group["history"]


def test_task_created_every_100ms_and_pending_is_reported_with_its_creation_line():
    start()

    async def wait_forever(event: asyncio.Event) -> None:
        await event.wait()  # TASK WAITS

    async def main() -> None:
        event = asyncio.Event()
        loop = asyncio.get_running_loop()
        began = time.monotonic()
        while time.monotonic() - began < 20 and not labotel.detections("task_leak"):
            loop.create_task(wait_forever(event))  # TASK SPAWN
            await asyncio.sleep(0.1)
        event.set()

    asyncio.run(main())
    detections = labotel.detections("task_leak")
    assert detections
    attributes = detections[0].attributes
    site = source_line("# TASK SPAWN")
    assert attributes["labotel.leak.site"] == site
    assert attributes["labotel.leak.stuck_at"].startswith(source_line("# TASK WAITS"))
    assert attributes["labotel.leak.count"] >= 10
    assert labotel.detections("thread_leak") == []


@pytest.mark.slow
def test_stable_pool_and_short_lived_threads_and_tasks_raise_nothing():
    """A 50-worker pool kept busy, threads that finish quickly, threads that live a few
    samples, and the asyncio equivalents — for five windows."""
    options = {"leak_sample_interval": 0.25, "leak_window": 3.0}
    monitor = start(**options)
    stop = threading.Event()
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=50)
    for _ in range(200):  # the pool grows to its 50 workers at once
        pool.submit(time.sleep, 0.05)

    def keep_pool_busy() -> None:
        while not stop.is_set():
            pool.submit(time.sleep, 0.02)
            time.sleep(0.005)

    def spawn_short_lived() -> None:
        while not stop.is_set():
            threading.Thread(target=time.sleep, args=(0.05,)).start()  # quick ones
            threading.Thread(target=time.sleep, args=(0.9,)).start()  # a few samples long
            time.sleep(0.1)

    async def tasks() -> None:
        loop = asyncio.get_running_loop()
        workers = [loop.create_task(asyncio.sleep(3600)) for _ in range(50)]  # a fixed pool
        while not stop.is_set():
            loop.create_task(asyncio.sleep(0.05))
            loop.create_task(asyncio.sleep(0.9))
            await asyncio.sleep(0.1)
        for worker in workers:
            worker.cancel()

    helpers = [threading.Thread(target=keep_pool_busy), threading.Thread(target=spawn_short_lived),
               threading.Thread(target=asyncio.run, args=(tasks(),))]
    for helper in helpers:
        helper.start()
    try:
        time.sleep(5 * options["leak_window"])
        view = monitor.component("detect.threads").view()["leak_detection"]
    finally:
        stop.set()
        for helper in helpers:
            helper.join(10)
        pool.shutdown()
    assert labotel.detections("thread_leak") == [], view
    assert labotel.detections("task_leak") == [], view
    # The detector saw the groups it judged: the pool of 50 and the busy spawners.
    counts = {g["site"]: g["count"] for g in view["threads"]["groups"]}
    assert max(counts.values()) >= 50
    assert view["tasks"]["total"] >= 50


def test_absolute_thread_limit_is_a_second_trigger():
    start(thread_limit=30, leak_sample_interval=0.1)
    release = threading.Event()
    try:
        for _ in range(40):  # one burst: no trend, but past the limit
            threading.Thread(target=block_forever, args=(release,), daemon=True).start()  # BURST
        assert wait_for(lambda: labotel.detections("thread_leak"), 10)
        time.sleep(0.5)
        detections = labotel.detections("thread_leak")
    finally:
        release.set()
    assert len(detections) == 1 and detections[0].count == 1
    attributes = detections[0].attributes
    assert attributes["labotel.leak.trigger"] == "limit"
    assert attributes["labotel.leak.site"] == source_line("# BURST")
    assert attributes["labotel.leak.total"] >= 40
    assert "thread_limit=30" in detections[0].summary


def test_task_limit_is_a_second_trigger():
    start(task_limit=30, leak_sample_interval=0.1)

    async def main() -> None:
        await asyncio.sleep(0)  # labotel hooks the loop's task factory once it runs
        event = asyncio.Event()
        loop = asyncio.get_running_loop()
        for _ in range(40):
            loop.create_task(event.wait())  # TASK BURST
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not labotel.detections("task_leak"):
            await asyncio.sleep(0.05)
        event.set()

    asyncio.run(main())
    detections = labotel.detections("task_leak")
    assert detections and detections[0].attributes["labotel.leak.trigger"] == "limit"
    assert detections[0].attributes["labotel.leak.site"] == source_line("# TASK BURST")


def test_a_failing_sample_is_counted_and_sampling_goes_on(caplog):
    monitor = start(leak_sample_interval=0.05)
    detector = monitor.component("detect.threads")
    tracker = detector.threads
    detector.threads = None  # every sample now fails inside the detector
    time.sleep(0.3)
    assert "detect.threads" in monitor.reporter._failed_components
    assert detector._sampler.alive
    detector.threads = tracker
    before = len(next(iter(tracker.groups.values())).history)
    assert wait_for(lambda: len(next(iter(tracker.groups.values())).history) > before, 5)
