"""What labotel borrows from CPython's own modules beyond their public API.

The rest of labotel reaches interpreter internals (``threading``'s thread tables, asyncio's
task and handle internals, ``concurrent.futures``' work items, the lock protocol that
``threading.Condition`` uses) only through these names. ``probe()`` reports, at
``start()``, every one that this interpreter lacks and the feature that is off without it;
the accessors then answer "nothing known" instead of raising.

``sys._getframe`` and ``sys._current_frames`` are documented functions of ``sys`` (marked
as CPython implementation details); they are re-exported here so that the whole package
names them in one place, at no cost (the same function objects).
"""

from __future__ import annotations

import asyncio
import concurrent.futures.thread as futures_thread
import operator
import sys
import threading
import tracemalloc
from collections.abc import Callable
from types import CodeType
from typing import Any

from labotel.compat.capability import Capability

getframe: Callable[..., Any] = sys._getframe


def current_frames_function() -> Callable[[], dict[int, Any]]:
    """``sys._current_frames`` itself, looked up now (a caller that must run it inside one
    C-level sequence, with no bytecode around it, takes the function, not a wrapper)."""
    return sys._current_frames

# -- threading ------------------------------------------------------------------------------
THREADS_ACTIVE: dict[int, threading.Thread] = getattr(threading, "_active", {})
"""ident -> Thread of every running Thread: read without side effects (unlike
``threading.current_thread()``, which builds a _DummyThread for a foreign thread)."""
THREADS_LIMBO: dict[threading.Thread, threading.Thread] = getattr(threading, "_limbo", {})
"""Threads between ``start()`` and their registration in THREADS_ACTIVE."""

_IS_DAEMON = ("_daemonic" if hasattr(threading.main_thread(), "_daemonic") else "daemon")
is_daemon: Callable[[threading.Thread], bool] = operator.attrgetter(_IS_DAEMON)
"""Thread.daemon read as a plain attribute where CPython keeps one: half the cost of
counting 500 threads through the property."""


def thread_ident(thread: threading.Thread) -> int | None:
    """A thread's ident as soon as it is set (still in limbo, before ``Thread.ident`` is
    reliable to other threads)."""
    return getattr(thread, "_ident", None)


THREAD_CALL_FIELDS = ("_target", "_args", "_kwargs")
"""The attributes where a Thread keeps the function it runs and its arguments."""


def thread_target(namespace: dict[str, Any]) -> Any:
    """The function a Thread runs, from its instance dict (read without running a
    subclass's properties); None when unknown or already run."""
    return namespace.get("_target")


def thread_name(namespace: dict[str, Any]) -> str:
    """A Thread's name, from its instance dict; "?" when not a plain string."""
    name = namespace.get("_name", "?")
    return name if type(name) is str else "?"


def is_thread_bootstrap(function: str) -> bool:
    """Whether a function of ``threading`` is one of the frames that start a thread."""
    return function.startswith("_bootstrap")


def thread_started(thread: threading.Thread) -> bool:
    """Whether ``start()`` has completed its handshake (``Thread._started`` is set)."""
    started = getattr(thread, "_started", None)
    return started is not None and started.is_set()


def active_limbo_lock() -> Any:
    """The lock guarding threading's thread tables (rebuilt by threading after fork)."""
    return getattr(threading, "_active_limbo_lock", None)


def set_active_limbo_lock(lock: Any) -> None:
    threading._active_limbo_lock = lock  # type: ignore[attr-defined]


# -- the lock protocol of threading.Condition (RLock's private methods) --------------------
lock_is_owned: Callable[[Any], Callable[[], bool]] = operator.attrgetter("_is_owned")
"""The bound ``_is_owned`` of an RLock (Condition binds it once)."""
release_save: Callable[[Any], Any] = operator.methodcaller("_release_save")
at_fork_reinit: Callable[[Any], None] = operator.methodcaller("_at_fork_reinit")


def acquire_restore(lock: Any) -> Callable[[Any], None]:
    """The bound ``_acquire_restore`` of an RLock, to call with what release_save gave."""
    return lock._acquire_restore


event_flag: Callable[[threading.Event], bool] = operator.attrgetter("_flag")
"""``Event.is_set()`` without calling it (labotel replaces is_set itself)."""
condition_lock: Callable[[threading.Condition], Any] = operator.attrgetter("_lock")
"""The lock a Condition was built on."""


# -- tracemalloc -----------------------------------------------------------------------------
def tracemalloc_traces(snapshot: tracemalloc.Snapshot) -> list[tuple[Any, ...]] | None:
    """A snapshot's traces as ``_tracemalloc`` hands them over: ``(domain, size, frames,
    ...)`` with ``frames`` most recent first, each a ``(filename, lineno)`` pair. Grouping
    these allocates nothing per trace, where the public ``Trace``/``Traceback`` objects
    cost several allocations each, and with tracemalloc running each of those is traced
    too (about 17 us a trace: 10 s for 600 000). None when the layout is not this one."""
    traces = getattr(getattr(snapshot, "traces", None), "_traces", None)
    if not isinstance(traces, list) or (traces and not _is_raw_trace(traces[0])):
        return None
    return traces


