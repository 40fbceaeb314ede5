"""The mixed workload every overhead benchmark runs: allocation and GC churn, threads
handing work through queues, and plain function calls. Deterministic amount of work."""

from __future__ import annotations

import queue
import statistics
import threading
import time
from collections.abc import Callable


def _churn(rounds: int) -> int:
    """Allocate short-lived containers, some in reference cycles, so the GC runs."""
    total = 0
    for i in range(rounds):
        node = {"id": i, "tags": [str(i), "x" * (i % 32)], "payload": list(range(i % 50))}
        node["self"] = node  # a cycle: only the collector frees it
        total += len(node["payload"])
    return total


def heavy_churn(stop: threading.Event) -> None:
    """Heavy short-lived allocation until ``stop``: ~10 MB of records (some in cycles) and
    an 8 MB buffer, built and dropped over and over, a sawtooth for RSS and the heap."""
    while not stop.is_set():
        garbage = [{"k": i, "v": [i] * 20, "s": "y" * 200} for i in range(20_000)]
        for record in garbage[:2_000]:
            record["self"] = record
        del garbage
        buffer = bytearray(8 * 1024 * 1024)
        del buffer
        time.sleep(0.01)


def _calls(n: int) -> int:
    def add(a: int, b: int) -> int:
        return a + b

    acc = 0
    for i in range(n):
        acc = add(acc, i) & 0xFFFF
    return acc


def _pipeline(items: int, workers: int = 4) -> int:
    """Producer -> worker threads -> consumer over queue.Queue."""
    inbox: queue.Queue = queue.Queue(maxsize=256)
    outbox: queue.Queue = queue.Queue()
    lock = threading.Lock()
    processed = [0]

    def worker() -> None:
        while True:
            item = inbox.get()
            if item is None:
                return
            with lock:
                processed[0] += 1
            outbox.put(_calls(50) + item)

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for i in range(items):
        inbox.put(i)
    for _ in threads:
        inbox.put(None)
    for thread in threads:
        thread.join()
    return processed[0] + outbox.qsize()


def mixed_workload(scale: int = 1) -> None:
    """About 0.5 s of work at scale=1 on one core."""
    for _ in range(scale):
        _churn(150_000)
        _calls(1_500_000)
        _pipeline(15_000)


def timed(function: Callable[[], object]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def interleaved_ratio(baseline: Callable[[], float], treatment: Callable[[], float],
                      rounds: int = 7) -> tuple[float, float, float]:
    """Median of per-round ratios treatment/baseline, run alternately to cancel drift.

    Returns (median ratio, median baseline seconds, median treatment seconds).
    """
    ratios, base_times, treat_times = [], [], []
    for round_number in range(rounds):
        if round_number % 2:
            t, b = treatment(), baseline()
        else:
            b, t = baseline(), treatment()
        base_times.append(b)
        treat_times.append(t)
        ratios.append(t / b)
    return (statistics.median(ratios), statistics.median(base_times),
            statistics.median(treat_times))


def _depth_sum(node_depth: int) -> int:
    """A full binary recursion: deep, short-lived frames all the time."""
    if node_depth <= 0:
        return 1
    return _depth_sum(node_depth - 1) + _depth_sum(node_depth - 1)


def _records(count: int) -> int:
    """Allocation churn: short-lived dicts, lists and strings, some in cycles."""
    kept = 0
    for i in range(count):
        record = {"n": i, "name": f"item-{i}", "tags": [i, i + 1, str(i)], "raw": b"x" * (i % 64)}
        if i % 7 == 0:
            record["self"] = record
        kept += len(record["tags"])
    return kept


def queue_lock_recursion_workload(rounds: int) -> int:
    """The profiler's independent workload: allocation churn on the calling thread, four
    worker threads taking items from one queue and updating a total under one lock, and
    recursion on both sides. A deterministic amount of work, about 17 ms per round on
    one core."""
    inbox: queue.Queue = queue.Queue()
    lock = threading.Lock()
    total = [0]

    def worker() -> None:
        while (item := inbox.get()) is not None:
            value = _depth_sum(item) + _records(200)
            with lock:
                total[0] += value

    workers = [threading.Thread(target=worker, name=f"worker-{i}") for i in range(4)]
    for thread in workers:
        thread.start()
    for _ in range(rounds):
        for _ in range(40):
            inbox.put(11)
        total[0] += _records(20_000) + _depth_sum(14)
    for _ in workers:
        inbox.put(None)
    for thread in workers:
        thread.join()
    return total[0]
