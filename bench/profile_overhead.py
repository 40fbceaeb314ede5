"""Cost of a running CPU profile on the mixed workload: the same workload with and without
``/debug/pprof/profile`` sampling at the default 100 Hz for its whole duration, run
alternately in one process (labotel started on both sides), median ratio printed, for each
backend: the in-process sampler (with its default CPU budget) and py-spy. Target <= 1.05.

    uv run python bench/profile_overhead.py [--rounds 9] [--scale 2] [--backend in-process,py-spy]
        [--idle-threads 0] [--budget 0.01]

``--idle-threads N`` adds N threads blocked on an event for the whole run (a big thread
pool): every tick of the in-process sampler reads their CPU clocks. ``--budget`` is
``profile_cpu_budget``, which both backends keep to (py-spy since 2026-12-04, by its
rate; 1.0: no budget to speak of).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import labotel  # noqa: E402
from bench.profiling import sampler_cpu_seconds, wait_until_profiling  # noqa: E402
from bench.workload import interleaved_ratio, mixed_workload, timed  # noqa: E402
from labotel.profile.pprof import decode  # noqa: E402


def measure(backend: str, rounds: int, scale: int, budget: float) -> None:
    monitor = labotel.start(admin_address="127.0.0.1:0", profile_rate_hz=100,
                            profile_backend=backend, profile_cpu_budget=budget,
                            thread_limit=2 * threading.active_count() + 1000)
    samples: list[int] = []
    periods: list[int] = []
    sampler_share: list[float] = []  # the sampler's own CPU / workload time
    cpu_seconds: dict[str, list[float]] = {"base": [], "profiled": [], "warm-up": []}

    def workload(side: str = "base") -> float:
        # Process CPU time too: less disturbed than wall time by other jobs on the box.
        cpu_before = time.process_time()
        elapsed = timed(lambda: mixed_workload(scale))
        cpu_seconds[side].append(time.process_time() - cpu_before)
        return elapsed

    # The profile must outlast the workload: a whole number of seconds, with margin.
    seconds = math.ceil(workload("warm-up") * 1.5) + 1

    def profiled() -> float:
        replies: list[bytes] = []
        url = f"{monitor.admin_url}/debug/pprof/profile?seconds={seconds}"
        request = threading.Thread(
            target=lambda: replies.append(urllib.request.urlopen(url, timeout=120).read()))
        request.start()
        used = wait_until_profiling()
        assert used == backend, f"asked for {backend}, the profile was taken by {used}"
        before = sampler_cpu_seconds(backend)
        elapsed = workload("profiled")
        sampler_share.append((sampler_cpu_seconds(backend) - before) / elapsed)
        request.join()  # the next round must not overlap this profile
        profile = decode(replies[0])
        samples.append(sum(s.value[0] for s in profile.sample))
        periods.append(profile.period)
        return elapsed

    try:
        ratio, base, treated = interleaved_ratio(workload, profiled, rounds)
    finally:
        labotel.shutdown()
    cpu_ratio = statistics.median(
        t / b for b, t in zip(cpu_seconds["base"], cpu_seconds["profiled"], strict=True))
    where = "outside this process" if backend == "py-spy" else "inside this process"
    budget_note = f" (budget {100 * budget:g}% of one core)"
    print(f"{backend}{budget_note}: mixed workload without profiling {base:.3f} s, with a "
          f"100 Hz CPU profile running {treated:.3f} s")
    print(f"  CPU samples per profile (median): {statistics.median(samples):.0f}; sampling "
          f"period {statistics.median(periods) / 1e6:.1f} ms (median)")
    print(f"  sampler's own CPU during the run (median): "
          f"{100 * statistics.median(sampler_share):.2f}% of one core ({where})")
    print(f"  process CPU time ratio = {cpu_ratio:.3f}")
    print(f"  overhead ratio = {ratio:.3f}  (target <= 1.05)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--scale", type=int, default=2)
    parser.add_argument("--backend", default="in-process,py-spy")
    parser.add_argument("--idle-threads", type=int, default=0)
    parser.add_argument("--budget", type=float, default=0.01)
    args = parser.parse_args()
    release = threading.Event()
    idle = [threading.Thread(target=release.wait, daemon=True) for _ in range(args.idle_threads)]
    for thread in idle:
        thread.start()
    if idle:
        print(f"with {len(idle)} idle threads")
    try:
        for backend in args.backend.split(","):
            measure(backend, args.rounds, args.scale, args.budget)
    finally:
        release.set()


if __name__ == "__main__":
    main()
