"""Cost of contention profiling and of the blocked-loop watchdog, each a ratio against
the same run with the feature off, alternated in one process (median of rounds).

1. ``with lock:`` per call, uncontended: a plain lock vs an instrumented one (profiling on),
   in the main thread and in another.
2. ``bench/workload.py``'s mixed workload with ``contention_profiling`` on vs off
   (target <= 1.02).
3. A lock-heavy workload: four threads taking two shared locks in a tight loop, plus a
   producer/consumer pair over a ``queue.Queue``, on vs off.
4. An asyncio workload (tasks handing items over ``asyncio.Queue``, an ``asyncio.Lock``,
   futures resolved by callbacks, 20 tasks yielding) with ``contention_profiling`` on vs
   off: an await every few microseconds, far denser than a service's.
5. The same asyncio workload with the blocked-loop watchdog (``loop_block_detection``)
   on vs off, both with the runtime collectors as started by default (target <= 1.01).

    uv run python bench/contention_overhead.py [--rounds 9] [--scale 1] [--only NAME]
                                               [--rate NS]
"""

from __future__ import annotations

import _thread
import argparse
import asyncio
import os
import queue
import statistics
import sys
import threading
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import labotel  # noqa: E402
from bench.workload import interleaved_ratio, mixed_workload, timed  # noqa: E402
from labotel.profile.cpu import thread_cpu_clock  # noqa: E402

OPTIONS = dict(admin_address="", runtime_metrics=False, leak_detection=False,
               loop_block_detection=False)


