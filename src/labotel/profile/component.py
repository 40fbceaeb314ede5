"""The profiling component: owns the samplers, the heap-profiling lease and the routes."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from labotel.component import Component
from labotel.profile import heap
from labotel.profile.backends import Backends
from labotel.profile.cpu import CPU, WALL, ProfileSlot
from labotel.profile.routes import PprofRoutes

if TYPE_CHECKING:
    from labotel.monitor import Monitor


class ProfilingComponent(Component):
    name = "profile"

    def start(self, monitor: Monitor) -> None:
        self.monitor = monitor
        settings = monitor.settings
        self.backends = Backends(settings.profile_backend, settings.profile_cpu_budget)
        self.cpu = ProfileSlot(CPU, self.backends.start)
        self.wall = ProfileSlot(WALL, self.backends.start)
        self.stopping = threading.Event()  # wakes requests waiting out ?seconds= at shutdown
        self._heap_lease = False
        if monitor.settings.heap_profiling:
            heap.acquire(monitor.settings.heap_profile_frames)
            self._heap_lease = True
        PprofRoutes(self).register()

    def stop(self) -> None:
        self.stopping.set()
        self.cpu.cancel()
        self.wall.cancel()
        if self._heap_lease:
            self._heap_lease = False
            heap.release()

    def after_fork_in_child(self) -> None:
        # Sampler threads and in-flight requests stayed in the parent.
        self.cpu.reset_after_fork()
        self.wall.reset_after_fork()
        self.backends.reset_after_fork()
        heap.reset_after_fork(held=1 if self._heap_lease else 0)
