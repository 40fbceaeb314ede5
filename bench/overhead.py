"""Cost of ``labotel.start()`` with its defaults on a mixed workload (allocation and GC
churn, threads and queues, plain calls): the same workload with and without labotel,
run alternately in one process, median ratio printed. Target <= 1.02.

    uv run python bench/overhead.py [--rounds 9] [--scale 2]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import labotel  # noqa: E402
from bench.workload import interleaved_ratio, mixed_workload, timed  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--scale", type=int, default=2)
    args = parser.parse_args()

    def baseline() -> float:
        return timed(lambda: mixed_workload(args.scale))

    def with_labotel() -> float:
        labotel.start(admin_address="127.0.0.1:0")
        try:
            return timed(lambda: mixed_workload(args.scale))
        finally:
            labotel.shutdown()

    baseline()  # warm-up: imports, caches
    ratio, base, treated = interleaved_ratio(baseline, with_labotel, args.rounds)
    print(f"mixed workload: without labotel {base:.3f} s, with labotel.start() defaults "
          f"{treated:.3f} s")
    print(f"overhead ratio = {ratio:.3f}  (target <= 1.02)")


if __name__ == "__main__":
    main()
