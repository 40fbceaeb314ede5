"""``WaitRecorder`` on its own, with the hooks' sampling rule: Go's block-rate rule, and
the byte bound of the tables."""

from __future__ import annotations

import random
import sys
import tracemalloc

import pytest

from labotel.hooks import primitives
from labotel.profile.waits import OVERFLOW, WaitRecorder, delta

SITE = "threading.Condition.wait"


def recorder(rate_ns: int = 1, max_bytes: int = 1 << 20) -> WaitRecorder:
    return WaitRecorder(rate_ns, max_bytes, lambda: None)


def here():
    return sys._getframe(1)


def totals(table) -> tuple[float, int]:
    return sum(v[0] for v in table.values()), sum(v[1] for v in table.values())


def record(tables: WaitRecorder, delay: int) -> None:
    """What the hooks do with a wait that ended: draw, then hand over what is kept."""
    if primitives.kept(tables, delay):
        tables.blocked(SITE, here(), delay, None)


@pytest.mark.parametrize(("delay", "draw", "kept", "scaled"), [
    (2_000, 0.99, True, (1.0, 2_000)),  # at least the rate: always, as it is
    (1_000, 0.99, True, (1.0, 1_000)),
    (100, 0.05, True, (10.0, 1_000)),  # shorter and drawn (0.05 * 1000 < 100): scaled up
    (100, 0.5, False, None),  # shorter and not drawn
    (0, 0.0001, True, (1000.0, 1_000)),  # a zero reading counts as 1 ns
])
def test_gos_block_sampling_rule(monkeypatch, delay, draw, kept, scaled):
    monkeypatch.setattr(primitives, "_draw", lambda: draw)
    tables = recorder(1_000)
    assert primitives.kept(tables, delay) is kept
    if kept:
        assert tables._scaled(delay) == scaled


def test_sampling_keeps_totals_unbiased(monkeypatch):
    monkeypatch.setattr(primitives, "_draw", random.Random(7).random)
    sampled = recorder(10_000)
    for _ in range(50_000):
        record(sampled, 500)  # each 1/20 of the rate
    count, delay = totals(sampled.block_table)
    assert 0.9 * 50_000 < count < 1.1 * 50_000
    assert 0.9 * 50_000 * 500 < delay < 1.1 * 50_000 * 500
    assert sampled.events < 0.1 * 50_000  # and only about one in twenty was recorded


def test_rate_one_keeps_every_wait_as_it_is():
    every = recorder(1)
    for delay in (1, 7, 1_000_000):
        record(every, delay)
    assert totals(every.block_table) == (3.0, 1_000_008)


def test_a_subscriber_without_a_rate_is_told_and_nothing_is_kept():
    failures: list = []

    class NoRate:
        def failed(self):
            failures.append(True)

    primitives_waits, primitives._waits = primitives._waits, NoRate()
    try:
        assert primitives.kept(primitives._waits, 5) is False
    finally:
        primitives._waits = primitives_waits
    assert failures == [True]


def make_functions(count: int):
    """``count`` functions with code objects of their own, each reporting one wait.

    Each is called once here, so what the interpreter allocates on a code object's first
    run (a cached frame on 3.10, specialisation caches on 3.12+) is not counted later."""
    namespace: dict = {}
    source = "\n".join(f"def wait_{i}(record):\n    record(__import__('sys')._getframe())"
                       for i in range(count))
    exec(compile(source, "<generated waits>", "exec"), namespace)  # noqa: S102
    functions = [namespace[f"wait_{i}"] for i in range(count)]
    for function in functions:
        function(lambda frame: None)
    return functions


def test_the_tables_stay_within_their_byte_budget_and_keep_their_totals():
    functions = make_functions(3000)
    bounded = recorder(max_bytes=256 * 1024)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for function in functions:
            function(lambda frame: bounded.blocked(SITE, frame, 1_000, None))
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    stats = bounded.stats()
    assert stats["bytes"] <= 256 * 1024
    assert grown <= 256 * 1024 * 1.25, grown  # the estimate covers what is really kept
    assert stats["waits_merged_over_budget"] > 0
    assert totals(bounded.block_table) == (3000.0, 3_000_000)  # nothing lost, only merged
    assert bounded.block_table[bounded._overflow][0] == stats["waits_merged_over_budget"]
    builder = bounded.profile(bounded.snapshot("block"))
    functions_seen = {location.function for location in builder.locations}
    assert OVERFLOW in functions_seen


def test_the_estimate_is_not_far_above_the_real_size():
    functions = make_functions(500)
    roomy = recorder(max_bytes=64 << 20)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for function in functions:
            function(lambda frame: roomy.blocked(SITE, frame, 1_000, None))
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown <= roomy.bytes <= 4 * grown, (grown, roomy.bytes)


def test_delta_is_what_was_added_between_two_snapshots():
    tables = recorder()
    frame = here()
    tables.blocked(SITE, frame, 5, None)
    before = tables.snapshot("block")
    tables.blocked(SITE, frame, 7, None)
    tables.blocked("queue.SimpleQueue.get", frame, 3, None)
    changes = delta(tables.snapshot("block"), before)
    assert sorted(v for v in changes.values()) == [[1.0, 3], [1.0, 7]]
    assert delta(before, before) == {}
