"""Hostile resources and tokens: no labotel lock is held while their code runs (issue 11,
items 3 and 5), and what labotel keeps of them is bounded in bytes."""

from __future__ import annotations

import gc
import json
import threading
import time

import psutil
import pytest
from bench.harm_scenarios import hostile_objects

import labotel
from tests.chaos.support import call_with_deadline
from tests.metrics_helpers import fetch

MB = 1024 * 1024


@pytest.fixture
def races():
    labotel.shutdown()
    monitor = labotel.start(admin_address="127.0.0.1:0", race_detection=True,
                            leak_detection=False)
    yield monitor
    labotel.shutdown()


def test_resource_whose_eq_reenters_labotel_does_not_deadlock(races):
    """The issue's repro: two shared() proxies of objects with one hash, as resources. The
    detector used them as dict keys under its lock; their __eq__ records an access."""

    class Key:
        def __hash__(self) -> int:
            return 42

    first, second = labotel.shared(Key(), "a"), labotel.shared(Key(), "b")

    def both() -> None:
        labotel.record_access(first, write=True)
        labotel.record_access(second, write=True)

    call_with_deadline(both, 10)
    # another thread, and the view, still get through
    call_with_deadline(lambda: labotel.record_access("after", write=True), 10)
    status, _, body = call_with_deadline(
        lambda: fetch(races.admin_url + "/admin/monitoring/races"), 10)
    assert status == 200 and json.loads(body)["enabled"]


def test_token_whose_eq_reenters_labotel_does_not_deadlock(races):
    class Token:
        def __hash__(self) -> int:
            return 7

        def __eq__(self, other: object) -> bool:
            labotel.happens_before("inner")
            return self is other

    first, second = Token(), Token()
    call_with_deadline(lambda: [labotel.happens_before(first), labotel.happens_after(second)], 10)


@pytest.mark.parametrize("mode", ["raise", "reenter", "slow", "inconsistent", "proxy"])
def test_hostile_resources_and_tokens_never_raise_in_the_app(races, mode):
    hostile = dict(zip(["raise", "reenter", "slow", "inconsistent", "proxy"],
                       hostile_objects(), strict=False))[mode]
    errors: list[BaseException] = []

    def use() -> None:
        for _ in range(50):
            try:
                labotel.record_access(hostile, write=True)
                labotel.record_access(hostile)
                labotel.record_access("named", location=hostile)
                labotel.happens_before(hostile)
                labotel.happens_after(hostile)
            except BaseException as error:  # noqa: BLE001 - the app must see none
                errors.append(error)

    threads = [threading.Thread(target=use) for _ in range(2)]
    for thread in threads:
        thread.start()
    call_with_deadline(lambda: [thread.join() for thread in threads], 30)
    assert errors == []


