"""A labotel process that gets caught: a data race, a thread leak and a memory leak.

Run by the alerting integration tests as a subprocess; prints its debug-server URL as the
first line of stdout, then keeps its problems going until it is terminated.
"""

from __future__ import annotations

import sys
import threading
import time

import labotel

STOP = threading.Event()
never = threading.Event()  # leaked threads wait on this forever
hoard: list[bytes] = []  # the memory leak keeps its allocations here


def update_inventory() -> None:
    # Two threads write the same resource with no lock between them: a race.
    for _ in range(3):
        labotel.record_access("inventory", write=True)
        time.sleep(0.01)


def stuck_consumer() -> None:
    never.wait()


def leak_threads(count: int, interval: float) -> None:
    for _ in range(count):
        if STOP.is_set():
            return
        threading.Thread(target=stuck_consumer, name="stuck-consumer", daemon=True).start()
        time.sleep(interval)


def leak_memory(chunk: int, interval: float, limit: int) -> None:
    while not STOP.is_set() and len(hoard) * chunk < limit:
        hoard.append(bytes(chunk))
        time.sleep(interval)


def main() -> int:
    monitor = labotel.start(
        service_name="provoker", admin_address="127.0.0.1:0", race_detection=True,
        leak_sample_interval=0.25, leak_window=4.0, leak_attribution_seconds=1.5)
    print(monitor.admin_url, flush=True)
    writers = [threading.Thread(target=update_inventory, name=f"writer-{n}") for n in (1, 2)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    # What a failing component does: count the failure (labotel_internal_errors_total).
    monitor.reporter.component_failed("provoker.simulated")
    threading.Thread(target=leak_threads, args=(200, 0.05), daemon=True).start()
    threading.Thread(target=leak_memory, args=(256 * 1024, 0.05, 150 * 1024 * 1024),
                     daemon=True).start()
    try:
        while not STOP.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    labotel.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
