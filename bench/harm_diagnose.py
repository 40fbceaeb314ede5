"""What labotel was doing in a harm scenario's lowest seconds.

``bench/harm.py`` says how low the application's worst second went; this says why. It runs
one scenario in this process (a baseline with labotel off, then on) with timers on
labotel's background steps (memory samples and their collections, attribution's census
walk, bursts and observations, tracemalloc leases), garbage-collection callbacks, and the
CPU of labotel's threads read from ``/proc`` every 100 ms. It prints each aligned 1-second
window's throughput (as a ratio of the baseline median) with the steps that overlapped
it, the lowest windows in 100 ms buckets, and each step's CPU per call.

    uv run python bench/harm_diagnose.py leak_attribution [--seconds 120]

The timers wrap private methods of labotel's own classes: a renamed one is named in the
error. The timers and the sampler cost a little themselves, so the ratios here run a few
percent under ``harm.py``'s, and their records grow (about 1 MB a minute): in a scenario
with leak detection's default rate that can start an attribution ``harm.py`` would not.
"""

from __future__ import annotations

import argparse
import collections
import gc
import os
import statistics
import sys
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import labotel  # noqa: E402
from bench import harm, harm_scenarios  # noqa: E402
from labotel.detect import attribution, census, memory  # noqa: E402
from labotel.profile import heap  # noqa: E402

LOW = 0.85  # windows under this ratio are listed as low
# Collections shorter than this are not recorded: hundreds a second, they would make this
# tool's own records grow fast enough for labotel to attribute them as a leak.
GC_RECORDED = 0.001
Event = tuple[str, float, float]  # (step, began, ended), time.monotonic()


class Timers:
    """Wall intervals and thread CPU of labotel's steps, and of garbage collections."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.cpu: collections.defaultdict[str, list[float]] = collections.defaultdict(list)
        self._gc_began = 0.0
        self._traced_since: float | None = None

    def wrap(self, owner: Any, name: str, step: str) -> None:
        original = getattr(owner, name)  # AttributeError names what was renamed

        def timed(*args: Any, **kwargs: Any) -> Any:
            began, cpu = time.monotonic(), time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                self.events.append((step, began, time.monotonic()))
                self.cpu[step].append(time.thread_time() - cpu)

        setattr(owner, name, timed)

    def install(self) -> None:
        self.wrap(memory.MemoryLeakDetector, "take_sample", "sample")
        self.wrap(memory.MemoryLeakDetector, "_collect", "sample gc.collect")
        self.wrap(census, "take_census", "census walk")
        self.wrap(attribution.Attribution, "_observe", "observe")
        self.wrap(attribution.Attribution, "finish", "attribution finish")
        self.wrap(attribution, "_trace_back_added", "trace back")
        self._wrap_tracing()
        gc.callbacks.append(self._on_gc)

    def _wrap_tracing(self) -> None:
        """tracemalloc on from a lease to its release (attribution's bursts)."""
        acquire, release = heap.acquire, heap.release

        def leased(frames: int) -> None:
            acquire(frames)
            self._traced_since = time.monotonic()

        def released() -> None:
            began, self._traced_since = self._traced_since, None
            if began is not None:
                self.events.append(("TRACING", began, time.monotonic()))
            release()

        heap.acquire, heap.release = leased, released  # type: ignore[assignment]

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        now = time.monotonic()
        if phase == "start":
            self._gc_began = now
        elif now - self._gc_began >= GC_RECORDED:
            self.events.append((f"gc{info['generation']}", self._gc_began, now))

    def overlap(self, begin: float, end: float) -> dict[str, float]:
        """Seconds of each step inside [begin, end)."""
        inside: dict[str, float] = collections.defaultdict(float)
        for step, began, ended in self.events:
            seconds = min(ended, end) - max(began, begin)
            if seconds > 0:
                inside[step] += seconds
        return inside


class ThreadCPU:
    """labotel's threads' CPU seconds, read from /proc every 100 ms."""

    def __init__(self) -> None:
        self.readings: list[tuple[float, dict[str, float]]] = []
        self.stop = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._run, name="diagnose-cpu", daemon=True).start()

    def _run(self) -> None:
        while not self.stop.wait(0.1):
            self.readings.append((time.monotonic(), _threads_cpu()))

    def used(self, begin: float, end: float) -> dict[str, float]:
        """CPU seconds each thread used between the readings nearest the ends."""
        before = min(self.readings, key=lambda r: abs(r[0] - begin))[1]
        after = min(self.readings, key=lambda r: abs(r[0] - end))[1]
        return {name: after[name] - before.get(name, 0.0) for name in after
                if after[name] > before.get(name, 0.0)}


