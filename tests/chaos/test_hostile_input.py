"""Hostile resources and tokens: no labotel lock is held while their code runs (issue 11,
items 3 and 5), and what labotel keeps of them is bounded in bytes."""

from __future__ import annotations

import gc
import json
import threading

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
    assert stats["resources_tracked"] == 300 and stats["annotation_tokens"] == 300
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