def _is_raw_trace(item: Any) -> bool:
    if not (isinstance(item, tuple) and len(item) >= 3 and isinstance(item[1], int)
            and isinstance(item[2], tuple)):
        return False
    frame = item[2][0] if item[2] else ("", 0)
    return isinstance(frame, tuple) and len(frame) == 2 and isinstance(frame[1], int)


def _tracemalloc_layout_known() -> bool:
    sample = tracemalloc.Snapshot([(0, 16, (("b.py", 2), ("a.py", 1)), 2)], 2)
    traces = tracemalloc_traces(sample)
    return traces is not None and len(traces) == 1 and \
        sample.traces[0].traceback[0].filename == "a.py"  # the public order is reversed


# -- concurrent.futures -----------------------------------------------------------------------
EXECUTOR_WORK_ITEM: Any = getattr(futures_thread, "_WorkItem", None)
"""What ThreadPoolExecutor.submit() queues and a worker runs: where a submit -> run
happens-before edge is drawn."""


# -- asyncio ----------------------------------------------------------------------------------
def _handle_run_code() -> CodeType | None:
    run = getattr(asyncio.events.Handle, "_run", None)
    return getattr(run, "__code__", None)


HANDLE_RUN_CODE: CodeType | None = _handle_run_code()
"""The code of the function asyncio runs every callback and task step in: a frame of it on
a loop thread's stack marks where the loop handed control to application code."""


def loop_thread_id(loop: asyncio.AbstractEventLoop) -> int | None:
    """The ident of the thread running ``loop`` (None while it does not run)."""
    return getattr(loop, "_thread_id", None)


def runner_loop(runner: asyncio.Runner) -> asyncio.AbstractEventLoop | None:
    """The loop a Runner made, without making one (``get_loop()`` would, lazily)."""
    loop = getattr(runner, "_loop", None)
    return loop if isinstance(loop, asyncio.AbstractEventLoop) else None


def task_waiter(task: asyncio.Task) -> Any:
    """The future a suspended task waits for (None when runnable or running)."""
    return getattr(task, "_fut_waiter", None)


# -- the probe --------------------------------------------------------------------------------
def probe() -> list[Capability]:
    from labotel.compat import python

    rlock = threading.RLock()
    return [
        Capability.check(
            "cpython.thread_tables", "race-detector thread identities, CPU profile thread "
            "names", hasattr(threading, "_active") and hasattr(threading, "_limbo"),
            "threading._active/_limbo are missing"),
        Capability.check(
            "cpython.active_limbo_lock", "a plain lock under threading's tables after fork "
            "while locks are instrumented", active_limbo_lock() is not None,
            "threading._active_limbo_lock is missing"),
        Capability.check(
            "cpython.condition_protocol", "instrumented RLocks inside threading.Condition",
            all(hasattr(rlock, name) for name in (
                "_is_owned", "_release_save", "_acquire_restore", "_at_fork_reinit")),
            "RLock._is_owned/_release_save/_acquire_restore/_at_fork_reinit are missing"),
        Capability.check(
            "cpython.event_condition", "happens-before edges of Events and of Conditions made "
            "before start()", hasattr(threading.Event(), "_flag")
            and hasattr(threading.Condition(), "_lock"),
            "Event._flag / Condition._lock are missing"),
        Capability.check(
            "cpython.thread_started", "a join seen through Thread.is_alive() polling",
            hasattr(threading.main_thread(), "_started"), "Thread._started is missing"),
        Capability.check(
            "cpython.executor_work_item", "submit -> run ordering of ThreadPoolExecutor tasks "
            "in the race detector", EXECUTOR_WORK_ITEM is not None,
            "concurrent.futures.thread._WorkItem is missing"),
        Capability.check(
            "cpython.handle_run", "the blocked-event-loop detector",
            HANDLE_RUN_CODE is not None, "asyncio.events.Handle._run is missing"),
        Capability.check(
            "cpython.task_internals", "task states and running-task stacks in goroutine dumps",
            hasattr(asyncio.Task, "_fut_waiter") or "_fut_waiter" in dir(asyncio.Task),
            "asyncio.Task._fut_waiter is missing"),
        Capability.check(
            "cpython.task_registries", "counting tasks of every loop from any thread",
            python.TASK_REGISTRIES is not None,
            "asyncio.tasks._all_tasks / _scheduled_tasks are missing"),
        Capability.check(
            "cpython.tracemalloc_traces", "heap profiles grouped without an allocation per "
            "trace (without it, the public Snapshot.statistics: ~17 us a trace)",
            _tracemalloc_layout_known(), "tracemalloc.Snapshot.traces._traces is missing "
            "or laid out differently"),
    ]
