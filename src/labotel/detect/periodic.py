"""A daemon thread that calls one function every ``interval`` seconds until stopped.

The leak detectors sample on their own timer (nothing else would call them while the
application leaks quietly). A failure inside the function is handed to ``on_error`` and
the thread keeps ticking, so one bad sample never ends the detection for good.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from labotel import fork_safe
from labotel.component import Component
from labotel.config import Settings
from labotel.context import Context


class PeriodicThread:
    """``cpu_share``: the calls may take at most this share of a core on average; a call
    that took more CPU pushes the next one out (``spacing``), for as long as they do."""

    def __init__(self, name: str, interval: float, function: Callable[[], None],
                 on_error: Callable[[], None], cpu_share: float | None = None):
        self.name = name
        self.interval = interval
        self.cpu_share = cpu_share
        self.spacing = interval  # seconds from the last call's start to the next one's
        self.last_cpu = 0.0  # CPU seconds the last call took
        self._function = function
        self._on_error = on_error
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, first_delay: float = 0.0) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(first_delay,), name=self.name,
                                        daemon=True)
        self._thread.start()

    @property
    def stopping(self) -> threading.Event:
        """Set when the thread is asked to stop (long paced work inside a tick waits on it)."""
        return self._stop

    def stop(self, timeout: float = 1.0) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def restart_after_fork(self) -> None:
        """The parent's thread does not exist in a forked child: start a new one, whose
        first call comes one interval later. Called at once, a costly call (the thread
        sampler with 100 000 tasks) held the GIL while the fork hook started labotel's
        other threads, each waiting its turn: the child's own code ran 100 ms late."""
        self._thread = None
        self.start(first_delay=self.interval)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self, first_delay: float) -> None:
        stop = self._stop
        next_tick = time.monotonic() + first_delay
        if first_delay:
            stop.wait(first_delay)
        while not stop.is_set():
            began = time.thread_time()
            try:
                self._function()
            except Exception:
                self._on_error()
            self.last_cpu = time.thread_time() - began
            if self.cpu_share is not None:
                self.spacing = max(self.interval, self.last_cpu / self.cpu_share)
            # Fixed-rate ticks; after a long pause (a big GC, a suspended VM) skip ahead
            # instead of firing a burst of catch-up samples.
            next_tick += self.spacing
            if next_tick < time.monotonic():
                next_tick = time.monotonic() + self.interval
            stop.wait(max(next_tick - time.monotonic(), 0.0))


class SamplingDetector(Component):
    """A leak detector: ``tick()`` every ``leak_sample_interval`` on a thread of its own.

    Subclasses name the thread and the admin view they add to, read their options in
    ``configure()``, and keep all judging state in ``_reset()``, which also starts them
    afresh in a forked child.
    """

    thread_name = "labotel-sampler"
    view_name = ""
    cpu_share: float | None = None  # of a core the samples may take (None: no budget)

    def start(self, context: Context) -> None:
        self.context = context
        self.interval = context.settings.leak_sample_interval
        self.window = context.settings.leak_window
        self.configure(context.settings)
        self._lock = fork_safe.lock()
        self._reset()
        self._sampler = PeriodicThread(self.thread_name, self.interval, self.tick,
                                       self._failed, self.cpu_share)
        context.add_view(self.view_name, self.view)
        self._sampler.start()

    def configure(self, settings: Settings) -> None:
        """Read the detector's own options."""

    def _reset(self) -> None:
        raise NotImplementedError

    def tick(self) -> None:
        raise NotImplementedError

    def view(self) -> dict[str, Any]:
        raise NotImplementedError

    def stop(self) -> None:
        self._sampler.stop()

    def after_fork_in_child(self) -> None:
        self._reset()  # the parent's samples describe another process
        self._sampler.restart_after_fork()

    def _failed(self) -> None:
        self.context.failed(self.name)
