"""Happens-before edges from the standard threading primitives.

``install()`` replaces ``threading.Lock`` and ``threading.RLock`` with instrumented
classes, so every lock created afterwards, and every Condition, Semaphore,
BoundedSemaphore, Event, Barrier, queue.Queue/LifoQueue/PriorityQueue and Future built on
them, publishes the releasing thread's clock and joins it on acquire. On top of that:

- ``Thread.start`` / ``join`` / ``is_alive() == False`` (also ``Timer``): fork and join;
- ``Event.set`` -> ``wait()``/``is_set()`` returning True (``is_set`` takes no lock);
- ``with cond:`` and ``cond.wait()`` on a Condition (so also a Semaphore or Barrier)
  created before ``start()``, whose lock is a plain one;
- ``queue.SimpleQueue`` (C code) is replaced by a subclass: ``put`` -> ``get``;
- ``queue.Queue.put`` -> ``get``, ``task_done`` -> ``join`` and ``ThreadPoolExecutor``
  submit -> task also for queues/executors created before ``start()``;
- ``loop.call_soon_threadsafe`` -> the callback on the loop's thread (which is how
  ``run_coroutine_threadsafe`` and ``await loop.run_in_executor(...)`` hand over).

A failing hook is counted and logged once through ``on_failure``; the lock operation itself
always goes ahead. ``uninstall()`` undoes the patches (newest first); objects created
while installed keep working as plain primitives.
"""

from __future__ import annotations

import _thread
import asyncio
import queue
import threading
from collections.abc import Callable
from concurrent.futures import thread as futures_thread
from typing import Any

from labotel.compat import python
from labotel.detect.vectorclock import _local, attach, current, final_snapshot
from labotel.patching import Patcher

_on = False


def _ignore_failure() -> None:
    return None


_on_failure: Callable[[], None] = _ignore_failure
_patcher = Patcher()
_allocate_lock = _thread.allocate_lock
_RawRLock = _thread.RLock
# What install() replaces, as the application may have imported them by name
# (``from threading import Lock``): adopt.py rebinds those names too.
ORIGINAL_FACTORIES = {"Lock": threading.Lock, "RLock": threading.RLock,
                      "SimpleQueue": queue.SimpleQueue}


def _failed() -> None:
    try:
        _on_failure()
    except Exception:
        pass


def _state() -> Any:
    try:
        state = _local.state
    except AttributeError:
        state = current()
    return None if state.busy else state


class _LockClass(type):
    """From 3.13 ``threading.Lock`` is a type that code may ``isinstance``-check. While it is
    patched, a plain lock made before start() still passes and an RLock still does not,
    as with the real type; labotel's own checks compare ``type()`` instead."""

    def __instancecheck__(cls, obj: Any) -> bool:
        if cls is InstrumentedLock:
            return type(obj) is InstrumentedLock or type(obj) is python.PLAIN_LOCK_TYPE
        return type.__instancecheck__(cls, obj)


class InstrumentedLock(metaclass=_LockClass):
    """``threading.Lock`` that records release -> acquire edges."""

    __slots__ = ("_lock", "_sync", "__weakref__")

    def __init__(self, lock: Any = None) -> None:
        self._lock = _allocate_lock() if lock is None else lock
        self._sync: tuple | None = None  # the last releaser's clock snapshot

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if not self._lock.acquire(blocking, timeout):
            return False
        if _on:
            try:
                sync = self._sync
                if sync is not None:
                    state = _state()
                    if state is not None:
                        state.acquire(sync)
            except Exception:
                _failed()
        return True

    __enter__ = acquire

    def release(self) -> None:
        if _on:
            try:
                state = _state()
                if state is not None:
                    self._sync = state.release()
            except Exception:
                _failed()
        self._lock.release()

    def __exit__(self, *exc_info: Any) -> None:
        self.release()

    def locked(self) -> bool:
        return self._lock.locked()

    def _at_fork_reinit(self) -> None:
        self._lock._at_fork_reinit()
        self._sync = None

    def __repr__(self) -> str:
        return f"<labotel instrumented {self._lock!r}>"


class InstrumentedRLock(InstrumentedLock):
    """``threading.RLock``; Condition uses ``_release_save``/``_acquire_restore`` in wait()."""

    __slots__ = ()

    def __init__(self, lock: Any = None) -> None:
        super().__init__(_RawRLock() if lock is None else lock)

    def _is_owned(self) -> bool:
        return self._lock._is_owned()

    def _release_save(self) -> Any:
        if _on:
            snapshot = _publish()
            if snapshot is not None:
                self._sync = snapshot
        return self._lock._release_save()

    def _acquire_restore(self, saved: Any) -> None:
        self._lock._acquire_restore(saved)
        if _on:
            _join(self._sync)

    def __getattr__(self, name: str) -> Any:  # _recursion_count and future additions
        return getattr(self._lock, name)


