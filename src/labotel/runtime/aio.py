"""asyncio: tasks per state across every running event loop, and event-loop lag.

Loops are found by ``runtime.loops`` (also loops started after ``start()``). On each loop
a ``LoopProbe`` is scheduled every ``loop_lag_interval`` seconds; how late it runs is the
lag, recorded in ``labotel.asyncio.loop.lag``. The blocked-loop watchdog runs a probe of
its own, more often, as a heartbeat. Task origins are recorded by wrapping each loop's
task factory.
"""

from __future__ import annotations

import asyncio
import dataclasses
import operator
import threading
import time
import types
import weakref
from collections.abc import Callable
from types import FrameType
from typing import Any

from opentelemetry.metrics import CallbackOptions, Observation

from labotel import fork_safe
from labotel.budget import Reused
from labotel.compat import cpython, python
from labotel.component import Component
from labotel.context import Context
from labotel.frames import describe, located
from labotel.runtime import loops, origins
from labotel.runtime.thread_frames import attribute, stack

# Counting tasks for labotel.asyncio.tasks walks every one (~35 ms for 100 000 here), at
# every export and every scrape: at most this share of a core, else the last count again.
TASK_COUNT_SHARE = 0.005
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
        tasks.update(python.copy_registry(registry))
    for task in tasks:
        if not task.done():
            bucket = result.get(task.get_loop())
            if bucket is not None:
                bucket.append(task)
    return result


# -- one vocabulary for task states, one walker of a task's await chain ----------------
RUNNING, PENDING = "running", "pending"  # the metric's asyncio.task.state values


def task_state(task: asyncio.Task, current: asyncio.Task | None) -> str:
    """``running`` (its loop is inside it now) or ``pending`` (suspended or scheduled)."""
    return RUNNING if task is current else PENDING


def task_wait(task: asyncio.Task, current: asyncio.Task | None) -> str:
    """``task_state`` with what a pending task waits for, as the goroutine dump shows it:
    ``runnable`` (scheduled, waiting for its turn), ``awaiting task <name>`` or
    ``awaiting <Future type>``."""
    if task_state(task, current) == RUNNING:
        return RUNNING
    waiter = cpython.task_waiter(task)
    if waiter is None:
        return "runnable"
    if isinstance(waiter, asyncio.Task):
        return f"awaiting task {waiter.get_name()}"
    return f"awaiting {type(waiter).__name__}"


_FRAME_ATTRIBUTE = {types.CoroutineType: "cr_frame", types.GeneratorType: "gi_frame",
                    types.AsyncGeneratorType: "ag_frame"}


def frame_of(awaitable: Any) -> FrameType | None:
    """A coroutine's (generator's) frame; None once it has finished. Safe while another
    thread runs it: a native one's frame object is made with no collection able to start."""
    name = _FRAME_ATTRIBUTE.get(type(awaitable))
    if name is not None:
        return attribute(awaitable, name)
    return (getattr(awaitable, "cr_frame", None) or getattr(awaitable, "gi_frame", None)
            or getattr(awaitable, "ag_frame", None))


def await_chain(task: asyncio.Task) -> list[FrameType]:
    """The frames of the coroutines a task is suspended in, outermost first: from the
    task's coroutine down its ``cr_await`` (``gi_yieldfrom``, ``ag_await``) links."""
    chain: list[FrameType] = []
    awaitable: Any = task.get_coro()
    while awaitable is not None:
        frame = frame_of(awaitable)
        if frame is None:
            break
        chain.append(frame)
        awaitable = (getattr(awaitable, "cr_await", None)
                     or getattr(awaitable, "gi_yieldfrom", None)
                     or getattr(awaitable, "ag_await", None))
    return chain


@dataclasses.dataclass(eq=False)
class Beat:
    """One loop's probe: when it is next due and when it last ran (``time.monotonic()``)."""

    loop: weakref.ref
    thread_id: int  # the loop's thread, where the probe runs
    native_id: int | None = None  # the kernel's id of that thread
    due: float = 0.0
    ran: float = 0.0
    # the code that called the probe: asyncio's Handle._run, or for a loop that runs its
    # callbacks from C (uvloop) the code that started the loop
    dispatcher: types.CodeType | None = None


