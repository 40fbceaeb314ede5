"""Where the in-process sampler's time goes, piece by piece: waking up (a sleep and a GIL
hand-over) with and without busy threads, ``sys._current_frames()`` with many threads,
reading the threads' CPU clocks, walking stacks (from scratch and incrementally), counting
a sample in the dict of stacks, and encoding the profile (protobuf + gzip).

    uv run python bench/sampler_costs.py
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from labotel.profile import cpu  # noqa: E402


def per_call_us(function: Callable[[], object], repeat: int = 2000) -> float:
    function()
    started = time.perf_counter_ns()
    for _ in range(repeat):
        function()
    return (time.perf_counter_ns() - started) / repeat / 1000


def switches(native_id: int) -> int:
    """Voluntary context switches of one thread: each is a sleep or a wait for the GIL."""
    with open(f"/proc/self/task/{native_id}/status") as status:
        for line in status:
            if line.startswith("voluntary_ctxt_switches"):
                return int(line.split()[1])
    return 0


def wake_up_cost(busy: int, seconds: float = 2.0) -> tuple[float, float]:
    """(own CPU per tick in us, blocking waits per tick) of a 100 Hz thread that does
    nothing but wake up, with ``busy`` threads spinning in Python."""
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            sum(range(1000))

    spinners = [threading.Thread(target=spin, daemon=True) for _ in range(busy)]
    for thread in spinners:
        thread.start()
    result: list[tuple[float, float]] = []

    def ticker() -> None:
        me = threading.current_thread().native_id
        cpu_start, waits_start, ticks = time.thread_time_ns(), switches(me), 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(0.01)
            ticks += 1
        result.append(((time.thread_time_ns() - cpu_start) / ticks / 1000,
                       (switches(me) - waits_start) / ticks))

    thread = threading.Thread(target=ticker)
    thread.start()
    thread.join()
    stop.set()
    for spinner in spinners:
        spinner.join()
    return result[0]


def nest(depth: int, stop: threading.Event) -> None:
    if depth:
        nest(depth - 1, stop)
    else:
        stop.wait()


def with_threads(count: int, depth: int,
                 measure: Callable[[list[threading.Thread]], str]) -> str:
    stop = threading.Event()
    threads = [threading.Thread(target=nest, args=(depth, stop), daemon=True)
               for _ in range(count)]
    for thread in threads:
        thread.start()
    time.sleep(0.05)
    try:
        return measure(threads)
    finally:
        stop.set()
        for thread in threads:
            thread.join()


def frames_and_clocks(_threads: list[threading.Thread]) -> str:
    sampler = cpu.Sampler(cpu.CPU, 100, lambda: None)
    sampler._refresh_threads(at_start=True)
    clocks = [state.clock for state in sampler._threads.values() if state.clock is not None]

    def read_clocks() -> None:
        for clock in clocks:
            time.clock_gettime_ns(clock)

    return (f"sys._current_frames() {per_call_us(sys._current_frames):.1f} us, "
            f"CPU clocks {per_call_us(read_clocks):.1f} us")


def walks(threads: list[threading.Thread]) -> str:
    sampler = cpu.Sampler(cpu.WALL, 100, lambda: None)
    frame = sys._current_frames()[threads[0].ident]
    state = cpu._ThreadState("t", None, None, 0)
    full = per_call_us(lambda: sampler.builder.frame_stack(frame), 500)

    def moved() -> None:  # the innermost frame moved: the incremental walk's usual case
        state.lasti = -1
        sampler._stack(state, frame)

    incremental = per_call_us(moved, 500)
    counts: dict = {}
    key = ("t", sampler._stack(state, frame))

    def count() -> None:
        values = counts.get(key)
        if values is None:
            counts[key] = [1, 10]
        else:
            values[0] += 1
            values[1] += 10

    return (f"full walk {full:.1f} us, incremental {incremental:.1f} us, "
            f"counting the sample {per_call_us(count):.2f} us")


def encoding(distinct: int) -> str:
    """Encode a profile of ``distinct`` different 30-frame stacks over 1,000 locations."""
    builder = cpu.new_builder(cpu.CPU, 10_000_000)
    locations = [builder.line_location(f"/app/module{line % 20}.py", line, f"f{line}")
                 for line in range(1000)]
    for index in range(distinct):
        stack = (locations[index % 1000], locations[index // 1000 % 1000]) + tuple(
            locations[(index * 7919 + depth * 104729) % 1000] for depth in range(28))
        builder.add(stack, [1, 10_000_000], (("thread", f"worker-{index % 8}"),))
    started = time.perf_counter()
    data = builder.encode()
    return (f"{len(builder.samples)} distinct samples of 30 frames: "
            f"{1000 * (time.perf_counter() - started):.0f} ms, {len(data) / 1024:.0f} KiB")


def main() -> None:
    print(f"Python {sys.version.split()[0]}")
    for busy in (0, 1, 4):
        cost, waits = wake_up_cost(busy)
        print(f"waking up at 100 Hz with {busy} busy threads: {cost:.1f} us own CPU and "
              f"{waits:.1f} blocking waits (sleep + GIL) per tick")
    for count in (10, 100, 1000):
        print(f"{count} threads: " + with_threads(count, 5, frames_and_clocks))
    for depth in (10, 50, 250):
        print(f"a stack {depth} frames deep: " + with_threads(1, depth, walks))
    for distinct in (1_000, 10_000, 60_000):
        print("encoding " + encoding(distinct))


if __name__ == "__main__":
    main()
