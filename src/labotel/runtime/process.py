"""Process-level metrics: CPU, memory, OS threads, file descriptors, context switches.

CPU times and context switches come from one ``getrusage()`` call; memory, OS threads and
descriptors from psutil's /proc readers. One snapshot serves every instrument of a
collection cycle."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

try:
    import resource
except ImportError:  # Windows: psutil answers instead
    resource = None  # type: ignore[assignment]

import psutil
from opentelemetry.metrics import CallbackOptions, Observation

from labotel.component import Component
from labotel.context import Context
from labotel.runtime.reading import SharedReading

SNAPSHOT_TTL = 0.2  # seconds a reading serves the later instruments of a collection cycle


class ProcessSnapshot:
    """A cached psutil reading of this process; started afresh after fork (new pid).

    ``forget()`` runs in a forked child (the monitor's fork hook), so no reading checks
    ``getpid()``: a system call, and the instruments of one collection read it seven times.
    """

    def __init__(self) -> None:
        self._reading = SharedReading(self._take)
        self._process: psutil.Process | None = None
        self._cpu_count = _available_cpus()
        self._last_cpu: tuple[float, float, float] | None = None

    def forget(self) -> None:
        """Drop the reading and the parent's process handle (a forked child)."""
        self._reading.forget()
        self._process, self._last_cpu = None, None

    def get(self, fresh: bool = False) -> dict[str, Any]:
        """The cached reading, or a new one if ``fresh`` or the cached one is stale."""
        return self._reading.get(0.0 if fresh else SNAPSHOT_TTL)

    def _take(self) -> dict[str, Any]:
        process = self._process
        if process is None:
            process = self._process = psutil.Process(os.getpid())
        cpu, ctx = _cpu_and_switches(process)
        # (no process.oneshot(): these three read three different /proc files)
        values = {
            "cpu": cpu,
            "memory": process.memory_info(),
            "threads": process.num_threads(),
            "ctx": ctx,
            "fds": process.num_fds() if hasattr(process, "num_fds") else None,
        }
        values["utilization"] = self._utilization(process, cpu)
        return values

    def _utilization(self, process: psutil.Process, cpu: Any) -> tuple[float, float]:
        """(user, system) share of the available CPUs since the previous reading.

        The first reading is measured since the process started, so the very first
        export is already a real figure (not 0).
        """
        wall = time.time()
        if self._last_cpu is None:
            previous = (process.create_time(), 0.0, 0.0)
        else:
            previous = self._last_cpu
        self._last_cpu = (wall, cpu.user, cpu.system)
        elapsed = max(wall - previous[0], 1e-6) * self._cpu_count
        return (max(cpu.user - previous[1], 0.0) / elapsed,
                max(cpu.system - previous[2], 0.0) / elapsed)


class CPUTimes(NamedTuple):
    user: float
    system: float


class ContextSwitches(NamedTuple):
    voluntary: int
    involuntary: int


def _cpu_and_switches(process: psutil.Process) -> tuple[CPUTimes, ContextSwitches]:
    """Both from one system call where there is getrusage (µs resolution, unlike times())."""
    if resource is None:
        times, ctx = os.times(), process.num_ctx_switches()
        return (CPUTimes(times.user, times.system),
                ContextSwitches(ctx.voluntary, ctx.involuntary))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return (CPUTimes(usage.ru_utime, usage.ru_stime),
            ContextSwitches(usage.ru_nvcsw, usage.ru_nivcsw))


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:
        return os.cpu_count() or 1


class ProcessCollector(Component):
    name = "runtime.process"

    def after_fork_in_child(self) -> None:
        self.snapshot.forget()

    def start(self, context: Context) -> None:
        self.snapshot = ProcessSnapshot()
        meter = context.meter

        def guard(callback: Callable[[CallbackOptions], Iterable[Observation]]) -> list:
            return [context.guarded(self.name, callback)]

        meter.create_observable_counter(
            "process.cpu.time", guard(self._cpu_time), unit="s",
            description="Total CPU seconds broken down by mode")
        meter.create_observable_gauge(
            "process.cpu.utilization", guard(self._cpu_utilization), unit="1",
            description="CPU time since the previous reading divided by elapsed time x CPUs")
        meter.create_observable_up_down_counter(
            "process.memory.usage", guard(self._rss), unit="By",
            description="Resident set size")
        meter.create_observable_up_down_counter(
            "process.memory.virtual", guard(self._vms), unit="By",
            description="Virtual memory size")
        meter.create_observable_up_down_counter(
            "process.thread.count", guard(self._threads), unit="{thread}",
            description="OS threads of the process (Python and native)")
        meter.create_observable_up_down_counter(
            "process.unix.file_descriptor.count", guard(self._fds), unit="{file_descriptor}",
            description="Open file descriptors")
        meter.create_observable_counter(
            "process.context_switches", guard(self._ctx), unit="{context_switch}",
            description="Context switches, voluntary and involuntary")

    def _cpu_time(self, _: CallbackOptions):
        # the cycle's first process instrument: every collection reads /proc afresh, even
        # one that follows the previous within SNAPSHOT_TTL
        cpu = self.snapshot.get(fresh=True)["cpu"]
        yield Observation(cpu.user, {"cpu.mode": "user"})
        yield Observation(cpu.system, {"cpu.mode": "system"})

    def _cpu_utilization(self, _: CallbackOptions):
        user, system = self.snapshot.get()["utilization"]
        yield Observation(user, {"cpu.mode": "user"})
        yield Observation(system, {"cpu.mode": "system"})

    def _rss(self, _: CallbackOptions):
        yield Observation(self.snapshot.get()["memory"].rss)

    def _vms(self, _: CallbackOptions):
        yield Observation(self.snapshot.get()["memory"].vms)

    def _threads(self, _: CallbackOptions):
        yield Observation(self.snapshot.get()["threads"])

    def _fds(self, _: CallbackOptions):
        fds = self.snapshot.get()["fds"]
        if fds is not None:
            yield Observation(fds)

    def _ctx(self, _: CallbackOptions):
        ctx = self.snapshot.get()["ctx"]
        yield Observation(ctx.voluntary, {"process.context_switch.type": "voluntary"})
        yield Observation(ctx.involuntary, {"process.context_switch.type": "involuntary"})
