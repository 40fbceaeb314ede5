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
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import labotel  # noqa: E402
from bench.workload import interleaved_ratio, mixed_workload, timed  # noqa: E402
from labotel.profile.pprof import decode  # noqa: E402

SAMPLER = "labotel-cpu-profiler"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--scale", type=int, default=2)
    args = parser.parse_args()
    monitor = labotel.start(admin_address="127.0.0.1:0", profile_rate_hz=100)
    samples: list[int] = []

    def workload() -> float:
        return timed(lambda: mixed_workload(args.scale))

    # The profile must outlast the workload: a whole number of seconds, with margin.
    seconds = math.ceil(workload() * 1.5) + 1

    def profiled() -> float:
        replies: list[bytes] = []
        url = f"{monitor.admin_url}/debug/pprof/profile?seconds={seconds}"
        request = threading.Thread(
            target=lambda: replies.append(urllib.request.urlopen(url, timeout=120).read()))
        request.start()
        while not any(t.name == SAMPLER for t in threading.enumerate()):
            time.sleep(0.001)
        elapsed = workload()
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
    print(f"overhead ratio = {ratio:.3f}  (target <= 1.05)")


if __name__ == "__main__":
    main()
