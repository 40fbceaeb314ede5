"""Happens-before edges from the standard threading primitives: the race detector's
subscriber to the shared hooks (``labotel.hooks``).

The hooks call ``publish()`` where a thread lets go of something another thread will
take (a lock release, ``Thread.start``, ``submit``, ``call_soon_threadsafe``) and
``join(snapshot)`` where it takes it; ``release_into``/``acquire_from`` do the same
through a clock kept on an object many threads release into (an Event, a queue, an early
Condition). The edges the hooks deliver:

- ``threading.Lock``/``RLock`` made after ``start()``, and every Condition, Semaphore,
  BoundedSemaphore, Event, Barrier, queue and Future built on them: release -> acquire;
- ``Thread.start`` / ``join`` / ``is_alive() == False`` (also ``Timer``): fork and join;
- ``Event.set`` -> ``wait()``/``is_set()`` returning True (``is_set`` takes no lock);
- ``with cond:`` and ``cond.wait()`` on a Condition (so also a Semaphore or Barrier)
  created before ``start()``, whose lock is a plain one;
- ``queue.SimpleQueue`` (C code) is replaced by a subclass: ``put`` -> ``get``;
- ``queue.Queue.put`` -> ``get``, ``task_done`` -> ``join`` and ``ThreadPoolExecutor``
  submit -> task also for queues/executors created before ``start()``;
- ``loop.call_soon_threadsafe`` -> the callback on the loop's thread (which is how
  ``run_coroutine_threadsafe`` and ``await loop.run_in_executor(...)`` hand over).

A failing edge is counted and logged once through ``on_failure``; the primitive itself
always goes ahead.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from labotel import hooks
from labotel.detect.vectorclock import attach, final_snapshot, usable

SUBSCRIBER = "detect.races"


_state = usable  # the calling thread's state, None while the detector is busy on it


class HappensBefore:
    """The edges subscriber: vector-clock snapshots handed from releaser to acquirer."""

    def __init__(self, on_failure: Callable[[], None]):
        self._on_failure = on_failure

    def failed(self) -> None:
        self._on_failure()

    def publish(self) -> tuple | None:
        """The calling thread's clock snapshot (it then starts a new epoch); None if ignored."""
        state = _state()
        return state.release() if state is not None else None

    def join(self, snapshot: tuple | None) -> None:
        """Order the calling thread after ``snapshot``."""
        if snapshot is not None:
            state = _state()
            if state is not None:
                state.acquire(snapshot)

    def release_into(self, holder: Any, attribute: str) -> None:
        state = _state()
        if state is not None:
            attach(holder, attribute).release(state)

    def acquire_from(self, holder: Any, attribute: str) -> None:
        clock = holder.__dict__.get(attribute)
        state = _state() if clock is not None else None
        if state is not None:
            clock.acquire(state)

    def thread_joined(self, thread: threading.Thread) -> None:
        self.join(final_snapshot(thread))


def install(on_failure: Callable[[], None], adopt: bool) -> int:
    """Start receiving edges (hooks are live once this returns); returns adopted globals."""
    return hooks.subscribe(SUBSCRIBER, edges=HappensBefore(on_failure), adopt=adopt)


def uninstall() -> None:
    hooks.unsubscribe(SUBSCRIBER)
