"""labotel's cost in an asyncio service holding many pending tasks (a server with one task
per open connection): its CPU, and how late the event loop runs.

One process: N tasks wait on an event (default 100000, created, then one full collection
so the heap's debt is paid before measuring), and a ticker coroutine sleeps 10 ms at a
time, noting how late it wakes. Phases alternate labotel off / on (a fresh ``start()``
with the defaults, its first 3 s not counted) / off / ... and print, per phase, the
process's CPU as a share of a core, the worst and 99th-percentile wake-up delay, and the
full (generation 2) collections that ran and on which thread. The last lines are the on
phases against the off phases around them.

First, what creating those tasks costs in memory with labotel running (so that each
task's creation site is recorded) and without: each in a fresh process, RSS growth over
the creation.

    uv run python bench/many_tasks.py [--tasks 100000] [--phase 30] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import labotel  # noqa: E402

WARM_UP = 3.0  # seconds of each on phase not counted: start() and its first samples
TICK = 0.01


class FullCollections:
    """Generation-2 collections: how long each took and on which thread."""

    def __init__(self) -> None:
        self.began = 0.0
        self.seen: list[tuple[float, str]] = []

    def __call__(self, phase: str, info: dict) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self.began = time.perf_counter()
        else:
            self.seen.append((time.perf_counter() - self.began, threading.current_thread().name))


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


async def measure(seconds: float, collections: FullCollections) -> dict:
    delays: list[float] = []
    collections.seen.clear()
    cpu, end = cpu_seconds(), time.monotonic() + seconds
    while time.monotonic() < end:
        before = time.monotonic()
        await asyncio.sleep(TICK)
        delays.append(time.monotonic() - before - TICK)
    delays.sort()
    return {"cpu": (cpu_seconds() - cpu) / seconds, "worst": delays[-1],
            "p99": delays[int(len(delays) * 0.99)], "full": list(collections.seen)}


def describe(name: str, phase: dict) -> str:
    full = ", ".join(f"{took * 1000:.0f} ms on {thread}" for took, thread in phase["full"])
    return (f"{name:4} CPU {phase['cpu'] * 100:5.2f}% of a core, loop late by at most "
            f"{phase['worst'] * 1000:6.1f} ms (p99 {phase['p99'] * 1000:5.1f} ms), full "
            f"collections: {full or 'none'}")


async def run(tasks: int, phase: float, rounds: int) -> None:
    release = asyncio.Event()
    await asyncio.sleep(0)
    waiting = [asyncio.create_task(release.wait()) for _ in range(tasks)]
    await asyncio.sleep(0.5)
    gc.collect()  # the debt of creating them, paid before anything is measured
    collections = FullCollections()
    gc.callbacks.append(collections)
    offs, ons = [], []
    print(f"{tasks} pending tasks, {phase:g} s phases, {rounds} rounds")
    for round_number in range(rounds + 1):
        off = await measure(phase, collections)
        offs.append(off)
        print(describe("off", off))
        if round_number == rounds:
            break
        labotel.start(admin_address="")
        await asyncio.sleep(WARM_UP)
        on = await measure(phase, collections)
        labotel.shutdown()
        ons.append(on)
        print(describe("on", on))
    gc.callbacks.remove(collections)
    cost = [on["cpu"] - (offs[i]["cpu"] + offs[i + 1]["cpu"]) / 2 for i, on in enumerate(ons)]
    print(f"labotel's CPU (on minus the off phases around it): median "
          f"{statistics.median(cost) * 100:.2f}% of a core (range "
          f"{min(cost) * 100:.2f}-{max(cost) * 100:.2f})")
    print(f"worst loop delay on / off: {max(p['worst'] for p in ons) * 1000:.1f} / "
          f"{max(p['worst'] for p in offs) * 1000:.1f} ms; p99 (median of phases) "
          f"{statistics.median(p['p99'] for p in ons) * 1000:.1f} / "
          f"{statistics.median(p['p99'] for p in offs) * 1000:.1f} ms")
    release.set()
    await asyncio.gather(*waiting)


async def creation_growth(tasks: int, with_labotel: bool) -> None:
    """(In a child process) RSS growth of creating ``tasks`` tasks, printed in bytes."""
    import psutil

    if with_labotel:
        labotel.start(admin_address="", leak_sample_interval=3600)
    await asyncio.sleep(0.1)
    gc.collect()
    before = psutil.Process().memory_info().rss
    release = asyncio.Event()
    waiting = [asyncio.create_task(release.wait()) for _ in range(tasks)]
    await asyncio.sleep(0.5)
    gc.collect()
    print(psutil.Process().memory_info().rss - before)
    release.set()
    await asyncio.gather(*waiting)
    labotel.shutdown()


def memory_of_creation(tasks: int) -> None:
    grew = {}
    for with_labotel in (False, True):
        child = subprocess.run([sys.executable, __file__, "--tasks", str(tasks),
                                "--creation-child", "on" if with_labotel else "off"],
                               capture_output=True, text=True, check=True)
        grew[with_labotel] = int(child.stdout.split()[-1])
    extra = grew[True] - grew[False]
    print(f"creating {tasks} tasks grew RSS {grew[False] / 2**20:.1f} MB without labotel, "
          f"{grew[True] / 2**20:.1f} MB with it: labotel's part {extra / 2**20:.1f} MB "
          f"({extra / tasks:.0f} bytes a task)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--phase", type=float, default=30.0, help="seconds per phase")
    parser.add_argument("--rounds", type=int, default=3, help="on phases")
    parser.add_argument("--creation-child", choices=["on", "off"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.creation_child:
        asyncio.run(creation_growth(args.tasks, args.creation_child == "on"))
        return
    memory_of_creation(args.tasks)
    asyncio.run(run(args.tasks, args.phase, args.rounds))


if __name__ == "__main__":
    main()
