"""The labotel.asyncio.tasks count walks every task at every export and scrape: with
100 000 tasks that was 50-100 ms of CPU each time. It now keeps to a share of a core and
reuses its last count in between."""

from __future__ import annotations

import asyncio
import threading
import time

from labotel.budget import Reused
from labotel.runtime import aio, loops


def _spend(seconds: float) -> None:
    began = time.thread_time()
    while time.thread_time() - began < seconds:
        pass


def test_a_costly_reading_is_reused_until_its_share_of_a_core_allows_another():
    readings: list[float] = []

    def read() -> int:
        _spend(0.02)
        readings.append(time.monotonic())
        return len(readings)

    reused = Reused(0.5, read)
    began = time.monotonic()
    assert reused() == 1
    assert reused() == 1 and len(readings) == 1  # 20 ms at half a core: 40 ms apart
    assert reused.next_at - began >= reused.last_cpu / 0.5 >= 0.04
    time.sleep(max(0.0, reused.next_at - time.monotonic()) + 0.001)
    assert reused() == 2
    reused.forget()  # a forked child reads afresh
    assert reused() == 3


def test_the_task_count_of_a_big_service_is_reused_within_its_budget_then_read_afresh():
    loop = asyncio.new_event_loop()
    started = threading.Event()
    release: asyncio.Event | None = None

    async def serve() -> None:
        nonlocal release
        release = asyncio.Event()
        crowd = [asyncio.create_task(release.wait()) for _ in range(20_000)]
        started.set()
        await release.wait()
        await asyncio.gather(*crowd)

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),))
    thread.start()
    try:
        assert started.wait(30)
        loops.register(loop)
        collector = aio.AsyncioCollector()
        first = collector.counts()
        assert first is not None and first[aio.PENDING] >= 20_000
        # ~7 ms for 20 000 tasks here: at 0.5% of a core, one count every ~1.4 s
        assert collector.counts.next_at - time.monotonic() > 0.1
        assert release is not None
        more = [asyncio.run_coroutine_threadsafe(asyncio.sleep(60), loop) for _ in range(7)]
        time.sleep(0.05)  # the seven have started and wait
        assert collector.counts() == first  # too soon: the last count again
        time.sleep(max(0.0, collector.counts.next_at - time.monotonic()) + 0.01)
        # all states together: serve() may have been mid-step (running) at the first count
        assert sum(collector.counts().values()) == sum(first.values()) + 7
        for future in more:
            future.cancel()
    finally:
        if release is not None:
            loop.call_soon_threadsafe(release.set)
        thread.join(30)
        loop.close()


def test_the_count_keeps_states_apart_and_says_none_without_a_running_loop():
    assert aio.task_counts() is None or not loops.running_loops()

    async def inside() -> dict[str, int] | None:
        loops.register(asyncio.get_running_loop())
        sleeper = asyncio.create_task(asyncio.sleep(30))
        await asyncio.sleep(0)
        counts = aio.task_counts()
        sleeper.cancel()
        return counts

    counts = asyncio.run(inside())
    assert counts is not None
    assert counts[aio.RUNNING] == 1  # inside() itself, the loop's current task
    assert counts[aio.PENDING] >= 1  # the sleeper
