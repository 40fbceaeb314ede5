"""The event-loop classes whose methods labotel wraps: asyncio's ``BaseEventLoop`` and,
once it is imported, uvloop's ``Loop`` (what ``uvicorn[standard]`` runs).

uvloop's methods are written in C, but the class loops are made from, ``uvloop.Loop``, is
a Python subclass of the C one, so its attributes can be set: ``run_forever``,
``create_task``, ``call_soon_threadsafe`` and ``create_future`` wrapped there are seen by
every caller, uvloop's own ``run_until_complete`` included (it looks them up by name).
uvloop is often imported after ``start()`` (under ``opentelemetry-instrument``, uvicorn
imports it once the launcher has started labotel), so when someone first wants loop
classes, an entry on ``sys.meta_path`` waits for that import and hands its ``Loop`` to
every listener as soon as the module has run; an import already under way on another
thread then (found before the entry went in) is waited for by a short-lived thread.
labotel never imports uvloop itself. The entry is put in once and never taken out: the
import system walks that list while other threads may change it, and an entry taken out
from in front of a walk shifts the rest under it, so that import skips the finder after
ours (a ``ModuleNotFoundError`` in the application); one put in only makes a walk ask one
finder twice. With no listener, it answers nothing after one string comparison.
"""

from __future__ import annotations

import asyncio
import copy
import importlib.abc
import importlib.machinery
import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from labotel import fork_safe, log_relay

log = logging.getLogger(__name__)
LoopClass = type[asyncio.AbstractEventLoop]
LoopClassListener = Callable[[LoopClass], None]
WATCHED_MODULE = "uvloop"

IMPORT_WAIT = 30.0  # seconds an import in progress at watch() is waited for, at most
IMPORT_POLL = 0.05  # ... looked at this often (the import is the other thread's to finish)
_lock = fork_safe.lock()
_listeners: list[LoopClassListener] = []
_finder_in = False  # put on sys.meta_path (once, for good)
_finding = threading.local()  # a thread asking the other finders: not us again
_handed: LoopClass | None = None  # the loop class last handed on (catch_up's mark)


def current() -> list[LoopClass]:
    """Loop classes there are now: asyncio's, and uvloop's if it is imported."""
    classes: list[LoopClass] = [asyncio.BaseEventLoop]
    module = sys.modules.get(WATCHED_MODULE)
    loop_class = _loop_class(module) if module is not None else None
    if loop_class is not None:
        classes.append(loop_class)
    return classes


def _loop_class(module: ModuleType) -> LoopClass | None:
    loop_class = getattr(module, "Loop", None)
    if isinstance(loop_class, type) and issubclass(loop_class, asyncio.AbstractEventLoop):
        return loop_class
    return None


def watch(listener: LoopClassListener) -> list[LoopClass]:
    """Call ``listener(cls)`` on each loop class imported from now on (on the importing
    thread, once the module has run); returns the classes there are already."""
    global _finder_in
    with _lock:
        if listener not in _listeners:
            _listeners.append(listener)
        if not _finder_in:
            sys.meta_path.insert(0, _FINDER)  # (also for an import that fails now and
            _finder_in = True  # is tried again)
    global _handed
    module = sys.modules.get(WATCHED_MODULE)
    if module is not None and _loop_class(module) is None:
        _wait_for_the_import_in_progress()
    classes = current()
    if len(classes) > 1:  # uvloop's class is there already: the caller hooks it itself
        _handed = classes[-1]
    return classes


def _wait_for_the_import_in_progress() -> None:
    """The module is being imported on another thread, past the import watch (it was
    found before the watch went in): its class is handed on once the module has it."""
    try:
        threading.Thread(target=_hand_on_when_imported, name="labotel-loop-class-import",
                         daemon=True).start()
    except RuntimeError:  # no thread to be had: that import's loops go unwatched
        pass


def _hand_on_when_imported() -> None:
    give_up = time.monotonic() + IMPORT_WAIT
    while time.monotonic() < give_up:
        module = sys.modules.get(WATCHED_MODULE)
        if module is None:
            return  # the import failed; the watch sees the next one
        if _loop_class(module) is not None:
            _imported(module)
            return
        time.sleep(IMPORT_POLL)


def unwatch(listener: LoopClassListener) -> None:
    """Stop calling ``listener`` (the import watch stays, answering nothing without one)."""
    with _lock:
        if listener in _listeners:
            _listeners.remove(listener)


def catch_up() -> None:
    """Where a loop is about to run: hand on a loop class imported past the watch (a finder
    in front of ours answered for it, or its import had walked past ours when ours went
    in). One dictionary lookup and a comparison when there is none."""
    module = sys.modules.get(WATCHED_MODULE)
    if module is None or not _listeners:
        return
    loop_class = _loop_class(module)
    if loop_class is not None and loop_class is not _handed:
        _imported(module)


def _imported(module: ModuleType) -> None:
    """The watched module has run (on the importing thread): hand its loop class on."""
    global _handed
    loop_class = _loop_class(module)
    with _lock:
        listeners = list(_listeners)
    if loop_class is None:
        return
    _handed = loop_class
    for listener in listeners:
        try:
            listener(loop_class)
        except Exception:  # the application's import goes on; logged off its thread
            log_relay.log(log, logging.ERROR, "labotel: hooking %s.Loop failed",
                          WATCHED_MODULE, exc_info=True)


class _ThenHook(importlib.abc.Loader):
    """The module's own loader, and ``_imported`` once the module has run."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def __getattr__(self, name: str) -> Any:
        # the rest of the real loader's interface (get_filename, is_package,
        # get_resource_reader...): a spec found before the import is used by pkgutil and
        # importlib.resources as it is
        if name == "loader":  # not set yet (a copy being made): no recursion
            raise AttributeError(name)
        return getattr(self.loader, name)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        spec = module.__spec__
        if spec is not None and spec.loader is self:  # the module names its real loader
            spec.loader = self.loader
        if getattr(module, "__loader__", None) is self:
            module.__loader__ = self.loader
        self.loader.exec_module(module)
        _imported(module)


class _ImportWatch(importlib.abc.MetaPathFinder):
    """Waits for ``import uvloop`` while someone listens: finds its spec with the other
    finders and wraps the loader. Every other import costs one string comparison here."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != WATCHED_MODULE or not _listeners or getattr(_finding, "busy", False):
            return None
        _finding.busy = True
        try:
            spec = _spec_from_the_others(self, fullname, path, target)
        except Exception:  # the import system will ask them again and report it
            return None
        finally:
            _finding.busy = False
        if spec is None or not hasattr(spec.loader, "exec_module"):
            return None
        spec = copy.copy(spec)  # the finder's own may be kept and handed out again
        spec.loader = _ThenHook(spec.loader)
        return spec


def _spec_from_the_others(watch: _ImportWatch, fullname: str, path: Sequence[str] | None,
                          target: ModuleType | None) -> importlib.machinery.ModuleSpec | None:
    for finder in list(sys.meta_path):
        if finder is watch:
            continue
        find_spec = getattr(finder, "find_spec", None)
        if find_spec is None:
            continue
        spec = find_spec(fullname, path, target)
        if spec is not None:
            return spec
    return None


_FINDER = _ImportWatch()
