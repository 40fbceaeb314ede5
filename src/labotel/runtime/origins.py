"""Where threads and asyncio tasks were created: a few frames, captured cheaply.

Thread creation is ``Thread.start()`` (the analogue of Go's ``go`` statement); task
creation is the loop's task factory (``track_loop_tasks``, for loops the monitor finds
running) or, for ``labotel.testing``, ``create_task`` itself on each loop class (asyncio's
and uvloop's: every loop, from its first step on). Frames inside threading, asyncio,
concurrent.futures and labotel itself are skipped so the site names the application line.

Several holders may install the hooks at once (the monitor, ``labotel.testing``): they
stay until the last holder uninstalls, so ``labotel.shutdown()`` in a test suite does not
take creation sites away from the leak checks.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import weakref
from typing import Any

from labotel import fork_safe
from labotel import frames as frames_module
from labotel.compat import cpython
from labotel.patching import Patcher, say_left_in_place
from labotel.runtime import loop_classes

Frame = frames_module.Frame
MAX_FRAMES = 6

_task_origins: weakref.WeakKeyDictionary[asyncio.Future, tuple[Frame, ...]] = (
    weakref.WeakKeyDictionary())
# coroutines handed to run_coroutine_threadsafe -> the caller's frames: their task is made
# on the loop's thread, whose stack holds no application frame
_coro_origins: weakref.WeakKeyDictionary[Any, tuple[Frame, ...]] = weakref.WeakKeyDictionary()
_patcher = Patcher()  # Thread.start
_task_patcher = Patcher()  # create_task of each loop class, run_coroutine_threadsafe
_holders: dict[str, bool] = {}  # holder -> wants every loop's tasks
_tasks_hooked = False  # run_coroutine_threadsafe patched, loop classes watched
_install_lock = fork_safe.lock()
_MISSING = object()
_loop_patcher_lock = fork_safe.lock()
# by id, with a weak reference (a WeakSet would hash a custom loop under our lock)
_patched_loops: dict[int, weakref.ref] = {}
PRUNE_AT = 64  # entries before the dead loops' are dropped (then twice the live ones)
_prune_at = PRUNE_AT


def capture(skip: int = 1, limit: int = MAX_FRAMES) -> tuple[Frame, ...]:
    """The caller's stack, innermost first, without library frames (one shared tuple
    per distinct stack)."""
    frame = cpython.getframe(skip)
    frames: list[Frame] = []
    while frame is not None and len(frames) < limit:
        filename = frame.f_code.co_filename
        if not is_machinery(filename):
            frames.append((filename, frame.f_lineno, frame.f_code.co_name))
        frame = frame.f_back
    return _shared(tuple(frames))


# Every task a server creates per connection has the same creation stack: each one kept
# its own copy: labotel kept 458 bytes a task, 43.7 MB for 100 000 (121 bytes now that
# they share one: the task's weak reference; bench/many_tasks.py).
# Hashing a tuple of file names, line numbers and function names runs no application
# code. Past MAX_SHARED distinct stacks the table starts over (copies are then shared
# again from the next capture on).
MAX_SHARED = 4096
_shared_origins: dict[tuple[Frame, ...], tuple[Frame, ...]] = {}
ORIGIN_ENTRY_BYTES = 130  # a task's entry in _task_origins: its weak reference and slot
SHARED_ORIGIN_BYTES = 500  # a shared stack: its tuples and strings' table slot


def _shared(origin: tuple[Frame, ...]) -> tuple[Frame, ...]:
    shared = _shared_origins.get(origin)
    if shared is not None:
        return shared
    if len(_shared_origins) >= MAX_SHARED:
        _shared_origins.clear()
    _shared_origins[origin] = origin
    return origin


def bytes_kept() -> int:
    """labotel's own memory here (an estimate): an entry per live task it saw created,
    and the shared creation stacks."""
    return len(_task_origins) * ORIGIN_ENTRY_BYTES + len(_shared_origins) * SHARED_ORIGIN_BYTES


def site(frames: tuple[Frame, ...] | None) -> str:
    """``file:line`` of the innermost frame, or ``unknown``."""
    if not frames:
        return "unknown"
    filename, lineno, _ = frames[0]
    return f"{filename}:{lineno}"


def is_machinery(filename: str) -> bool:
    """Whether a frame of ``filename`` is threading/asyncio/concurrent.futures or labotel
    (the frames every thread and task passes through), not application code."""
    return frames_module.is_labotel(filename) or frames_module.is_concurrency_machinery(
        filename)


def thread_origin(thread: threading.Thread) -> tuple[Frame, ...] | None:
    return getattr(thread, "_labotel_origin", None)


def is_labotel_thread(thread: threading.Thread) -> bool:
    """Started by labotel (its debug server, detectors, exporters), or by such a thread.

    The leak detectors leave these out: labotel's own threads are never the application's
    leak (a busy debug server grows its worker pool; an exporter starts its own threads).
    """
    return getattr(thread, "_labotel_own", False)


def _started_by_labotel(frame: Any) -> bool:
    """Whether the code calling Thread.start (``frame`` and outwards) is labotel's.

    Frames of threading itself and of the Thread.start wrappers (this module's, the race
    detector's) are passed over: they are on every start's stack.
    """
    wrappers = set()
    start = threading.Thread.start
    while getattr(start, "__wrapped__", None) is not None:
        wrappers.add(getattr(start, "__code__", None))
        start = start.__wrapped__  # type: ignore[attr-defined]
    while frame is not None:
        code = frame.f_code
        if code not in wrappers and not frames_module.is_concurrency_machinery(
                code.co_filename):
            return frames_module.is_labotel(code.co_filename)
        frame = frame.f_back
    return False


def task_origin(task: asyncio.Future) -> tuple[Frame, ...] | None:
    return _task_origins.get(task)


def install(holder: str = "monitor", *, every_loop: bool = False) -> None:
    """Record creation sites of threads started from now on; with ``every_loop``, also of
    tasks created through any asyncio or uvloop loop's ``create_task`` (``asyncio.create_task``,
    ``TaskGroup``, ``gather``, ``run_coroutine_threadsafe``...), which ``recorded_tasks()``
    then lists. Idempotent per ``holder``."""
    global _tasks_hooked
    with _install_lock:
        _holders[holder] = _holders.get(holder, False) or every_loop
        if not _patcher:
            _patch_thread_start()
        watching = every_loop and not _tasks_hooked
        if watching:
            _tasks_hooked = True
            _patch_run_coroutine_threadsafe()
    if watching:  # outside our lock: each class is patched under it
        for loop_class in loop_classes.watch(_record_tasks_of):
            _record_tasks_of(loop_class)


def uninstall(holder: str = "monitor") -> None:
    """Drop ``holder``'s hooks; the last holder out undoes every patch and task factory."""
    global _tasks_hooked
    left: list[str] = []
    with _install_lock:
        _holders.pop(holder, None)
        if not any(_holders.values()):
            _tasks_hooked = False
            loop_classes.unwatch(_record_tasks_of)
            left += _task_patcher.undo()
        last_out = not _holders
        if last_out:
            left += _patcher.undo()
    say_left_in_place(left)
    if not last_out:
        return
    with _loop_patcher_lock:
        loops = [ref() for ref in _patched_loops.values()]
        _patched_loops.clear()
    for loop in loops:  # the loop's own methods: outside our lock
        if loop is None:
            continue
        factory = loop.get_task_factory()
        if getattr(factory, "_labotel_previous", _MISSING) is not _MISSING:
            loop.set_task_factory(factory._labotel_previous)


