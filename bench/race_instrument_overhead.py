"""Cost of race detection without annotations (``race_instrument``), each figure measured
against a baseline in the same run.

The workload (below, written to a temporary package) is attribute- and dict-heavy pure
Python: objects, method calls, dict/list traffic, run by two threads at once. The same
source is imported twice, under a name ``race_instrument`` matches and under one it does
not, so both copies run side by side in one process:

1. instrumented vs plain, detection on, two threads (goal <= 5x), with the default
   ``race_sample_floor`` (every call of a cold function recorded, then a shrinking share
   down to 1 in 100) and with ``race_sample_floor=1`` (every call recorded);
2. the cost per access of a thread re-touching a location it already owns, i.e. reads and
   writes of attributes it already touched in this epoch (goal <= 0.3 us);
3. plain (non-matching) code with the hook installed and detection on vs after
   ``shutdown()`` (goal <= 1.05x), and instrumented code after ``shutdown()`` (the
   detection-off fast path) vs plain;
4. memory: the locations kept stay under ``race_max_resources`` while the workload
   touches many more.

    uv run python bench/race_instrument_overhead.py [--rounds 7] [--scale 1]
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import labotel  # noqa: E402
from labotel.monitor import current  # noqa: E402

WORKLOAD = '''
class Item:
    def __init__(self, key):
        self.key = key
        self.count = 0
        self.tags = []


class Store:
    def __init__(self):
        self.items = {}
        self.hits = 0
        self.misses = 0

    def add(self, key):
        item = self.items.get(key)
        if item is None:
            item = Item(key)
            self.items[key] = item
            self.misses += 1
        else:
            self.hits += 1
        item.count += 1
        item.tags.append(key % 7)
        if len(item.tags) > 8:
            item.tags.pop(0)
        return item.count

    def total(self):
        return sum(item.count for item in self.items.values())


def workload(n, seed):
    store = Store()
    total = 0
    for i in range(n):
        total += store.add((i * seed) % 512)
        if i % 64 == 0:
            counts = {}
            for key, item in store.items.items():
                counts[key % 16] = counts.get(key % 16, 0) + item.count
    return total + store.total()


class Point:
    def __init__(self):
        self.a = 1
        self.b = 0


def touch(point, n):
    for i in range(n):
        point.b = point.a + i
        point.a = point.b - i


def many_objects(n):
    table = {}
    for i in range(n):
        point = Point()
        point.a = i
        table[i] = point
    return len(table)
'''
OPTIONS = dict(admin_address="", runtime_metrics=False, leak_detection=False)


def two_threads(function: Callable[[int, int], object], n: int) -> float:
    threads = [threading.Thread(target=function, args=(n, seed)) for seed in (3, 5)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start


def one_thread(function: Callable[[], object]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def ratios(measure: Callable[[], tuple[float, float]], rounds: int) -> tuple[float, float, float]:
    """(min, median, max) of measured/baseline over ``rounds`` alternated pairs."""
    values = []
    for _ in range(rounds):
        subject, baseline = measure()
        values.append(subject / baseline)
    return min(values), statistics.median(values), max(values)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args()
    n = int(20_000 * args.scale)
    touches = int(100_000 * args.scale)

    root = tempfile.mkdtemp(prefix="labotel-bench-")
    for name in ("riw_instrumented", "riw_plain"):
        os.makedirs(os.path.join(root, name))
        with open(os.path.join(root, name, "__init__.py"), "w") as file:
            file.write(WORKLOAD)
    sys.path.insert(0, root)
    max_resources = 5_000
    labotel.start(race_detection=True, race_instrument="riw_instrumented",
                  race_max_resources=max_resources, **OPTIONS)
    instrumented = importlib.import_module("riw_instrumented")
    plain = importlib.import_module("riw_plain")
    assert "_labotel_ga" in vars(instrumented) and "_labotel_ga" not in vars(plain)

    print("race_instrument overhead (machine shared with other jobs: figures vary)")
    low, mid, high = ratios(lambda: (two_threads(instrumented.workload, n),
                                     two_threads(plain.workload, n)), args.rounds)
    floor = current().settings.race_sample_floor
    print(f"1. workload, 2 threads, instrumented/plain, race_sample_floor={floor:g}: median "
          f"{mid:.2f}x (range {low:.2f}-{high:.2f}x; goal <= 5x)")

    labotel.shutdown()
    labotel.start(race_detection=True, race_instrument="riw_instrumented",
                  race_max_resources=max_resources, race_sample_floor=1.0, **OPTIONS)
    low, mid, high = ratios(lambda: (two_threads(instrumented.workload, n),
                                     two_threads(plain.workload, n)), args.rounds)
    print(f"1b. the same, race_sample_floor=1 (every call recorded): median {mid:.2f}x "
          f"(range {low:.2f}-{high:.2f}x)")

    costs = []
    for _ in range(args.rounds):
        point_i, point_p = instrumented.Point(), plain.Point()
        # 4 accesses per iteration, each to a location this thread already touched
        spent = one_thread(lambda: instrumented.touch(point_i, touches))  # noqa: B023
        base = one_thread(lambda: plain.touch(point_p, touches))  # noqa: B023
        costs.append((spent - base) / (4 * touches) * 1e6)
    print(f"2. re-touching an owned location (every access recorded): median "
          f"{statistics.median(costs):.3f} us per access "
          f"(range {min(costs):.3f}-{max(costs):.3f}; goal <= 0.3 us)")

    component = next(c for c in current().components if c.name == "detect.races")
    one_thread(lambda: instrumented.many_objects(50_000))
    stats = component.detector.stats()
    print(f"4. memory: 50000 objects touched, {stats['instrumented_locations']} locations kept "
          f"(race_max_resources={max_resources}), {stats['instrumented_location_bytes']} "
          f"bytes, {stats['locations_forgotten']} forgotten")
    assert stats["instrumented_locations"] <= max_resources

    def on_then_off() -> tuple[float, float]:
        """Plain code with labotel on (hook installed, detection on), then off: a pair."""
        if current() is None:
            labotel.start(race_detection=True, race_instrument="riw_instrumented", **OPTIONS)
        on = statistics.median(two_threads(plain.workload, n) for _ in range(3))
        labotel.shutdown()
        return on, statistics.median(two_threads(plain.workload, n) for _ in range(3))

    low, mid, high = ratios(on_then_off, args.rounds)
    print(f"3a. plain code, hook installed + detection on / labotel off: median {mid:.3f}x "
          f"(range {low:.3f}-{high:.3f}x; goal <= 1.05x)")
    low, mid, high = ratios(lambda: (two_threads(instrumented.workload, n),
                                     two_threads(plain.workload, n)), args.rounds)
    print(f"3b. instrumented code after shutdown (fast path) / plain: median {mid:.2f}x "
          f"(range {low:.2f}-{high:.2f}x)")


if __name__ == "__main__":
    main()
