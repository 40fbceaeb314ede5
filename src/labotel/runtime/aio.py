"""asyncio: tasks per state across every running event loop, and event-loop lag.

Loops are found by ``runtime.loops`` (also loops started after ``start()``). On each loop
a probe is scheduled every ``loop_lag_interval`` seconds; how late it runs is the lag,
recorded in ``labotel.asyncio.loop.lag``. Task origins are recorded by wrapping each
loop's task factory.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from typing import Any

from opentelemetry.metrics import CallbackOptions, Observation

from labotel.compat import python
from labotel.component import Component, guarded_callback
from labotel.runtime import loops, origins

LAG_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]


def all_tasks_by_loop() -> dict[asyncio.AbstractEventLoop, list[asyncio.Task]]:
    """Unfinished tasks of every running loop (one pass over asyncio's task registry)."""
    result: dict[asyncio.AbstractEventLoop, list[asyncio.Task]] = {}
    running = loops.running_loops()
    if not running:  # a thread-only process: no task registry to copy
        return result
    registries = python.TASK_REGISTRIES
    if registries is None:  # no module-level registry found: one pass per loop
        for loop in running:
            result[loop] = list(asyncio.all_tasks(loop))
        return result
    for loop in running:
        result[loop] = []
    tasks: set[asyncio.Task] = set()
    for registry in registries:  # a task moving from one to the next is seen once
        tasks.update(_copy(registry))
    for task in tasks:
        if not task.done():
            bucket = result.get(task.get_loop())
            if bucket is not None:
                bucket.append(task)
    return result


def _copy(registry: Any) -> list[asyncio.Task]:
    for _ in range(100):  # a weak set may change size while other threads run
        try:
            return list(registry)
        except RuntimeError:
            continue
    return []


def task_state(task: asyncio.Task, current: asyncio.Task | None) -> str:
    return "running" if task is current else "pending"


class AsyncioCollector(Component):
    name = "runtime.asyncio"

    def start(self, monitor: Any) -> None:
        self.monitor = monitor
        self.interval = monitor.settings.loop_lag_interval
        self._stopped = threading.Event()
        self._probed: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
        self.lag = monitor.meter.create_histogram(
            "labotel.asyncio.loop.lag", unit="s",
            description="How late a callback scheduled on the event loop ran",
            explicit_bucket_boundaries_advisory=LAG_BUCKETS)
        monitor.meter.create_observable_up_down_counter(
            "labotel.asyncio.tasks", [guarded_callback(monitor, self.name, self._tasks)],
            unit="{task}", description="Unfinished asyncio tasks across all running loops")
        monitor.meter.create_observable_up_down_counter(
            "labotel.asyncio.loops", [guarded_callback(monitor, self.name, self._loops)],
            unit="{loop}", description="Running asyncio event loops")
        loops.add_listener(self._on_loop)

    def stop(self) -> None:
        self._stopped.set()
        loops.remove_listener(self._on_loop)

    def _on_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        origins.track_loop_tasks(loop)
        if loop not in self._probed:
            self._probed.add(loop)
            self._schedule(loop)

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._stopped.is_set() or loop.is_closed():
            return
        expected = loop.time() + self.interval
        loop.call_at(expected, self._probe, loop, expected)

    def _probe(self, loop: asyncio.AbstractEventLoop, expected: float) -> None:
        if self._stopped.is_set():
            return
        try:
            self.lag.record(max(loop.time() - expected, 0.0))
        except Exception:
            self.monitor.reporter.component_failed(self.name)
        self._schedule(loop)

    def _tasks(self, _: CallbackOptions):
        by_loop = all_tasks_by_loop()
        if not by_loop:  # no loop running: no task series, as there is no lag histogram
            return
        counts = {"running": 0, "pending": 0}
        for loop, tasks in by_loop.items():
            current = asyncio.current_task(loop)
            for task in tasks:
                counts[task_state(task, current)] += 1
        for state, count in counts.items():
            yield Observation(count, {"asyncio.task.state": state})

    def _loops(self, _: CallbackOptions):
        running = len(loops.running_loops())
        if running:  # like the task series: none in a process without a running loop
            yield Observation(running)


def task_view(stacks: bool = False) -> list[dict[str, Any]]:
    """Every unfinished task: name, state, loop, creation site, optional coroutine stack."""
    result = []
    for loop, tasks in all_tasks_by_loop().items():
        current = asyncio.current_task(loop)
        for task in tasks:
            origin = origins.task_origin(task)
            coro = task.get_coro()
            entry: dict[str, Any] = {
                "name": task.get_name(),
                "state": task_state(task, current),
                "loop": f"{type(loop).__name__}@{id(loop):#x}",
                "coroutine": getattr(coro, "__qualname__", repr(coro)),
                "created_at": origins.site(origin) if origin else None,
            }
            if stacks:
                entry["stack"] = [f"{f.f_code.co_filename}:{f.f_lineno} in {f.f_code.co_name}"
                                  for f in task.get_stack()]
            result.append(entry)
    return result
