"""The profiling component: owns the samplers, the heap-profiling lease and the routes."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from labotel import fork_safe
from labotel.component import Component
from labotel.profile import heap
from labotel.profile.backends import Backends
from labotel.profile.cpu import CPU, WALL, ProfileSlot
from labotel.profile.routes import PprofRoutes

if TYPE_CHECKING:
    from labotel.context import Context
    from labotel.server.http import Request


class ProfilingComponent(Component):
    name = "profile"

    def start(self, context: Context) -> None:
        self.context = context
        settings = context.settings
        self.backends = Backends(settings.profile_backend, settings.profile_cpu_budget)
        self.cpu = ProfileSlot(CPU, self.backends.start)
        self.wall = ProfileSlot(WALL, self.backends.start)
        self.stopping = threading.Event()
        self._waiting: set[threading.Event] = set()  # requests waiting out ?seconds=
        self._waiting_lock = fork_safe.lock()
        self._heap_lease = False
        if settings.heap_profiling:
            heap.acquire(settings.heap_profile_frames)
            self._heap_lease = True
        PprofRoutes(self).register()

    def wait(self, request: Request, seconds: float) -> None:
        """Sleep out a profile's ``seconds``; returns early when the request is cancelled
        (the client hung up) or labotel stops (then the request is cancelled too)."""
        cancelled = request.cancelled
        with self._waiting_lock:
            if self.stopping.is_set():
                return
            self._waiting.add(cancelled)
        try:
            cancelled.wait(seconds)
        finally:
            with self._waiting_lock:
                self._waiting.discard(cancelled)

    def end_requests(self) -> None:
        with self._waiting_lock:
            self.stopping.set()
            for cancelled in self._waiting:
                cancelled.set()

    def stop(self) -> None:
        self.end_requests()
        self.cpu.cancel()
        self.wall.cancel()
        if self._heap_lease:
            self._heap_lease = False
            heap.release()

    def after_fork_in_child(self) -> None:
        # Sampler threads and in-flight requests stayed in the parent; a request's thread
        # there may have been inside one of these events at the fork (their locks)
        self.stopping = threading.Event()
        self._waiting = set()
        self.cpu.reset_after_fork()
        self.wall.reset_after_fork()
        self.backends.reset_after_fork()
        heap.reset_after_fork(held=1 if self._heap_lease else 0)