def instrumented(lock: Any) -> bool:
    """One of ours (not ``isinstance``: that also accepts plain locks, see _LockClass)."""
    return type(lock) is InstrumentedLock or type(lock) is InstrumentedRLock


def _publish() -> tuple | None:
    """The calling thread's clock snapshot (it then starts a new epoch); None if ignored."""
    try:
        state = _state()
        return state.release() if state is not None else None
    except Exception:
        _failed()
        return None


def _join(snapshot: tuple | None) -> None:
    """Order the calling thread after ``snapshot``."""
    if snapshot is None:
        return
    try:
        state = _state()
        if state is not None:
            state.acquire(snapshot)
    except Exception:
        _failed()


def _release_into(holder: Any, attribute: str = "_labotel_clock") -> None:
    if _on:
        try:
            state = _state()
            if state is not None:
                attach(holder, attribute).release(state)
        except Exception:
            _failed()


def _acquire_from(holder: Any, attribute: str = "_labotel_clock") -> None:
    if _on:
        try:
            clock = holder.__dict__.get(attribute)
            state = _state() if clock is not None else None
            if state is not None:
                clock.acquire(state)
        except Exception:
            _failed()


class InstrumentedSimpleQueue(queue.SimpleQueue):
    """``queue.SimpleQueue`` is C code: this subclass adds put -> get edges."""

    __qualname__ = "SimpleQueue"

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        _release_into(self)
        super().put(item, block, timeout)

    def put_nowait(self, item: Any) -> None:
        self.put(item, False)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        item = super().get(block, timeout)
        _acquire_from(self)
        return item

    def get_nowait(self) -> Any:
        return self.get(False)


def install(on_failure: Callable[[], None]) -> None:
    """Patch the primitives (idempotent); hooks are live once this returns."""
    global _on, _on_failure
    if _patcher:
        return
    _on_failure = on_failure
    replace = _patcher.replace
    replace(threading, "Lock", InstrumentedLock)
    replace(threading, "RLock", InstrumentedRLock)
    _patch_threads(replace)
    _patch_event(replace)
    _patch_early_conditions(replace)
    _patch_queues(replace)
    _patch_executor(replace)
    _patch_asyncio(replace)
    _on = True


def uninstall() -> None:
    global _on
    _on = False
    _patcher.undo()


def _patch_threads(replace: Callable[..., Any]) -> None:
    previous_start = threading.Thread.start
    previous_join = threading.Thread.join
    previous_is_alive = threading.Thread.is_alive

    def start(self: threading.Thread) -> None:
        if _on:
            self._labotel_fork = _publish()  # type: ignore[attr-defined]
        previous_start(self)

    def joined(thread: threading.Thread) -> None:
        try:
            snapshot = final_snapshot(thread)
        except Exception:
            _failed()
            return
        _join(snapshot)

    def join(self: threading.Thread, timeout: float | None = None) -> None:
        previous_join(self, timeout)
        if _on and not previous_is_alive(self):
            joined(self)

    def is_alive(self: threading.Thread) -> bool:
        alive = previous_is_alive(self)
        if not alive and _on and self._started._flag:  # type: ignore[attr-defined]
            joined(self)  # polling is_alive() until False is a join
        return alive

    start.__wrapped__ = previous_start  # type: ignore[attr-defined]
    replace(threading.Thread, "start", start)
    replace(threading.Thread, "join", join)
    replace(threading.Thread, "is_alive", is_alive)


def _patch_event(replace: Callable[..., Any]) -> None:
    previous_set = threading.Event.set
    previous_wait = threading.Event.wait

    def set(self: threading.Event) -> None:  # noqa: A001 - the method's name
        _release_into(self)
        previous_set(self)

    def is_set(self: threading.Event) -> bool:
        flag = self._flag  # type: ignore[attr-defined]
        if flag:
            _acquire_from(self)
        return flag

    def wait(self: threading.Event, timeout: float | None = None) -> bool:
        signaled = previous_wait(self, timeout)
        if signaled:
            _acquire_from(self)
        return signaled

    replace(threading.Event, "set", set)
    replace(threading.Event, "is_set", is_set)
    replace(threading.Event, "wait", wait)


