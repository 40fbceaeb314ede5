"""Find every running asyncio event loop, including loops started after ``start()``.

``run_forever`` of every loop class (``BaseEventLoop`` and uvloop's ``Loop``, also once it
is imported later: ``loop_classes``) and ``asyncio.Runner.run`` (``asyncio.run()``,
uvloop.run(), uvicorn; and a loop of another implementation) are wrapped so a loop
announces itself when it starts running. Loops already running when labotel starts are
found once: the loop of the thread calling ``start()``, on each thread a ``run_forever``
or a Runner's ``run`` in progress, the loop of every unfinished task, and a loop whose
method is a thread's target (``Thread(target=loop.run_forever)``). A uvloop loop run by
hand leaves no frame (its ``run_forever`` is C), so one that already runs at ``start()`` on
another thread is found only by the last two: one with no task then, run from a function
of the application's, is not found.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import types
import weakref
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from labotel import fork_safe, log_relay
from labotel.compat import cpython, python
from labotel.patching import Patcher, say_left_in_place
from labotel.runtime import loop_classes
from labotel.runtime.thread_frames import attribute, current_frames, stack

log = logging.getLogger(__name__)
LoopListener = Callable[[asyncio.AbstractEventLoop], None]

# Loops by id, each with a weak reference to tell it from a later loop at the same address:
# a WeakSet would hash the loop (a custom loop class's __hash__) under our lock.
_loops: dict[int, weakref.ref] = {}
_listeners: list[LoopListener] = []
# the thread each registered loop announced itself from (uvloop keeps its own in C)
_threads: dict[int, int] = {}
_lock = fork_safe.lock()
PRUNE_AT = 64  # registered loops before the dead ones are dropped (then twice the live)
_prune_at = PRUNE_AT
_RUNNERS_FILE = asyncio.runners.__file__
_class_patcher = Patcher()  # run_forever of each loop class (under _lock: a late class's
# patch comes from the thread importing uvloop)
_watching = False  # between install() and uninstall()


def _known(loop: asyncio.AbstractEventLoop) -> bool:
    """(under ``_lock``) Whether ``loop`` is registered; forgets dead loops on the way."""
    ref = _loops.get(id(loop))
    return ref is not None and ref() is loop


def _alive() -> list[asyncio.AbstractEventLoop]:
    """(under ``_lock``) The registered loops still alive (the dead ones forgotten)."""
    global _prune_at
    loops = []
    for key, ref in list(_loops.items()):
        loop = ref()
        if loop is None:
            del _loops[key]
            _threads.pop(key, None)
        else:
            loops.append(loop)
    _prune_at = max(PRUNE_AT, 2 * len(_loops))
    return loops


def thread_of(loop: asyncio.AbstractEventLoop) -> int | None:
    """The ident of the thread ``loop`` runs on, while it runs (None when not known)."""
    ident = cpython.loop_thread_id(loop)  # asyncio's own record
    if ident is not None or not loop.is_running():
        return ident
    with _lock:
        return _threads.get(id(loop)) if _known(loop) else None


def forget_other_threads_loops() -> None:
    """In a forked child: only the thread that forked is here, so a loop another thread
    ran is copied in a state that says it runs, and never will (it was counted in
    ``labotel.asyncio.loops`` and asked for its lag)."""
    me = threading.get_ident()
    for key in [key for key, thread in _threads.items() if thread != me]:
        _loops.pop(key, None)
        _threads.pop(key, None)


def running_loops() -> list[asyncio.AbstractEventLoop]:
    """Loops that are running now (closed and stopped ones are dropped)."""
    if not _loops:  # the usual answer in a thread-only process, without the lock
        return []
    with _lock:
        loops = _alive()
    return [loop for loop in loops if loop.is_running() and not loop.is_closed()]


def add_listener(listener: LoopListener) -> None:
    """Call ``listener(loop)`` on each running loop now and on every loop that starts later.

    The listener runs in the loop's own thread for loops that start later, and via
    ``call_soon_threadsafe`` for loops already running.
    """
    with _lock:
        _listeners.append(listener)
        loops = _alive()
    for loop in loops:
        _call_soon_threadsafe(loop, _notify_one, listener, loop)


def remove_listener(listener: LoopListener) -> None:
    with _lock:
        if listener in _listeners:
            _listeners.remove(listener)


def _notify_one(listener: LoopListener, loop: asyncio.AbstractEventLoop) -> None:
    try:
        listener(loop)
    except Exception:  # a failing listener must not break the app's loop, nor a stuck
        # logging handler stop it (this runs on the loop's thread): logged by the relay
        log_relay.log(log, logging.ERROR, "labotel: event-loop listener %r failed", listener,
                      exc_info=True)


def register(loop: asyncio.AbstractEventLoop) -> None:
    """Announce a running loop (called from its own thread)."""
    ref = weakref.ref(loop)
    thread = threading.get_ident()
    with _lock:
        if _known(loop):
            _threads[id(loop)] = thread  # run again, maybe on another thread
            return
        if len(_loops) >= _prune_at:  # loops made and dropped, in a process that never
            _alive()  # asks running_loops() (no metrics read): forgotten here too
        _loops[id(loop)] = ref
        _threads[id(loop)] = thread
        listeners = list(_listeners)
    for listener in listeners:
        _notify_one(listener, loop)


def install(patcher: Patcher) -> None:
    """Announce loops from now on; the Runner patch goes into ``patcher`` (the monitor's),
    the loop classes' into this module's own (undone by ``uninstall``)."""
    global _watching
    with _lock:
        _watching = True
    for loop_class in loop_classes.watch(_announce_loops_of):
        _announce_loops_of(loop_class)
    _announce_runner_loops(patcher)
    for loop in _find_running_loops():
        with _lock:
            known = _known(loop)
        if not known:
            _call_soon_threadsafe(loop, register, loop)


def _call_soon_threadsafe(loop: asyncio.AbstractEventLoop, *call: Any) -> None:
    """Hand ``call`` to a running loop; one that stopped or closed meanwhile (its thread
    goes on) needs nothing, and its refusal must not fail ``start()``."""
    try:
        if loop.is_running() and not loop.is_closed():
            loop.call_soon_threadsafe(*call)
    except Exception:
        pass


def _announce_loops_of(loop_class: loop_classes.LoopClass) -> None:
    """Wrap ``loop_class.run_forever`` (once) so each loop announces itself."""
    with _lock:
        if not _watching or _class_patcher.holds(loop_class, "run_forever"):
            return  # uninstalled meanwhile (a late import's call), or wrapped already
        original = loop_class.run_forever

        @functools.wraps(original)
        def run_forever(self: asyncio.AbstractEventLoop) -> None:
            if _watching:  # (a wrapper left inside someone else's after shutdown: inert)
                self.call_soon(register, self)
            return original(self)

        _class_patcher.replace(loop_class, "run_forever", run_forever)


def _announce_runner_loops(patcher: Patcher) -> None:
    """A loop of another implementation than asyncio's or uvloop's has a ``run_forever``
    labotel does not wrap; ``asyncio.run()`` and ``asyncio.Runner`` (which uvloop.run()
    and uvicorn use too) announce whatever loop they run."""
    original = asyncio.Runner.run

    @functools.wraps(original)
    def run(self: asyncio.Runner, *args: object, **kwargs: object) -> object:
        if not _watching:  # left inside someone else's wrapper after shutdown: inert
            return original(self, *args, **kwargs)  # type: ignore[arg-type]
        loop_classes.catch_up()  # uvloop imported past the watch: hooked before it runs
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # not called from a running loop (the runner refuses that)
            try:
                loop = self.get_loop()  # the runner's own, made now if not yet
                loop.call_soon(register, loop)
            except Exception:  # closed or failing: the runner says so itself, below
                pass
        return original(self, *args, **kwargs)  # type: ignore[arg-type]

    patcher.replace(asyncio.Runner, "run", run)


def uninstall() -> None:
    """Forget loops and listeners, and unwrap the loop classes (the Runner patch is the
    monitor's patcher's to undo)."""
    global _watching
    loop_classes.unwatch(_announce_loops_of)
    with _lock:
        _watching = False
        _listeners.clear()
        _loops.clear()
        _threads.clear()
        left = _class_patcher.undo()
    say_left_in_place(left)


def _find_running_loops() -> list[asyncio.AbstractEventLoop]:
    """Loops running on some thread right now (one-off scan): the caller's own
    (``start()`` called from a coroutine or callback, as in a FastAPI lifespan), on each
    thread a ``BaseEventLoop.run_forever`` or an ``asyncio.Runner.run`` in progress
    (uvloop's run_forever is C: no frame of its own, but ``uvloop.run()`` and uvicorn run
    it from a Runner), and the loops of unfinished tasks and of threads' targets (a uvloop
    loop run by hand)."""
    found = []
    try:
        found.append(asyncio.get_running_loop())
    except RuntimeError:  # start() called outside a loop
        pass
    for innermost in current_frames().values():
        for frame in stack(innermost):
            loop = _loop_run_in(frame)
            if loop is not None:
                found.append(loop)
                break
    found.extend(_loops_of_tasks())
    found.extend(_loops_threads_run())
    running: list[asyncio.AbstractEventLoop] = []
    for loop in found:
        try:  # the application's loop class answers (outside labotel's lock)
            if loop.is_running() and all(loop is not other for other in running):
                running.append(loop)
        except Exception:
            continue
    return running


def _loops_of_tasks() -> Iterator[asyncio.AbstractEventLoop]:
    """The loop of each unfinished task, each loop once (asyncio's registry of every task,
    copied; ~10 ms per 100 000 tasks, once at ``start()``)."""
    seen: set[int] = set()
    for registry in python.TASK_REGISTRIES or ():
        for task in python.copy_registry(registry):
            try:  # a task class of the application's answers
                loop = None if task.done() else task.get_loop()
            except Exception:
                continue
            if loop is not None and id(loop) not in seen:
                seen.add(id(loop))
                yield loop


def _loops_threads_run() -> Iterator[asyncio.AbstractEventLoop]:
    """Loops whose bound method a thread runs as its target:
    ``Thread(target=loop.run_forever)``, read from each thread's own dict."""
    for thread in list(cpython.THREADS_ACTIVE.values()):
        try:  # (a Thread subclass of the application's may answer for its __dict__)
            target = cpython.thread_target(thread.__dict__)
        except Exception:
            continue
        if type(target) in (types.MethodType, types.BuiltinMethodType):
            owner = target.__self__
            if issubclass(type(owner), asyncio.AbstractEventLoop):
                yield owner


def _loop_run_in(frame: FrameType) -> asyncio.AbstractEventLoop | None:
    """The loop ``frame`` runs, if it is a ``run_forever`` or a Runner's ``run``."""
    name = frame.f_code.co_name
    if name != "run_forever" and (name != "run" or frame.f_code.co_filename != _RUNNERS_FILE):
        return None  # (every thread has a Thread.run frame: its locals are not asked)
    candidate = (attribute(frame, "f_locals") or {}).get("self")
    if name == "run_forever":
        return candidate if isinstance(candidate, asyncio.AbstractEventLoop) else None
    return cpython.runner_loop(candidate) if isinstance(candidate, asyncio.Runner) else None