def lock_heavy(scale: int) -> None:
    """Four threads over two shared locks, plus a queue producer/consumer pair."""
    locks = [threading.Lock(), threading.Lock()]
    counters = [0, 0]

    def worker(n: int) -> None:
        for i in range(20_000 * scale):
            index = (i + n) & 1
            with locks[index]:
                counters[index] += sum(range(20))

    handoff: queue.Queue = queue.Queue(maxsize=64)

    def producer() -> None:
        for i in range(20_000 * scale):
            handoff.put(i)
        handoff.put(None)

    def consumer() -> None:
        while handoff.get() is not None:
            pass

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    threads += [threading.Thread(target=producer), threading.Thread(target=consumer)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def asyncio_workload(scale: int) -> None:
    """Tasks handing items over queues, sharing a lock, and resolving each other's futures."""
    async def main() -> None:
        inbox: asyncio.Queue = asyncio.Queue(maxsize=32)
        lock = asyncio.Lock()
        shared = [0]
        loop = asyncio.get_running_loop()

        async def producer(count: int) -> None:
            for i in range(count):
                await inbox.put(i)
            await inbox.put(None)

        async def consumer() -> None:
            while (item := await inbox.get()) is not None:
                async with lock:
                    shared[0] += item
                    await asyncio.sleep(0)
                reply = loop.create_future()
                loop.call_soon(reply.set_result, sum(range(50)))
                await reply

        count = 20_000 * scale
        await asyncio.gather(producer(count), consumer(), *(worker() for _ in range(20)))

    async def worker() -> None:
        for _ in range(500 * scale):
            await asyncio.sleep(0)
            sum(range(100))

    asyncio.run(main())


def per_call(loop: Callable[[int], None], calls: int = 200_000, batches: int = 9) -> float:
    samples = []
    for _ in range(batches):
        start = time.perf_counter()
        loop(calls)
        samples.append((time.perf_counter() - start) / calls)
    return statistics.median(samples)


def lock_loop(lock: object) -> Callable[[int], None]:
    def loop(n: int) -> None:
        for _ in range(n):
            with lock:  # type: ignore[attr-defined]
                pass

    return loop


def in_a_thread(measure: Callable[[], object]) -> object:
    """``measure()`` run on a thread other than the main one (which takes a safer, dearer
    path: see hooks/primitives.py on signals)."""
    result: list[object] = []
    worker = threading.Thread(target=lambda: result.append(measure()))
    worker.start()
    worker.join()
    return result[0]


def paired_per_call(plain: Callable[[int], None], instrumented: Callable[[int], None],
                    calls: int = 200_000, batches: int = 15) -> tuple[float, float]:
    """Seconds per call of each, their batches alternated (the machine's drift hits both)."""
    times: dict[int, list[float]] = {0: [], 1: []}
    for _ in range(batches):
        for side, loop in enumerate((plain, instrumented)):
            start = time.perf_counter()
            loop(calls)
            times[side].append((time.perf_counter() - start) / calls)
    return statistics.median(times[0]), statistics.median(times[1])


def bench_lock_call() -> None:
    labotel.start(contention_profiling=True, **OPTIONS)
    try:
        lock = threading.Lock()
        assert type(lock).__name__ == "InstrumentedLock"
        loops = lock_loop(_thread.allocate_lock()), lock_loop(lock)
        main = paired_per_call(*loops)
        other = in_a_thread(lambda: paired_per_call(*loops))  # type: ignore[arg-type]
    finally:
        labotel.shutdown()
    for where, (plain, profiled) in (("main thread", main), ("another thread", other)):
        print(f"uncontended `with lock:`, {where}: plain {plain * 1e9:.0f} ns, with contention "
              f"profiling {profiled * 1e9:.0f} ns (+{(profiled - plain) * 1e9:.0f} ns)")


def thread_cpu(name: str) -> float | None:
    """CPU seconds the labotel thread ``name`` has used so far (Linux), else None."""
    for thread in threading.enumerate():
        if thread.name == name:
            clock = thread_cpu_clock(thread)
            try:
                return time.clock_gettime(clock) if clock is not None else None
            except OSError:
                return None
    return None


def compare(title: str, workload: Callable[[], None], treatment: dict, baseline: dict,
            rounds: int, target: str, own_thread: str | None = None) -> None:
    cpu: dict[bool, list[float]] = {False: [], True: []}
    own_share: list[float] = []

    def run(options: dict, on: bool) -> float:
        labotel.start(**options)
        try:
            # Process CPU time too: less disturbed than wall time by other jobs on the box.
            before = time.process_time()
            own_before = thread_cpu(own_thread) if on and own_thread else None
            elapsed = timed(workload)
            cpu[on].append(time.process_time() - before)
            if own_before is not None:
                own_share.append((thread_cpu(own_thread) - own_before) / elapsed)
            return elapsed
        finally:
            labotel.shutdown()

    run(baseline, False)  # warm-up
    cpu[False].clear()
    ratio, base, treated = interleaved_ratio(lambda: run(baseline, False),
                                             lambda: run(treatment, True), rounds)
    cpu_ratio = statistics.median(t / b for b, t in zip(cpu[False], cpu[True], strict=True))
    print(f"{title}: off {base:.3f} s, on {treated:.3f} s; ratio {ratio:.3f}{target}; "
          f"process CPU ratio {cpu_ratio:.3f}", flush=True)
    if own_share:
        print(f"  {own_thread} thread's own CPU: {100 * statistics.median(own_share):.3f}% of "
              "the run", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--scale", type=int, default=1)
    parser.add_argument("--only", choices=["lock", "mixed", "locks", "asyncio", "watchdog"])
    parser.add_argument("--rate", type=int, default=None,
                        help="contention_profile_rate in ns (default: the option's default)")
    args = parser.parse_args()
    off = dict(OPTIONS)
    on = dict(OPTIONS, contention_profiling=True)
    if args.rate is not None:
        on["contention_profile_rate"] = args.rate
    scale, rounds = args.scale, args.rounds
    benches = {
        "lock": bench_lock_call,
        "mixed": lambda: compare("mixed workload, contention profiling",
                                 lambda: mixed_workload(scale), on, off, rounds,
                                 "  (target <= 1.02)"),
        "locks": lambda: compare("lock-heavy workload, contention profiling",
                                 lambda: lock_heavy(scale), on, off, rounds, ""),
        "asyncio": lambda: compare("asyncio workload, contention profiling",
                                   lambda: asyncio_workload(scale), on, off, rounds, ""),
        # With the runtime collectors on both sides, as labotel starts by default: their
        # lag probe keeps a timer pending on the loop, which alone makes asyncio read the
        # clock twice more per loop pass (about 4% on this workload, on either side).
        "watchdog": lambda: compare("asyncio workload, blocked-loop watchdog",
                                    lambda: asyncio_workload(scale),
                                    dict(OPTIONS, runtime_metrics=True,
                                         loop_block_detection=True),
                                    dict(OPTIONS, runtime_metrics=True), rounds,
                                    "  (target <= 1.01)", "labotel-loop-watchdog"),
    }
    for name, bench in benches.items():
        if args.only in (None, name):
            bench()


if __name__ == "__main__":
    main()
