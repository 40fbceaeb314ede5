"""What labotel adds to forking a worker (gunicorn, multiprocessing): fork-to-ready time.

One round forks N children and times, for each, ``os.fork()`` until the child says it is
ready (after every at-fork hook ran: for labotel that is the new Resource, fresh gRPC
channels and export locks, restarted threads and a debug server bound on the next port).
Baseline rounds fork with labotel stopped, treatment rounds with it running (its defaults:
Prometheus reader, leak detectors, debug server), alternately in the same process.

    uv run python bench/fork_overhead.py [--forks 20]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import labotel  # noqa: E402
from bench.workload import interleaved_ratio  # noqa: E402


def fork_to_ready(forks: int) -> float:
    """Median seconds from fork() to the child's ready byte."""
    times = []
    for _ in range(forks):
        reader, writer = os.pipe()
        start = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            try:
                os.write(writer, b"r")
            finally:
                os._exit(0)
        os.read(reader, 1)
        times.append(time.perf_counter() - start)
        os.close(reader)
        os.close(writer)
        os.waitpid(pid, 0)
    return statistics.median(times)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--forks", type=int, default=20)
    args = parser.parse_args()
    def baseline() -> float:
        return fork_to_ready(args.forks)

    def treatment() -> float:
        labotel.start(admin_address=f"127.0.0.1:{free_port()}", service_name="fork-bench")
        try:
            return fork_to_ready(args.forks)
        finally:
            labotel.shutdown()

    ratio, base, treat = interleaved_ratio(baseline, treatment, rounds=7)
    print(f"fork-to-ready, median of {args.forks} forks per round, 7 rounds interleaved")
    print(f"  without labotel: {base * 1e3:.2f} ms")
    print(f"  with labotel:    {treat * 1e3:.2f} ms")
    print(f"  ratio:           {ratio:.2f}x  (+{(treat - base) * 1e3:.2f} ms per worker)")


if __name__ == "__main__":
    main()