def _patch_thread_start() -> None:
    original_start = threading.Thread.start

    @functools.wraps(original_start)
    def start(self: threading.Thread) -> None:
        try:
            self._labotel_origin = capture(2)  # type: ignore[attr-defined]
            if is_labotel_thread(threading.current_thread()) or _started_by_labotel(
                    cpython.getframe(1)):
                self._labotel_own = True  # type: ignore[attr-defined]
        except Exception:  # a thread subclass with __slots__: no origin, still starts
            pass
        original_start(self)

    _patcher.replace(threading.Thread, "start", start)


def _record_tasks_of(loop_class: loop_classes.LoopClass) -> None:
    """Wrap ``loop_class.create_task`` (once, while a holder wants every loop's tasks)."""
    with _install_lock:
        if not _tasks_hooked or _task_patcher.holds(loop_class, "create_task"):
            return  # uninstalled meanwhile (a late import's call), or wrapped already
        original = loop_class.create_task

        @functools.wraps(original)
        def create_task(self: asyncio.AbstractEventLoop, coro: Any, *args: Any,
                        **kwargs: Any) -> asyncio.Task:
            task = original(self, coro, *args, **kwargs)
            try:
                if not _task_origins.get(task):  # a factory of track_loop_tasks may have one
                    handed = _coro_origins.pop(coro, None) if _coro_origins else None
                    _task_origins[task] = handed or capture(2)
            except Exception:  # not weak-referenceable, or a hostile __hash__: no origin
                pass
            return task

        _task_patcher.replace(loop_class, "create_task", create_task)


def _patch_run_coroutine_threadsafe() -> None:
    """(under ``_install_lock``)"""
    original_threadsafe = asyncio.run_coroutine_threadsafe

    @functools.wraps(original_threadsafe)
    def run_coroutine_threadsafe(coro: Any, loop: asyncio.AbstractEventLoop) -> Any:
        try:
            _coro_origins[coro] = capture(2)
        except Exception:  # not a coroutine: run_coroutine_threadsafe says so
            pass
        return original_threadsafe(coro, loop)

    for module in (asyncio, asyncio.tasks):
        if module.__dict__.get("run_coroutine_threadsafe") is original_threadsafe:
            _task_patcher.replace(module, "run_coroutine_threadsafe", run_coroutine_threadsafe)


def recorded_tasks() -> list[asyncio.Future]:
    """Tasks with a recorded creation site that are still referenced somewhere."""
    for _ in range(100):  # another thread may add one while we copy
        try:
            return list(_task_origins.keys())
        except RuntimeError:
            continue
    return []


def track_loop_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """Wrap ``loop``'s task factory (keeping any the app set) to record task origins."""
    global _prune_at
    ref = weakref.ref(loop)
    with _loop_patcher_lock:  # claim the loop; its own methods run outside the lock
        known = _patched_loops.get(id(loop))
        if known is not None and known() is loop:
            return
        if len(_patched_loops) >= _prune_at:  # loops made and dropped (one per test,
            # per asyncio.run() of a worker): forgotten here, not only at shutdown
            for key in [key for key, old in _patched_loops.items() if old() is None]:
                del _patched_loops[key]
            _prune_at = max(PRUNE_AT, 2 * len(_patched_loops))
        _patched_loops[id(loop)] = ref
    if loop.is_closed():
        with _loop_patcher_lock:
            _patched_loops.pop(id(loop), None)
        return
    previous = loop.get_task_factory()

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Future:
        if previous is not None:
            task = previous(loop, coro, **kwargs)
        else:
            task = asyncio.Task(coro, loop=loop, **kwargs)
        try:
            _task_origins[task] = capture(2)
        except TypeError:  # not weak-referenceable: no origin
            pass
        return task

    factory._labotel_previous = previous  # type: ignore[attr-defined]
    loop.set_task_factory(factory)