class LoopProbe:
    """A callback scheduled every ``interval`` seconds on each running loop.

    ``on_lag(lag)`` hears how late each run was; ``beats()`` tells a watchdog thread when
    each loop's next run is due, so a probe that is overdue shows a loop that cannot run
    its callbacks. ``on_loop(loop)`` hears about each loop the probe starts on.
    """

    def __init__(self, interval: float, on_lag: Callable[[float], None] | None = None,
                 on_loop: Callable[[asyncio.AbstractEventLoop], None] | None = None,
                 on_error: Callable[[], None] | None = None):
        self.interval = interval
        self._on_lag = on_lag
        self._on_loop = on_loop
        self._on_error = on_error
        self._stopped = threading.Event()
        self._lock = fork_safe.lock()
        # by id, the beat's weak reference telling a loop from a later one at the same
        # address: a WeakKeyDictionary would hash the loop (a custom loop class's
        # __hash__, the application's code) under our lock
        self._beats: dict[int, Beat] = {}

    def start(self) -> None:
        loops.add_listener(self._found)

    def stop(self) -> None:
        self._stopped.set()
        loops.remove_listener(self._found)

    def beats(self) -> list[Beat]:
        with self._lock:
            for key, beat in list(self._beats.items()):
                if beat.loop() is None:
                    del self._beats[key]
            return list(self._beats.values())

    def _found(self, loop: asyncio.AbstractEventLoop) -> None:  # in the loop's thread
        ref = weakref.ref(loop)
        with self._lock:
            known = self._beats.get(id(loop))
            if known is not None and known.loop() is loop:
                return
            beat = self._beats[id(loop)] = Beat(ref, threading.get_ident(),
                                                threading.get_native_id())
        if self._on_loop is not None:
            self._call(self._on_loop, loop)
        loop.call_soon(self._learn, beat)  # at once: the watchdog needs it from the start
        self._schedule(loop, beat)

    @staticmethod
    def _learn(beat: Beat) -> None:
        """Which code calls the loop's callbacks (see ``Beat.dispatcher``)."""
        beat.dispatcher = cpython.getframe(1).f_code

    def _schedule(self, loop: asyncio.AbstractEventLoop, beat: Beat) -> None:
        if self._stopped.is_set() or loop.is_closed():
            return
        interval = self.interval
        beat.due = time.monotonic() + interval
        loop.call_at(loop.time() + interval, self._run, loop, beat)

    def _run(self, loop: asyncio.AbstractEventLoop, beat: Beat) -> None:
        if self._stopped.is_set():
            return
        beat.ran = now = time.monotonic()
        # renewed: a loop run again may be started from other code (uvloop's dispatcher)
        beat.dispatcher = cpython.getframe(1).f_code
        if self._on_lag is not None:
            self._call(self._on_lag, max(now - beat.due, 0.0))
        self._schedule(loop, beat)

    def _call(self, function: Callable[[Any], None], argument: Any) -> None:
        try:
            function(argument)
        except Exception:
            if self._on_error is not None:
                self._on_error()


def task_counts() -> dict[str, int] | None:
    """Unfinished tasks by state across running loops; None when no loop runs."""
    by_loop = all_tasks_by_loop()
    if not by_loop:
        return None
    running = total = 0
    for loop, tasks in by_loop.items():
        total += len(tasks)
        current = asyncio.current_task(loop)
        if current is not None:  # counted in C: one task among 100 000 (task_state's rule)
            running += min(1, operator.countOf(tasks, current))
    return {RUNNING: running, PENDING: total - running}


class AsyncioCollector(Component):
    name = "runtime.asyncio"

    def __init__(self) -> None:
        self.counts = Reused(TASK_COUNT_SHARE, task_counts)

    def start(self, context: Context) -> None:
        self.lag = context.meter.create_histogram(
            "labotel.asyncio.loop.lag", unit="s",
            description="How late a callback scheduled on the event loop ran",
            explicit_bucket_boundaries_advisory=LAG_BUCKETS)
        context.meter.create_observable_up_down_counter(
            "labotel.asyncio.tasks", [context.guarded(self.name, self._tasks)],
            unit="{task}", description="Unfinished asyncio tasks across all running loops")
        context.meter.create_observable_up_down_counter(
            "labotel.asyncio.loops", [context.guarded(self.name, self._loops)],
            unit="{loop}", description="Running asyncio event loops")
        self.probe = LoopProbe(context.settings.loop_lag_interval, self.lag.record,
                               origins.track_loop_tasks,
                               lambda: context.failed(self.name))
        self.probe.start()

    def stop(self) -> None:
        self.probe.stop()

    def after_fork_in_child(self) -> None:
        self.counts.forget()

    def _tasks(self, _: CallbackOptions):
        counts = self.counts()
        if counts is None:  # no loop running: no task series, as there is no lag histogram
            return
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
                entry["stack"] = [describe(located(f)) for f in reversed(stack(frame_of(coro)))]
            result.append(entry)
    return result
