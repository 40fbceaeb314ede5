"""Cost of a 60 s CPU profile on the independent workload (allocation churn, four threads
on a queue and a lock, recursion), each run in a fresh process: pairs of runs with and
without a profile, in alternating order, median ratios of process CPU and wall time, for
each backend. Target <= 1.05.

    uv run python bench/profile_fresh.py [--pairs 7] [--rounds 900] [--backend in-process,py-spy]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PROFILE_SECONDS = 60


def child(backend: str, rounds: int) -> dict:
    """One run in this (fresh) process; ``backend`` "none" runs without a profile."""
    import labotel
    from bench.profiling import sampler_cpu_seconds, wait_until_profiling
    from bench.workload import queue_lock_recursion_workload
    from labotel.profile.pprof import decode

    monitor = labotel.start(admin_address="127.0.0.1:0",
                            profile_backend="auto" if backend == "none" else backend)
    replies: list[bytes] = []
    if backend != "none":
        url = f"{monitor.admin_url}/debug/pprof/profile?seconds={PROFILE_SECONDS}"
        threading.Thread(target=lambda: replies.append(
            urllib.request.urlopen(url, timeout=PROFILE_SECONDS + 30).read())).start()
        used = wait_until_profiling()
        assert used == backend, f"asked for {backend}, the profile was taken by {used}"
    time.sleep(1.0)  # both sides alike: the profile is under way before the work starts
    own = sampler_cpu_seconds(backend)
    cpu, wall = time.process_time(), time.perf_counter()
    queue_lock_recursion_workload(rounds)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    own = sampler_cpu_seconds(backend) - own
    labotel.shutdown()  # ends a running profile: its request gets what was sampled
    result = {"cpu": cpu, "wall": wall, "sampler_cpu": own}
    if backend != "none":
        deadline = time.monotonic() + 30
        while not replies and time.monotonic() < deadline:
            time.sleep(0.05)
        profile = decode(replies[0])
        result["samples"] = sum(s.value[0] for s in profile.sample)
        if wall > PROFILE_SECONDS - 2:
            result["warning"] = "the workload outlasted the profile"
    return result


def run(backend: str, rounds: int) -> dict:
    output = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", backend, "--rounds", str(rounds)],
        check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=900)
    parser.add_argument("--backend", default="in-process,py-spy")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.rounds)))
        return
    for backend in args.backend.split(","):
        pairs = []
        for index in range(args.pairs):
            order = ("none", backend) if index % 2 == 0 else (backend, "none")
            runs = {side: run(side, args.rounds) for side in order}
            pairs.append((runs["none"], runs[backend]))
            print(f"  pair {index + 1}: cpu {runs['none']['cpu']:.2f} -> "
                  f"{runs[backend]['cpu']:.2f} s, wall {runs['none']['wall']:.2f} -> "
                  f"{runs[backend]['wall']:.2f} s", flush=True)
        cpu = [t["cpu"] / b["cpu"] for b, t in pairs]
        wall = [t["wall"] / b["wall"] for b, t in pairs]
        own = [t["sampler_cpu"] / t["wall"] for _, t in pairs]
        where = "outside the process" if backend == "py-spy" else "inside the process"
        print(f"{backend}: process CPU ratio median {statistics.median(cpu):.3f} "
              f"(min {min(cpu):.3f}, max {max(cpu):.3f}); wall ratio median "
              f"{statistics.median(wall):.3f} (min {min(wall):.3f}, max {max(wall):.3f})")
        print(f"  sampler's own CPU {100 * statistics.median(own):.2f}% of one core ({where}); "
              f"samples per profile {statistics.median(t['samples'] for _, t in pairs):.0f} "
              f"for {statistics.median(t['cpu'] for _, t in pairs):.1f} s of process CPU",
              flush=True)


if __name__ == "__main__":
    main()
