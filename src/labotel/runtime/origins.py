"""Where threads and asyncio tasks were created: a few frames, captured cheaply.

Thread creation is ``Thread.start()`` (the analogue of Go's ``go`` statement); task
creation is the loop's task factory. Frames inside threading, asyncio, concurrent.futures
and labotel itself are skipped so the site names the application line.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import weakref
from typing import Any

from labotel.compat import cpython
from labotel.patching import Patcher

Frame = tuple[str, int, str]  # (filename, lineno, function)

_SKIP_DIRS = tuple(
    os.path.dirname(mod.__file__) + os.sep
    for mod in (asyncio, sys.modules["labotel"])
) + (os.path.dirname(threading.__file__) + os.sep + "threading.py",
     os.path.dirname(threading.__file__) + os.sep + "concurrent" + os.sep)
# The demo service lives inside the package but is application code: its lines are the
# ones a report should name.
APPLICATION_DIRS = (os.path.join(os.path.dirname(sys.modules["labotel"].__file__), "demo")
                     + os.sep,)
MAX_FRAMES = 6
_LABOTEL_DIR = os.path.dirname(sys.modules["labotel"].__file__) + os.sep
_THREADING_FILES = _SKIP_DIRS[-2:]  # threading.py and concurrent/

_task_origins: weakref.WeakKeyDictionary[asyncio.Future, tuple[Frame, ...]] = (
    weakref.WeakKeyDictionary())
_patcher = Patcher()
_MISSING = object()
_loop_patcher_lock = threading.Lock()
# by id, with a weak reference (a WeakSet would hash a custom loop under our lock)
_patched_loops: dict[int, weakref.ref] = {}


def capture(skip: int = 1, limit: int = MAX_FRAMES) -> tuple[Frame, ...]:
    """The caller's stack, innermost first, without library frames."""
    frame = cpython.getframe(skip)
    frames: list[Frame] = []
    while frame is not None and len(frames) < limit:
        filename = frame.f_code.co_filename
        if not filename.startswith(_SKIP_DIRS) or filename.startswith(APPLICATION_DIRS):
            frames.append((filename, frame.f_lineno, frame.f_code.co_name))
        frame = frame.f_back
    return tuple(frames)


def site(frames: tuple[Frame, ...] | None) -> str:
    """``file:line`` of the innermost frame, or ``unknown``."""
    if not frames:
        return "unknown"
    filename, lineno, _ = frames[0]
    return f"{filename}:{lineno}"


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
        start = start.__wrapped__
    while frame is not None:
        code = frame.f_code
        if code not in wrappers and not code.co_filename.startswith(_THREADING_FILES):
            return code.co_filename.startswith(_LABOTEL_DIR) and not code.co_filename.startswith(
                APPLICATION_DIRS)
        frame = frame.f_back
    return False


def task_origin(task: asyncio.Future) -> tuple[Frame, ...] | None:
    return _task_origins.get(task)


def install() -> None:
    """Record creation sites of threads started and tasks created from now on."""
    if _patcher:
        return
    original_start = threading.Thread.start

    def start(self: threading.Thread) -> None:
        try:
            self._labotel_origin = capture(2)
            if is_labotel_thread(threading.current_thread()) or _started_by_labotel(
                    cpython.getframe(1)):
                self._labotel_own = True
        except Exception:  # a thread subclass with __slots__: no origin, still starts
            pass
        original_start(self)

    start.__wrapped__ = original_start  # type: ignore[attr-defined]
    _patcher.replace(threading.Thread, "start", start)


def uninstall() -> None:
    _patcher.undo()
    with _loop_patcher_lock:
        loops = [ref() for ref in _patched_loops.values()]
        _patched_loops.clear()
    for loop in loops:  # the loop's own methods: outside our lock
        if loop is None:
            continue
        factory = loop.get_task_factory()
        if getattr(factory, "_labotel_previous", _MISSING) is not _MISSING:
            loop.set_task_factory(factory._labotel_previous)


def track_loop_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """Wrap ``loop``'s task factory (keeping any the app set) to record task origins."""
    ref = weakref.ref(loop)
    with _loop_patcher_lock:  # claim the loop; its own methods run outside the lock
        known = _patched_loops.get(id(loop))
        if known is not None and known() is loop:
            return
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

