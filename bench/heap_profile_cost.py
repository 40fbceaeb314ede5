"""What a heap profile costs a process with many live allocations, under the tracemalloc
that heap profiling keeps running: labotel's grouping of the traces per stack against
tracemalloc's own ``Snapshot.statistics("traceback")`` (what labotel used before), on the
same snapshot in the same run; then ``GET /debug/pprof/heap`` and the index page.

    uv run python bench/heap_profile_cost.py [--blocks 200000] [--frames 16]

Each of the ``--blocks`` small lists is two traced allocations (the list and its item
storage), plus the list that holds them.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
import urllib.request
from collections.abc import Callable
from typing import Any

import labotel
from labotel.profile import heap


def timed(action: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    began = time.perf_counter()
    result = action(*args)
    return time.perf_counter() - began, result


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=600) as reply:
        return reply.read()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=200_000)
    parser.add_argument("--frames", type=int, default=16)
    options = parser.parse_args()
    monitor = labotel.start(admin_address="127.0.0.1:0", service_name="heap-cost",
                            heap_profiling=True, heap_profile_frames=options.frames,
                            metrics_exporter="none", traces_exporter="none")
    try:
        keep = [[i] for i in range(options.blocks)]
        took, snapshot = timed(heap.snapshot, False)
        print(f"{len(snapshot.traces)} traces, {options.frames} frames; take_snapshot {took:.3f} s;"
              f" tracemalloc holds {tracemalloc.get_tracemalloc_memory() / 2**20:.1f} MiB")
        ours, totals = timed(heap.stack_totals, snapshot)
        public, stats = timed(snapshot.statistics, "traceback")
        print(f"grouping per stack: labotel {ours:.3f} s ({len(totals)} stacks), "
              f"Snapshot.statistics {public:.3f} s ({len(stats)} stacks): "
              f"{public / ours:.0f}x")
        del snapshot, stats, totals
        url = monitor.admin_url + "/debug/pprof/"
        for name in ("heap", "heap", "", ""):
            took, _ = timed(fetch, url + name)
            print(f"GET /debug/pprof/{name}: {took:.3f} s")
        del keep
    finally:
        labotel.shutdown()


if __name__ == "__main__":
    main()