def _patch_early_conditions(replace: Callable[..., Any]) -> None:
    """Conditions made before start() (and the Semaphores, BoundedSemaphores and Barriers
    built on one) hold a plain lock: give ``with cond:`` and ``wait()`` the edges of a lock,
    through a clock kept on the condition. One with an instrumented lock has them already.
    ``cond.acquire()``/``cond.release()`` called directly stay unseen: the Condition binds
    them to its plain lock per instance."""
    previous_enter = threading.Condition.__enter__
    previous_exit = threading.Condition.__exit__
    previous_wait = threading.Condition.wait

    def __enter__(self: threading.Condition) -> bool:
        entered = previous_enter(self)
        if not instrumented(self._lock):  # type: ignore[attr-defined]
            _acquire_from(self)
        return entered

    def __exit__(self: threading.Condition, *exc_info: Any) -> None:
        if not instrumented(self._lock):  # type: ignore[attr-defined]
            _release_into(self)
        return previous_exit(self, *exc_info)

    def wait(self: threading.Condition, timeout: float | None = None) -> bool:
        plain = not instrumented(self._lock)  # type: ignore[attr-defined]
        if plain:  # wait() lets go of the lock...
            _release_into(self)
        notified = previous_wait(self, timeout)
        if plain:  # ...and takes it again, notified or not
            _acquire_from(self)
        return notified

    replace(threading.Condition, "__enter__", __enter__)
    replace(threading.Condition, "__exit__", __exit__)
    replace(threading.Condition, "wait", wait)


def _patch_queues(replace: Callable[..., Any]) -> None:
    """Queues created before start() have a plain mutex: give them put -> get edges too."""
    previous_put = queue.Queue.put
    previous_get = queue.Queue.get

    def put(self: queue.Queue, item: Any, block: bool = True,
            timeout: float | None = None) -> None:
        if type(self.mutex) is not InstrumentedLock:
            _release_into(self)
        previous_put(self, item, block, timeout)

    def get(self: queue.Queue, block: bool = True, timeout: float | None = None) -> Any:
        item = previous_get(self, block, timeout)
        if type(self.mutex) is not InstrumentedLock:
            _acquire_from(self)
        return item

    previous_task_done = queue.Queue.task_done
    previous_join = queue.Queue.join

    def task_done(self: queue.Queue) -> None:
        if type(self.mutex) is not InstrumentedLock:
            _release_into(self, "_labotel_done_clock")
        previous_task_done(self)

    def join(self: queue.Queue) -> None:
        previous_join(self)
        if type(self.mutex) is not InstrumentedLock:
            _acquire_from(self, "_labotel_done_clock")

    replace(queue.Queue, "put", put)
    replace(queue.Queue, "get", get)
    replace(queue.Queue, "task_done", task_done)
    replace(queue.Queue, "join", join)
    replace(queue, "SimpleQueue", InstrumentedSimpleQueue)


def _patch_executor(replace: Callable[..., Any]) -> None:
    """submit -> task even when the executor (and its work queue) predates start()."""
    work_item = futures_thread._WorkItem
    previous_init = work_item.__init__
    previous_run = work_item.run

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        previous_init(self, *args, **kwargs)
        if _on:
            self._labotel_fork = _publish()

    def run(self: Any) -> None:
        if _on:
            _join(getattr(self, "_labotel_fork", None))
        previous_run(self)

    replace(work_item, "__init__", __init__)
    replace(work_item, "run", run)


class _AfterSnapshot:
    """A loop callback that first orders the loop's thread after the scheduling thread."""

    __slots__ = ("callback", "snapshot")

    def __init__(self, callback: Callable[..., Any], snapshot: tuple):
        self.callback = callback
        self.snapshot = snapshot

    def __call__(self, *args: Any) -> Any:
        _join(self.snapshot)
        return self.callback(*args)

    def __repr__(self) -> str:  # asyncio debug mode prints callbacks
        return repr(self.callback)


def _patch_asyncio(replace: Callable[..., Any]) -> None:
    loop_class = asyncio.BaseEventLoop
    previous = loop_class.call_soon_threadsafe

    def call_soon_threadsafe(self: Any, callback: Callable[..., Any], *args: Any,
                             context: Any = None) -> Any:
        if _on:
            snapshot = _publish()
            if snapshot is not None:
                callback = _AfterSnapshot(callback, snapshot)
        return previous(self, callback, *args, context=context)

    replace(loop_class, "call_soon_threadsafe", call_soon_threadsafe)


def reinit_after_fork() -> None:
    """threading._after_fork rebuilt _active_limbo_lock with our RLock: unwrap it."""
    lock = getattr(threading, "_active_limbo_lock", None)
    if instrumented(lock):
        threading._active_limbo_lock = lock._lock  # type: ignore[attr-defined]
