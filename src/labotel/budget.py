"""Budgets for labotel's background work: a share of the time, in short slices.

A Python loop on a labotel thread competes with the application's threads for the GIL:
run flat out for a second, it takes about half of that second from a CPU-bound app
thread. So long work (walking the application's objects for leak attribution) calls a
``Pacer`` between small steps: after each slice of ``slice_seconds`` of wall time it
sleeps long enough that the work takes at most ``share`` of the time, and the
application keeps the rest in every window.
"""

from __future__ import annotations

import threading
import time

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
