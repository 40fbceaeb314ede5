"""Cost of the race detector, each figure a ratio against the same run without it.

1. ``record_access`` per call: detection off vs an empty function of the same signature
   (target < 1 us median), and detection on — the same-epoch fast path and the full
   check (new epoch: shadow update, conflict check, stack capture; target < 3 us), and a
   storm of new races over the report budget (each a new pair of lines, only counted),
   against the full check.
2. Lock acquire+release (``with lock:``), instrumented vs a plain lock; RLock too.
3. ``bench/workload.py`` mixed workload with ``race_detection=True`` vs without
   (target <= 2x), both with ``labotel.start()``, alternated in one process.

    uv run python bench/race_overhead.py [--rounds 7] [--scale 1]
"""

from __future__ import annotations

import _thread
import argparse
import itertools
import logging
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import labotel  # noqa: E402
from bench.workload import interleaved_ratio, mixed_workload, timed  # noqa: E402
from labotel.detect import detection, races  # noqa: E402

CALLS = 20_000
BATCHES = 15
OPTIONS = dict(admin_address="", runtime_metrics=False, leak_detection=False)


def per_call(loop: Callable[[int], None], calls: int = CALLS, batches: int = BATCHES) -> float:
    """Median seconds per call over ``batches`` runs of ``loop(calls)``."""
    samples = []
    for _ in range(batches):
        start = time.perf_counter()
        loop(calls)
        samples.append((time.perf_counter() - start) / calls)
    return statistics.median(samples)


def empty(resource: str, write: bool = False, location: str | None = None) -> None:
    return None


def call_loop(function: Callable[..., None]) -> Callable[[int], None]:
    def loop(n: int) -> None:
        for _ in range(n):
            function("bench.resource", True)

    return loop


def full_check_loop(n: int) -> None:
    """Writes to 1000 resources, advancing the epoch (one annotation) every 1000 calls, so
    every call takes the full path: shadow lookup, conflict check, stack capture."""
    record = labotel.record_access
    names = [f"bench.r{i}" for i in range(1000)]
    for start in range(0, n, 1000):
        labotel.happens_before("bench.epoch")
        for name in names[: min(1000, n - start)]:
            record(name, True)


STORM_CALLS, STORM_BATCHES = 100, 31  # all batches' resources must fit the shadow's bytes


def storm_loop() -> tuple[Callable[[int], None], Callable[[], None]]:
    """Reads that each race with a write another thread made earlier, at a new pair of
    lines (a new fingerprint): a storm past the report budget (spent first), so each race
    is counted and remembered without a report."""
    spend = 2 * int(detection.REPORT_BURST)
    names = [f"bench.storm{i}" for i in range(STORM_CALLS * STORM_BATCHES + spend)]
    written: list[int] = []  # a plain list: the hand-over must not order the threads

    def writer() -> None:
        for i, name in enumerate(names):
            labotel.record_access(name, True, f"/bench/storm_writer.py:{i}")
        written.append(1)
        while len(written) < 2:
            time.sleep(0.01)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    while not written:
        time.sleep(0.01)
    reads = iter(enumerate(names))
    record = labotel.record_access

    def loop(n: int) -> None:
        for i, name in itertools.islice(reads, n):
            record(name, False, f"/bench/storm_reader.py:{i}")

    reporter = races.active().reporter  # type: ignore[union-attr]
    for _ in range(spend):
        if not reporter.admits("race_condition"):
            break
        loop(1)
    else:
        raise RuntimeError("the storm's reads were not found racing: no report budget spent")
    return loop, lambda: written.append(1)  # the writer thread ends


def lock_loop(lock: object) -> Callable[[int], None]:
    def loop(n: int) -> None:
        for _ in range(n):
            with lock:  # type: ignore[attr-defined]
                pass

    return loop


def us(seconds: float) -> str:
    return f"{seconds * 1e6:.3f} us"


def bench_record_access() -> None:
    labotel.shutdown()
    base = per_call(call_loop(empty))
    off = per_call(call_loop(labotel.record_access))
    print(f"record_access, detection off: {us(off)}/call; empty function {us(base)}/call; "
          f"ratio {off / base:.2f}  (target < 1 us)")
    labotel.start(race_detection=True, **OPTIONS)
    try:
        fast = per_call(call_loop(labotel.record_access))
        full = per_call(full_check_loop)
        storm, end_storm = storm_loop()
        stormy = per_call(storm, STORM_CALLS, STORM_BATCHES)
        end_storm()
    finally:
        labotel.shutdown()
    print(f"record_access, detection on, same epoch: {us(fast)}/call; ratio vs off "
          f"{fast / off:.1f}")
    print(f"record_access, detection on, full check: {us(full)}/call; ratio vs off "
          f"{full / off:.1f}  (target < 3 us)")
    print(f"record_access, detection on, a new race over the report budget: {us(stormy)}/call;"
          f" ratio vs full check {stormy / full:.1f}")


def bench_locks() -> None:
    labotel.shutdown()
    plain, plain_r = _thread.allocate_lock(), _thread.RLock()
    base = per_call(lock_loop(plain))
    base_r = per_call(lock_loop(plain_r))
    labotel.start(race_detection=True, **OPTIONS)
    try:
        lock, rlock = threading.Lock(), threading.RLock()
        on = per_call(lock_loop(lock))
        on_r = per_call(lock_loop(rlock))
        contended = contended_ratio()
    finally:
        labotel.shutdown()
    print(f"Lock acquire+release: plain {us(base)}, instrumented {us(on)}; ratio "
          f"{on / base:.1f}")
    print(f"RLock acquire+release: plain {us(base_r)}, instrumented {us(on_r)}; ratio "
          f"{on_r / base_r:.1f}")
    print(f"Lock, 2 threads contending (handing the clock over each time): ratio "
          f"{contended:.1f}")


def contended_ratio() -> float:
    """Two threads taking turns on one lock, plain vs instrumented (detection is on)."""
    def run(lock: object) -> float:
        def worker() -> None:
            lock_loop(lock)(CALLS)

        threads = [threading.Thread(target=worker) for _ in range(2)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return time.perf_counter() - start

    ratios = [run(threading.Lock()) / run(_thread.allocate_lock()) for _ in range(5)]
    return statistics.median(ratios)


def bench_workload(rounds: int, scale: int) -> None:
    def run(race_detection: bool) -> float:
        labotel.start(race_detection=race_detection, **OPTIONS)
        try:
            return timed(lambda: mixed_workload(scale))
        finally:
            labotel.shutdown()

    run(False)  # warm-up
    ratio, base, treated = interleaved_ratio(lambda: run(False), lambda: run(True), rounds)
    print(f"mixed workload: without race detection {base:.3f} s, with {treated:.3f} s; "
          f"ratio {ratio:.2f}  (target <= 2)")


def main() -> None:
    # the storm's reports (a burst of them) are not the output of this benchmark
    logging.getLogger("labotel.detect.races").setLevel(logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--scale", type=int, default=1)
    args = parser.parse_args()
    bench_record_access()
    bench_locks()
    bench_workload(args.rounds, args.scale)


if __name__ == "__main__":
    main()
