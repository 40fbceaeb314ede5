"""The patches themselves, in groups: each group names the kinds of subscriber it serves,
so a group is installed once, when the first subscriber that needs it arrives.

- ``locks``: ``threading.Lock``/``RLock`` become the instrumented classes (both kinds);
- ``thread_join``: ``Thread.join`` is timed (waits) and orders the joiner after the
  thread (edges), as is ``is_alive() == False``; ``thread_start`` orders the child after
  the parent (edges);
- ``condition_wait``: ``Condition.wait`` is timed (waits) — and with it ``Event.wait``,
  ``Semaphore``, ``Barrier``, ``queue.Queue`` get/put/join and ``Future.result``, which
  all wait on a Condition; ``condition_edges``: for a Condition made before ``start()``
  (a plain lock) ``with cond:`` and ``wait()`` also get the edges of a lock, through a
  clock kept on it (edges);
- ``events``: ``Event.set`` -> ``wait()``/``is_set()`` returning True (edges);
- ``queues``, ``simple_queue``, ``executor``, ``loop_handoff``: put -> get, task_done ->
  join, submit -> task, ``call_soon_threadsafe`` -> callback on every loop class, uvloop's
  too (edges; ``SimpleQueue.get`` is also timed); ``queue_mutex`` leaves a
  ``queue.Queue``'s own mutex plain while no edges subscriber listens (waits);
- ``asyncio_waits``: asyncio's ``Lock``/``Semaphore.acquire``, ``Event``/``Condition.wait``
  and ``Queue.get``/``put`` are timed when they will wait; ``loop_futures``:
  ``loop.create_future()`` called by the application (or ``wrap_future``, so
  ``run_in_executor``) makes futures whose ``await`` is timed while pending, on every loop
  class (waits).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import os
import queue
import threading
from collections.abc import Callable
from typing import Any

from labotel import signal_context
from labotel.compat import cpython
from labotel.hooks import active, primitives
from labotel.hooks.primitives import (
    InstrumentedLock,
    InstrumentedRLock,
    InstrumentedSimpleQueue,
    call_waits,
    edge_failed,
    kept,
    timed_wait,
)
from labotel.runtime.loop_classes import LoopClass

Replace = Callable[[Any, str, Any], Any]
EDGES, WAITS = "edges", "waits"
CONDITION_WAIT = "threading.Condition.wait"
THREAD_JOIN = "threading.Thread.join"
FUTURE_AWAIT = "asyncio.Future.__await__"


def _edge(method: str, *args: Any) -> Any:
    edges = active.edges
    if edges is None:
        return None
    try:
        return getattr(edges, method)(*args)
    except Exception as error:
        if signal_context.raised_by_a_handler(error):
            raise  # the application's own, from a signal handler run in there
        edge_failed()
        return None


def _patch_locks(replace: Replace) -> None:
    replace(threading, "Lock", InstrumentedLock)
    replace(threading, "RLock", InstrumentedRLock)


def _patch_thread_start(replace: Replace) -> None:
    previous_start = threading.Thread.start

    @functools.wraps(previous_start)
    def start(self: threading.Thread) -> None:
        if active.edges is not None:
            try:
                self._labotel_fork = _edge("publish")  # type: ignore[attr-defined]
            except AttributeError:  # a Thread subclass with __slots__: no fork edge
                pass
        previous_start(self)

    replace(threading.Thread, "start", start)


def _patch_thread_join(replace: Replace) -> None:
    previous_join = threading.Thread.join
    previous_is_alive = threading.Thread.is_alive

    def join(self: threading.Thread, timeout: float | None = None) -> None:
        if active.waits is not None and (timeout is None or timeout > 0) \
                and previous_is_alive(self):
            timed_wait(THREAD_JOIN, cpython.getframe(1), previous_join, self, timeout)
        else:
            previous_join(self, timeout)
        if active.edges is not None and not previous_is_alive(self):
            _edge("thread_joined", self)

    def is_alive(self: threading.Thread) -> bool:
        alive = previous_is_alive(self)
        if not alive and active.edges is not None and cpython.thread_started(self):
            _edge("thread_joined", self)  # polling is_alive() until False is a join
        return alive

    replace(threading.Thread, "join", join)
    replace(threading.Thread, "is_alive", is_alive)


def _patch_event(replace: Replace) -> None:
    previous_set = threading.Event.set
    previous_wait = threading.Event.wait

    def set(self: threading.Event) -> None:  # noqa: A001 - the method's name
        _edge("release_into", self, "_labotel_clock")
        previous_set(self)

    def is_set(self: threading.Event) -> bool:
        flag = cpython.event_flag(self)
        if flag:
            _edge("acquire_from", self, "_labotel_clock")
        return flag

    def wait(self: threading.Event, timeout: float | None = None) -> bool:
        signaled = previous_wait(self, timeout)
        if signaled:
            _edge("acquire_from", self, "_labotel_clock")
        return signaled

    replace(threading.Event, "set", set)
    replace(threading.Event, "is_set", is_set)
    replace(threading.Event, "wait", wait)


# The edges of an early Condition are recorded while its plain lock is held (after taking
# it, before letting it go), and that bookkeeping allocates: a garbage collection there ran
# an application finalizer that took the same lock (a pool's ``__del__`` giving a permit
# back to a Semaphore made at import) and waited for ever for its own thread. So for that
# while the thread notes the lock (``active.local.lending``: [lock, acquires lent]), and a
# Condition over it entered there is lent it (its exit gives it back), as the
# instrumented lock does (primitives._lend).
def _edge_lent(method: str, condition: threading.Condition) -> None:
    local = active.local
    outer = getattr(local, "lending", None)
    local.lending = [cpython.condition_lock(condition), 0]
    try:
        _edge(method, condition, "_labotel_clock")
    finally:
        local.lending = outer


def _lent(condition: threading.Condition) -> list | None:
    """This thread's lending, if ``condition``'s lock is the one lent."""
    lending = getattr(active.local, "lending", None)
    if lending is not None and lending[0] is cpython.condition_lock(condition):
        return lending
    return None


def _patch_condition_edges(replace: Replace) -> None:
    """Conditions made before start() (and the Semaphores, BoundedSemaphores and Barriers
    built on one) hold a plain lock: ``with cond:`` and ``wait()`` (below) get the edges of
    a lock through a clock kept on the condition; one with an instrumented lock has them
    already. ``cond.acquire()`` and ``cond.release()`` called directly stay unseen: the
    Condition binds them to its plain lock per instance."""
    previous_enter = threading.Condition.__enter__
    previous_exit = threading.Condition.__exit__

    def __enter__(self: threading.Condition) -> bool:
        plain = (active.edges is not None
                 and not primitives.instrumented(cpython.condition_lock(self)))
        if plain:
            lending = _lent(self)
            if lending is not None:  # inside this lock's own edge bookkeeping: lent
                lending[1] += 1
                return True
        entered = previous_enter(self)
        try:
            if plain:
                _edge_lent("acquire_from", self)
        except BaseException:  # a signal handler's: the block will not run, let the lock go
            previous_exit(self, None, None, None)
            raise
        return entered

    def __exit__(self: threading.Condition, *exc_info: Any) -> None:
        lending = None
        try:
            if active.edges is not None and \
                    not primitives.instrumented(cpython.condition_lock(self)):
                lending = _lent(self)
                if lending is not None and lending[1]:  # a lent one: given back
                    lending[1] -= 1
                    return None
                _edge_lent("release_into", self)
        except BaseException:  # a signal handler's: the lock is let go all the same
            if lending is not None and lending[1]:  # (a lent one's is given back)
                lending[1] -= 1
            else:
                previous_exit(self, *exc_info)
            raise
        return previous_exit(self, *exc_info)

    replace(threading.Condition, "__enter__", __enter__)
    replace(threading.Condition, "__exit__", __exit__)


def _patch_condition_wait(replace: Replace) -> None:
    """``wait()`` is timed for every Condition, whatever its age, and gives an early one
    (plain lock) the edges of letting go of its lock and taking it again."""
    previous_wait = threading.Condition.wait

    def wait(self: threading.Condition, timeout: float | None = None) -> bool:
        plain = (active.edges is not None
                 and not primitives.instrumented(cpython.condition_lock(self)))
        if plain:  # wait() lets go of the lock...
            _edge_lent("release_into", self)
        if active.waits is not None and timeout != 0:
            notified = timed_wait(CONDITION_WAIT, cpython.getframe(1), previous_wait, self,
                                  timeout)
        else:
            notified = previous_wait(self, timeout)
        if plain:  # ...and takes it again, notified or not
            _edge_lent("acquire_from", self)
        return notified

    replace(threading.Condition, "wait", wait)


def _patch_queues(replace: Replace) -> None:
    """Queues created before start() have a plain mutex: give them put -> get edges too."""
    previous_put = queue.Queue.put
    previous_get = queue.Queue.get
    previous_task_done = queue.Queue.task_done
    previous_join = queue.Queue.join

    def put(self: queue.Queue, item: Any, block: bool = True,
            timeout: float | None = None) -> None:
        if active.edges is not None and type(self.mutex) is not InstrumentedLock:
            _edge("release_into", self, "_labotel_clock")
        previous_put(self, item, block, timeout)

    def get(self: queue.Queue, block: bool = True, timeout: float | None = None) -> Any:
        item = previous_get(self, block, timeout)
        if active.edges is not None and type(self.mutex) is not InstrumentedLock:
            _edge("acquire_from", self, "_labotel_clock")
        return item

    def task_done(self: queue.Queue) -> None:
        if active.edges is not None and type(self.mutex) is not InstrumentedLock:
            _edge("release_into", self, "_labotel_done_clock")
        previous_task_done(self)

    def join(self: queue.Queue) -> None:
        previous_join(self)
        if active.edges is not None and type(self.mutex) is not InstrumentedLock:
            _edge("acquire_from", self, "_labotel_done_clock")

    replace(queue.Queue, "put", put)
    replace(queue.Queue, "get", get)
    replace(queue.Queue, "task_done", task_done)
    replace(queue.Queue, "join", join)


def _patch_queue_mutex(replace: Replace) -> None:
    """Without the race detector, a queue.Queue keeps a plain mutex: put() and get() take
    it twice each, so instrumenting it is most of what profiling costs a queue-heavy
    program, and its hold times are a few bytecodes. The queue's waits (empty, full,
    join) are Condition waits, timed all the same."""
    previous_init = queue.Queue.__init__

    def __init__(self: queue.Queue, *args: Any, **kwargs: Any) -> None:
        previous_init(self, *args, **kwargs)
        mutex = self.mutex
        if active.edges is None and type(mutex) is InstrumentedLock:
            plain = primitives.raw_lock(mutex)
            self.mutex = plain  # type: ignore[assignment]
            self.not_empty = threading.Condition(plain)
            self.not_full = threading.Condition(plain)
            self.all_tasks_done = threading.Condition(plain)

    replace(queue.Queue, "__init__", __init__)


def _patch_simple_queue(replace: Replace) -> None:
    replace(queue, "SimpleQueue", InstrumentedSimpleQueue)


def _patch_executor(replace: Replace) -> None:
    """submit -> task even when the executor (and its work queue) predates start()."""
    work_item = cpython.EXECUTOR_WORK_ITEM
    if work_item is None:  # said once at start (compat probe)
        return
    previous_init = work_item.__init__
    previous_run = work_item.run

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        previous_init(self, *args, **kwargs)
        if active.edges is not None:
            self._labotel_fork = _edge("publish")

    def run(self: Any) -> None:
        fork = getattr(self, "_labotel_fork", None)
        if fork is not None:
            _edge("join", fork)
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
        _edge("join", self.snapshot)
        return self.callback(*args)

    def __repr__(self) -> str:  # asyncio debug mode prints callbacks
        return repr(self.callback)


def _refused(callback: Any) -> bool:
    """What a loop in debug mode refuses at the call (a coroutine, or a coroutine
    function, is no callback): handed over as it is, for that error to be raised there,
    not later on the loop's thread from inside labotel's wrapper."""
    return asyncio.iscoroutine(callback) or asyncio.iscoroutinefunction(callback)


def _patch_loop_handoff(replace: Replace, loop_class: LoopClass) -> None:
    previous = loop_class.call_soon_threadsafe

    @functools.wraps(previous)
    def call_soon_threadsafe(self: Any, callback: Callable[..., Any], *args: Any,
                             context: Any = None) -> Any:
        if active.edges is not None and not (self.get_debug() and _refused(callback)):
            snapshot = _edge("publish")
            if snapshot is not None:
                callback = _AfterSnapshot(callback, snapshot)
        return previous(self, callback, *args, context=context)

    replace(loop_class, "call_soon_threadsafe", call_soon_threadsafe)


# -- asyncio: the primitives' waits, and awaits of futures the application made ---------------
_future_await = asyncio.Future.__await__
_ASYNCIO_DIR = os.path.dirname(asyncio.__file__) + os.sep
_WRAP_FUTURE = asyncio.wrap_future.__code__  # what run_in_executor's future is made by
_in_timed_await: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "labotel_in_timed_await", default=False)


def _task_top() -> Any:
    """The outermost coroutine frame of the running task: its stack stops there."""
    try:
        task = asyncio.current_task()
        return getattr(task.get_coro(), "cr_frame", None) if task is not None else None
    except Exception:  # no running loop
        return None


def _record_await(site: str, frame: Any, started: int) -> None:
    waits = active.waits
    delay = active.clock() - started
    if waits is not None and kept(waits, delay):  # the task's top: only for a wait kept
        call_waits("blocked", site, frame, delay, _task_top)


async def _timed(awaitable: Any, site: str) -> Any:
    """Await ``awaitable`` (an asyncio primitive's coroutine) and record the wait, at the
    stack of the coroutine that called the primitive, cut at its task's coroutine."""
    started = active.clock()
    try:
        result = await awaitable
    except GeneratorExit:  # closed unfinished: no wait to speak of
        raise
    except BaseException:  # cancelled (a timeout): it waited all the same
        _record_await(site, cpython.getframe(1), started)
        raise
    _record_await(site, cpython.getframe(1), started)
    return result


async def _timed_outer(awaitable: Any, site: str) -> Any:
    """``_timed`` for a wait that takes a lock again inside (``Condition.wait``): that
    relock is part of it, not a wait of its own."""
    token = _in_timed_await.set(True)
    started = active.clock()
    try:
        result = await awaitable
    except GeneratorExit:
        raise
    except BaseException:
        _record_await(site, cpython.getframe(1), started)
        raise
    finally:
        try:
            _in_timed_await.reset(token)
        except ValueError:  # closed by the garbage collector, in another context
            pass
    _record_await(site, cpython.getframe(1), started)
    return result


def _hook_asyncio_wait(replace: Replace, owner: type, name: str,
                       ready: Callable[[Any], bool] | None) -> None:
    """Time ``owner.name`` (an ``async def``) when ``ready(self)`` says it will wait (no
    ``ready``: it always waits, and may take a lock again inside); an immediate call costs
    one check and returns the original coroutine untouched."""
    previous = owner.__dict__[name]
    site = f"asyncio.{owner.__name__}.{name}"
    timed = _timed if ready is not None else _timed_outer

    @functools.wraps(previous)
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        coro = previous(self, *args, **kwargs)
        if active.waits is None or (ready is not None and ready(self)) \
                or _in_timed_await.get():
            return coro
        return timed(coro, site)

    if hasattr(inspect, "markcoroutinefunction"):  # 3.12+: still an ``async def`` to inspect
        inspect.markcoroutinefunction(method)
    replace(owner, name, method)


class TimedFuture(asyncio.Future):
    """What ``loop.create_future()`` returns to application code (and to ``wrap_future``,
    so ``run_in_executor``) while a wait subscriber listens: awaiting it while it is
    pending records how long the task was suspended, at the task's stack. asyncio's own
    futures (its primitives, sleeps, streams) stay plain: a subclass costs every await."""

    __slots__ = ()

    def __await__(self) -> Any:
        if active.waits is None or self.done():
            return _future_await(self)
        return self._timed()

    __iter__ = __await__

    def _timed(self) -> Any:
        started = active.clock()
        try:
            result = yield from _future_await(self)
        except GeneratorExit:  # closed unfinished: no wait to speak of
            raise
        except BaseException:  # cancelled (a timeout): it waited all the same
            _record_await(FUTURE_AWAIT, cpython.getframe(1), started)
            raise
        _record_await(FUTURE_AWAIT, cpython.getframe(1), started)
        return result


def _patch_asyncio_waits(replace: Replace) -> None:
    hook = functools.partial(_hook_asyncio_wait, replace)
    hook(asyncio.Lock, "acquire", lambda lock: not lock.locked())
    hook(asyncio.Semaphore, "acquire", lambda semaphore: not semaphore.locked())
    hook(asyncio.Event, "wait", lambda event: event.is_set())
    hook(asyncio.Condition, "wait", None)
    hook(asyncio.Queue, "get", lambda items: not items.empty())
    hook(asyncio.Queue, "put", lambda items: not items.full())


def _patch_loop_futures(replace: Replace, loop_class: LoopClass) -> None:
    previous = loop_class.create_future

    @functools.wraps(previous)
    def create_future(self: asyncio.AbstractEventLoop) -> asyncio.Future:
        if active.waits is not None:
            caller = cpython.getframe(1)
            while caller.f_code.co_name == "create_future" and caller.f_back is not None:
                caller = caller.f_back  # another tool's wrapper around ours: its caller
            code = caller.f_code
            if code is _WRAP_FUTURE or not code.co_filename.startswith(_ASYNCIO_DIR):
                return TimedFuture(loop=self)
        return previous(self)  # type: ignore[arg-type]

    replace(loop_class, "create_future", create_future)


GROUPS: list[tuple[str, frozenset[str], Callable[[Replace], None]]] = [
    ("locks", frozenset({EDGES, WAITS}), _patch_locks),
    ("thread_start", frozenset({EDGES}), _patch_thread_start),
    ("thread_join", frozenset({EDGES, WAITS}), _patch_thread_join),
    ("events", frozenset({EDGES}), _patch_event),
    ("condition_edges", frozenset({EDGES}), _patch_condition_edges),
    ("condition_wait", frozenset({EDGES, WAITS}), _patch_condition_wait),
    ("queues", frozenset({EDGES}), _patch_queues),
    ("queue_mutex", frozenset({WAITS}), _patch_queue_mutex),
    ("simple_queue", frozenset({EDGES, WAITS}), _patch_simple_queue),
    ("executor", frozenset({EDGES}), _patch_executor),
    ("asyncio_waits", frozenset({WAITS}), _patch_asyncio_waits),
]
# patched on each event-loop class: asyncio's, and uvloop's once imported (loop_classes)
# (each wraps one method, named last: a class handed over twice is wrapped once)
LOOP_GROUPS: list[tuple[str, frozenset[str], Callable[[Replace, LoopClass], None], str]] = [
    ("loop_handoff", frozenset({EDGES}), _patch_loop_handoff, "call_soon_threadsafe"),
    ("loop_futures", frozenset({WAITS}), _patch_loop_futures, "create_future"),
]
Held = Callable[[Any, str], bool]  # whether an attribute is already one of ours


def install(kinds: set[str], installed: set[str], replace: Replace, held: Held,
            loop_classes: list[LoopClass]) -> None:
    """Install every group some of ``kinds`` needs that is not ``installed`` yet (the
    loop groups on each of ``loop_classes``, where not ``held`` already)."""
    for name, needs, patch in GROUPS:
        if name not in installed and needs & kinds:
            patch(replace)
            installed.add(name)
    for name, needs, patch_class, method in LOOP_GROUPS:
        if name not in installed and needs & kinds:
            for loop_class in loop_classes:
                if not held(loop_class, method):
                    patch_class(replace, loop_class)
            installed.add(name)


def install_loop_class(loop_class: LoopClass, installed: set[str], replace: Replace,
                       held: Held) -> None:
    """A loop class imported after the groups went in gets the installed loop groups
    (once: the import's call may come after a start() that wrapped the class already)."""
    for name, _, patch_class, method in LOOP_GROUPS:
        if name in installed and not held(loop_class, method):
            patch_class(replace, loop_class)