def _threads_cpu() -> dict[str, float]:
    """labotel's threads' CPU seconds so far, by name (threads of one name summed)."""
    by_name: dict[str, float] = collections.defaultdict(float)
    for name, seconds in harm.labotel_threads_cpu():
        by_name[name] += seconds
    return by_name


def _describe(steps: dict[str, float]) -> str:
    return " ".join(f"{step}={seconds * 1000:.0f}ms" for step, seconds in sorted(steps.items()))


def run(name: str, seconds: float, baseline: float) -> None:
    timers, cpu = Timers(), ThreadCPU()
    timers.install()
    ctx = harm_scenarios.Context()
    scenario = harm_scenarios.REGISTRY[name]()
    os.environ.update(scenario.environment())
    # imports first: under the workload's threads they take seconds (harm.py's start_s)
    labotel.start(admin_address="127.0.0.1:0", **scenario.options())
    labotel.shutdown()
    work = harm.Workload(ctx)
    work.start()
    scenario.app_side(ctx)
    cpu.start()
    time.sleep(baseline)
    median = statistics.median(work.windows(work.origin + 1.0, time.monotonic()))
    monitor = labotel.start(admin_address="127.0.0.1:0", **scenario.options())
    ctx.monitor_url = monitor.admin_url
    scenario.labotel_side(ctx)
    on_began = time.monotonic()
    time.sleep(seconds)
    ctx.labotel_stop.set()
    figures = harm.monitor_figures(monitor)
    labotel.shutdown()
    cpu.stop.set()
    ctx.app_stop.set()
    work.stop.set()
    scenario.close()

    first = work.bucket(on_began) + 1
    last = work.bucket(on_began + seconds)
    buckets = [sum(b[k] for b in work.buckets) for k in range(first, last)]
    windows = []
    for k in range(0, len(buckets) - 9, 10):
        began = work.origin + (first + k) * harm.BUCKET
        windows.append((began, sum(buckets[k:k + 10]) / median))
    records = len(timers.events) * 120 + len(cpu.readings) * 600  # bytes, roughly
    print(f"{name}: {seconds:.0f} s on, baseline median {median:.0f} units/s; labotel: "
          f"{figures.get('memory_detector')}; this tool's records ~{records / 1e6:.1f} MB\n")
    for began, ratio in windows:
        threads = cpu.used(began, began + 1.0)
        mark = "LOW" if ratio < LOW else "   "
        print(f"{mark} t={began - on_began:6.1f} s  {ratio:.2f} | "
              f"{_describe(timers.overlap(began, began + 1.0))} | labotel CPU "
              f"{_describe(threads)}")
    print("\nthe lowest windows, in 100 ms buckets:")
    for began, ratio in sorted(windows, key=lambda w: w[1])[:5]:
        print(f"  t={began - on_began:.1f} s ({ratio:.2f})")
        for k in range(work.bucket(began) - 2, work.bucket(began) + 12):
            bucket_began = work.origin + k * harm.BUCKET
            share = sum(b[k] for b in work.buckets) / (median * harm.BUCKET)
            steps = timers.overlap(bucket_began, bucket_began + harm.BUCKET)
            print(f"    {bucket_began - on_began:7.1f} s {share:5.2f} | {_describe(steps)}")
    low = [w for w in windows if w[1] < LOW]
    print(f"\n{len(low)} of {len(windows)} windows under {LOW}; steps in them, on average:")
    for step in sorted({step for step, _, _ in timers.events}):
        in_low = [timers.overlap(b, b + 1.0).get(step, 0.0) for b, _ in low]
        others = [timers.overlap(b, b + 1.0).get(step, 0.0) for b, r in windows if r >= LOW]
        print(f"  {step:20s} low {1000 * statistics.fmean(in_low or [0]):7.1f} ms   "
              f"others {1000 * statistics.fmean(others or [0]):7.1f} ms")
    print("\nCPU per call of each step (on the thread that ran it):")
    for step, costs in sorted(timers.cpu.items()):
        print(f"  {step:20s} {len(costs):6d} calls  mean {1e6 * statistics.fmean(costs):8.1f} us"
              f"  max {1000 * max(costs):6.1f} ms")
    traced = [ended - began for step, began, ended in timers.events if step == "TRACING"]
    if traced:
        print(f"\ntracemalloc leases: {len(traced)}, on for "
              f"{1000 * statistics.fmean(traced):.0f} ms on average, "
              f"{1000 * max(traced):.0f} ms at most")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=sorted(harm_scenarios.REGISTRY))
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--baseline", type=float, default=15.0)
    args = parser.parse_args()
    if args.baseline < 3:
        parser.error("--baseline must be at least 3 seconds (its first second is warm-up)")
    if args.seconds < 2:
        parser.error("--seconds must be at least 2")
    run(args.scenario, args.seconds, args.baseline)


if __name__ == "__main__":
    main()
