"""Budgets for labotel's background work: a share of the time, in short slices.

A Python loop on a labotel thread competes with the application's threads for the GIL:
run flat out for a second, it takes about half of that second from a CPU-bound app
thread. So long work (walking the application's objects for leak attribution) calls a
``Pacer`` between small steps: after each slice of ``slice_seconds`` of wall time it
sleeps long enough that the work takes at most ``share`` of the time, and the
application keeps the rest in every window. A reading asked for from outside (a metric
callback at every collection) is ``Reused`` while it would cost more than its share.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")
STALL_BUDGET = 0.1  # seconds a single uninterruptible step may hold the GIL (a gc.collect())


class Stopped(Exception):
    """The paced work was asked to stop."""


class Pacer:
    def __init__(self, share: float, slice_seconds: float = 0.005,
                 stop: threading.Event | None = None, seconds: float | None = None) -> None:
        self.share = share
        self.slice_seconds = slice_seconds
        self.stop = stop or threading.Event()
        # wall-time limit for the whole work (None: none); the work checks ``expired``
        self.deadline = None if seconds is None else time.monotonic() + seconds
        self.worked = 0.0  # seconds of work so far
        self.slept = 0.0
        self._slice_began = time.perf_counter()

    @property
    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def __call__(self) -> None:
        """Between two small steps: sleep if this slice is used up; raise ``Stopped``."""
        used = time.perf_counter() - self._slice_began
        if used < self.slice_seconds:
            return
        self.worked += used
        pause = used * (1.0 / self.share - 1.0)
        self.slept += pause
        if self.stop.wait(pause):
            raise Stopped
        self._slice_began = time.perf_counter()


class Reused(Generic[T]):
    """A reading that costs CPU (counting every task of a big asyncio service), taken at
    most as often as ``share`` of a core allows: until the last reading's CPU time divided
    by ``share`` has passed, callers get the last reading again. Callers may race; then
    both read, which costs once more and is harmless."""

    def __init__(self, share: float, read: Callable[[], T]) -> None:
        self.share = share
        self._read = read
        self._last: tuple[T] | None = None
        self.next_at = 0.0  # monotonic time from which a call reads afresh
        self.last_cpu = 0.0  # CPU seconds the last reading took

    def __call__(self) -> T:
        last, now = self._last, time.monotonic()
        if last is not None and now < self.next_at:
            return last[0]
        began = time.thread_time()
        value = self._read()
        self.last_cpu = time.thread_time() - began
        self._last, self.next_at = (value,), now + self.last_cpu / self.share
        return value

    def forget(self) -> None:
        """Read afresh next time (a forked child: the parent's reading is not its own)."""
        self._last, self.next_at = None, 0.0