def test_distinct_huge_resource_names_are_bounded_in_bytes(races):
    """300 distinct 1 MB names kept 300 MB alive until shutdown (issue 11, item 5)."""
    process = psutil.Process()
    gc.collect()
    before = process.memory_info().rss

    def touch(thread: int) -> None:
        for i in range(150):
            name = f"{thread}-{i}-" + "x" * MB
            labotel.record_access(name, write=True)
            labotel.happens_before(name)

    threads = [threading.Thread(target=touch, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    gc.collect()
    grown = process.memory_info().rss - before
    stats = races.component("detect.races").detector.stats()
    assert stats["resources_tracked"] == 300
    # tokens get a fifth of race_max_bytes: the oldest may be forgotten, never kept whole
    assert stats["annotation_tokens"] + stats["tokens_forgotten"] == 300, stats
    assert stats["annotation_tokens"] >= 100, stats
    # a few hundred bytes of key each (a token's clock holds an entry per thread it saw)
    assert stats["shadow_bytes"] + stats["token_bytes"] < 300 * 64 * 1024, stats
    assert grown < 50 * MB, f"RSS grew {grown / MB:.0f} MB"


def test_shadow_state_is_bounded_by_race_max_bytes():
    labotel.shutdown()
    monitor = labotel.start(admin_address="", race_detection=True, leak_detection=False,
                            race_max_bytes=1 * MB)
    for i in range(20_000):
        labotel.record_access(f"resource-{i}", write=True)
        labotel.happens_before(f"token-{i}")
    stats = monitor.component("detect.races").detector.stats()
    assert stats["shadow_bytes"] <= stats["max_shadow_bytes"] <= MB
    assert stats["resources_forgotten"] > 0 and stats["tokens_forgotten"] > 0
    assert stats["token_bytes"] <= 0.2 * MB


def reenter_views() -> None:
    """What a hostile __hash__ does here: read labotel's views from inside labotel's call
    (each takes the lock of the component that made the call)."""
    from labotel.monitor import current
    from labotel.runtime import loops

    monitor = current()
    if monitor is not None:
        monitor.extra_view("goroutines")
    loops.running_loops()


class HostileThread(threading.Thread):
    """A Thread subclass whose hashing and equality call back into labotel."""

    def __hash__(self) -> int:
        reenter_views()
        return id(self) >> 4

    def __eq__(self, other: object) -> bool:
        reenter_views()
        return self is other


def test_thread_subclass_with_reentrant_hash_does_not_deadlock_the_leak_detector():
    labotel.shutdown()
    monitor = labotel.start(admin_address="", leak_sample_interval=0.05)
    release = threading.Event()
    threads = [HostileThread(target=release.wait, daemon=True) for _ in range(5)]
    for thread in threads:
        thread.start()
    detector = monitor.component("detect.threads")
    try:
        first = detector.view()["leak_detection"]["threads"]["total"]
        call_with_deadline(lambda: time.sleep(0.5), 10)
        # the sampler kept sampling, and the view (same lock) still answers
        view = call_with_deadline(lambda: detector.view()["leak_detection"]["threads"], 10)
    finally:
        release.set()
        for thread in threads:
            thread.join(5)
    assert "detect.threads" not in monitor.reporter._failed_components
    assert any("test_hostile_input.py" in group["site"] for group in view["groups"]), (
        first, view)


def test_event_loop_with_reentrant_hash_is_seen_and_never_disturbed():
    import asyncio

    from labotel.runtime import loops

    class HostileLoop(asyncio.SelectorEventLoop):
        def __hash__(self) -> int:
            reenter_views()
            return id(self) >> 4

    labotel.shutdown()
    labotel.start(admin_address="")
    loop = HostileLoop()
    errors: list = []
    loop.set_exception_handler(lambda _, context: errors.append(context))

    async def main() -> int:
        await asyncio.sleep(0.05)
        return len(loops.running_loops())

    try:
        seen = call_with_deadline(lambda: loop.run_until_complete(main()), 10)
    finally:
        if not loop.is_running():
            loop.close()
    assert errors == []
    assert seen == 1


class DictRefusingThread(threading.Thread):
    def __getattribute__(self, name: str):
        if name == "__dict__":
            raise RuntimeError("no __dict__ for you")
        return super().__getattribute__(name)


def test_a_hostile_thread_and_task_already_there_do_not_stop_start_finding_loops():
    """start() looks at each thread's target and each task's loop to find loops already
    running: a thread refusing its ``__dict__`` and a task whose ``get_loop`` raises are
    passed over, and the loop (uvloop's, run by hand: no frame to find it by) is still
    found by its other task."""
    import asyncio

    import uvloop

    from labotel.runtime import loops

    class HostileTask(asyncio.Task):
        def get_loop(self):
            raise RuntimeError("no loop for you")

    labotel.shutdown()
    loop = uvloop.new_event_loop()
    ready, stop = threading.Event(), threading.Event()

    async def serve() -> None:
        loop.set_task_factory(lambda loop, coro, **kw: HostileTask(coro, loop=loop, **kw))
        hostile = asyncio.ensure_future(asyncio.sleep(30))
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.01)
        hostile.cancel()

    refusing = DictRefusingThread(target=stop.wait, daemon=True)
    refusing.start()
    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),))
    thread.start()
    try:
        assert ready.wait(5)
        call_with_deadline(lambda: labotel.start(admin_address="", leak_detection=False), 10)
        deadline = time.monotonic() + 5
        while loop not in loops.running_loops():
            assert time.monotonic() < deadline, "the running loop was not found"
            time.sleep(0.01)
    finally:
        stop.set()
        thread.join(5)
        refusing.join(5)
        loop.close()
        labotel.shutdown()
