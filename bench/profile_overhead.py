"""Cost of a running CPU profile on the mixed workload: the same workload with and without
``/debug/pprof/profile`` sampling at the default 100 Hz for its whole duration, run
alternately in one process (labotel started on both sides), median ratio printed.
Target <= 1.05.

    uv run python bench/profile_overhead.py [--rounds 9] [--scale 2]
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
from bench.workload import interleaved_ratio, mixed_workload, timed  # noqa: E402
from labotel.profile.cpu import thread_cpu_clock  # noqa: E402
from labotel.profile.pprof import decode  # noqa: E402

SAMPLER = "labotel-cpu-profiler"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--scale", type=int, default=2)
    args = parser.parse_args()
    monitor = labotel.start(admin_address="127.0.0.1:0", profile_rate_hz=100)
    samples: list[int] = []
    sampler_share: list[float] = []  # the sampler thread's own CPU / workload time

    cpu_seconds: dict[str, list[float]] = {"base": [], "profiled": [], "warm-up": []}

    def workload(side: str = "base") -> float:
        # Process CPU time too: less disturbed than wall time by other jobs on the box.
        cpu_before = time.process_time()
        elapsed = timed(lambda: mixed_workload(args.scale))
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
        while not (sampler := [t for t in threading.enumerate() if t.name == SAMPLER]):
            time.sleep(0.001)
        clock = thread_cpu_clock(sampler[0])
        before = time.clock_gettime_ns(clock) if clock is not None else 0
        elapsed = workload("profiled")
        if clock is not None:
            sampler_share.append((time.clock_gettime_ns(clock) - before) / 1e9 / elapsed)
        request.join()  # the next round must not overlap this profile
        profile = decode(replies[0])
        samples.append(sum(s.value[0] for s in profile.sample))
        return elapsed

    try:
        ratio, base, treated = interleaved_ratio(workload, profiled, args.rounds)
    finally:
        labotel.shutdown()
    print(f"mixed workload: without profiling {base:.3f} s, with a 100 Hz CPU profile "
          f"running {treated:.3f} s")
    print(f"CPU samples per profile (median): {sorted(samples)[len(samples) // 2]}")
    if sampler_share:
        print(f"sampler thread's own CPU during the run (median): "
              f"{100 * sorted(sampler_share)[len(sampler_share) // 2]:.2f}% of the run time")
    cpu_ratio = statistics.median(
        t / b for b, t in zip(cpu_seconds["base"], cpu_seconds["profiled"], strict=True))
    print(f"process CPU time ratio = {cpu_ratio:.3f}")
    print(f"overhead ratio = {ratio:.3f}  (target <= 1.05)")


if __name__ == "__main__":
    main()
