"""``WaitRecorder`` on its own: Go's sampling rule, and the byte bound of its tables."""

from __future__ import annotations

import random
import sys
import tracemalloc

import pytest

from labotel.profile.waits import OVERFLOW, WaitRecorder, delta

SITE = "threading.Condition.wait"


def recorder(rate_ns: int = 1, max_bytes: int = 1 << 20, draw=random.random) -> WaitRecorder:
    return WaitRecorder(rate_ns, max_bytes, lambda: None, draw)


def here():
    return sys._getframe(1)


def totals(table) -> tuple[float, int]:
    return sum(v[0] for v in table.values()), sum(v[1] for v in table.values())


@pytest.mark.parametrize(("delay", "draw", "kept"), [
    (2_000, 0.99, (1.0, 2_000)),  # at least the rate: always, as it is
    (1_000, 0.99, (1.0, 1_000)),
    (100, 0.05, (10.0, 1_000)),  # shorter and drawn (0.05 * 1000 < 100): scaled up
    (100, 0.5, None),  # shorter and not drawn
    (0, 0.0001, (1000.0, 1_000)),  # a zero reading counts as 1 ns
])
def test_gos_block_sampling_rule(delay, draw, kept):
    assert recorder(1_000, draw=lambda: draw)._weight(delay) == kept


def test_sampling_keeps_totals_unbiased():
    rng = random.Random(7)
    sampled = recorder(10_000, draw=rng.random)
    for _ in range(50_000):
        sampled.blocked(SITE, here(), 500, None)  # each 1/20 of the rate
    count, delay = totals(sampled.block_table)
    assert 0.9 * 50_000 < count < 1.1 * 50_000
    assert 0.9 * 50_000 * 500 < delay < 1.1 * 50_000 * 500
    assert sampled.events < 0.1 * 50_000  # and only about one in twenty was recorded


def test_rate_one_keeps_every_wait_as_it_is():
    every = recorder(1)
    for delay in (1, 7, 1_000_000):
        every.blocked(SITE, here(), delay, None)
    assert totals(every.block_table) == (3.0, 1_000_008)


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
