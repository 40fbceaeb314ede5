"""Switches that provoke each problem labotel detects, on demand.

Each fault runs in its own thread until switched off (the leaks keep what they leaked:
that is what a leak is; restarting the demo frees it).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import labotel

FAULTS = {
    "race": "two threads update a shared price cache without a lock",
    "memory-leak": "an audit log that keeps ~1 MB/s of request payloads forever",
    "thread-leak": "a consumer thread per request that waits forever on an event",
    "task-leak": "an asyncio task per request on the relay loop that never finishes",
    "cpu-burn": "a thread computing prices in a hot loop",
    "loop-block": "a coroutine on the relay loop that signs each batch with a blocking "
                  "time.sleep(0.3) every second",
}

audit_log: list[bytes] = []  # the memory leak keeps its payloads here
_never = threading.Event()  # leaked threads wait on this forever
pending_acks: list[asyncio.Future] = []  # the task leak's waiters hang off these


def _record_audit_entry() -> None:
    audit_log.append(bytes(10_000))  # the leaking line: 100 of these per second


def _stuck_consumer() -> None:
    _never.wait()


async def _sign_batch() -> None:
    time.sleep(0.3)  # the blocking line: a synchronous call inside a coroutine


def _price_of(item: int) -> float:
    total = 0.0
    for i in range(20_000):
        total += (item * i) % 7 / 3.0
    return total


class Faults:
    def __init__(self, loop_source: Callable[[], asyncio.AbstractEventLoop | None]):
        self._loop_source = loop_source
        self._stops: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self.price_cache = labotel.shared({}, "price_cache")

    def state(self) -> dict[str, dict]:
        with self._lock:
            return {name: {"enabled": name in self._stops, "what": what}
                    for name, what in FAULTS.items()}

    def enable(self, name: str) -> None:
        if name not in FAULTS:
            raise KeyError(name)
        with self._lock:
            if name in self._stops:
                return
            stop = self._stops[name] = threading.Event()
        targets = {"race": self._race, "memory-leak": self._memory_leak,
                   "thread-leak": self._thread_leak, "task-leak": self._task_leak,
                   "cpu-burn": self._cpu_burn, "loop-block": self._loop_block}
        threading.Thread(target=targets[name], args=(stop,), name=f"fault-{name}",
                         daemon=True).start()

    def disable(self, name: str) -> None:
        if name not in FAULTS:
            raise KeyError(name)
        with self._lock:
            stop = self._stops.pop(name, None)
        if stop is not None:
            stop.set()

    def disable_all(self) -> None:
        for name in list(self._stops):
            self.disable(name)

    # -- the faults ----------------------------------------------------------------
    def _race(self, stop: threading.Event) -> None:
        def update_prices(offset: int) -> None:
            while not stop.is_set():
                for item in range(8):
                    current = self.price_cache.get(item, 0.0)  # read ...
                    self.price_cache[item] = current + offset  # ... then write, no lock
                time.sleep(0.05)

        workers = [threading.Thread(target=update_prices, args=(n,), name=f"price-updater-{n}",
                                    daemon=True) for n in (1, 2)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()

    def _memory_leak(self, stop: threading.Event) -> None:
        # many small entries rather than a few large ones, as request payloads come: with
        # 10 of 100 KB a second, attribution's 0.05 s bursts on a starved machine sometimes
        # caught none, and the leak was reported without its line
        while not stop.wait(0.01):
            _record_audit_entry()

    def _thread_leak(self, stop: threading.Event) -> None:
        while not stop.wait(0.1):
            threading.Thread(target=_stuck_consumer, name="order-consumer", daemon=True).start()

    def _task_leak(self, stop: threading.Event) -> None:
        async def wait_for_ack(ack: asyncio.Future) -> None:
            await ack  # nobody ever acknowledges

        def spawn() -> None:
            loop = asyncio.get_running_loop()
            ack = loop.create_future()
            pending_acks.append(ack)  # kept "until acknowledged": forever
            loop.create_task(wait_for_ack(ack))

        while not stop.wait(0.1):
            loop = self._loop_source()
            if loop is not None and loop.is_running():
                loop.call_soon_threadsafe(spawn)

    def _loop_block(self, stop: threading.Event) -> None:
        while not stop.wait(1.0):
            loop = self._loop_source()
            if loop is not None and loop.is_running():
                asyncio.run_coroutine_threadsafe(_sign_batch(), loop)

    def _cpu_burn(self, stop: threading.Event) -> None:
        item = 0
        while not stop.is_set():
            _price_of(item)
            item += 1
