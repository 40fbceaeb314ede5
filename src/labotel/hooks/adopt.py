"""Adopt the module-level locks an application created before ``labotel.start()``.

``_lock = threading.Lock()`` at import time is the most common way to guard a module's
state, and it predates ``start()``, so it is a plain lock that the hooks cannot see: the
race detector would take every access it guards for a race, and the contention profiler
would miss its waits. At ``start()`` each such global in the application's own modules
(not the standard library, not site-packages, not labotel) is rebound to an instrumented
wrapper around *the same* lock object, so code that resolves the name at call time
(``with _lock:``) is seen, and anyone still holding the bare object keeps mutual
exclusion with it. Names bound to the factories themselves
(``from threading import Lock``, ``from queue import SimpleQueue``) are rebound to the
instrumented classes, so what those modules create from now on is seen. ``undo()`` puts
the originals back (unless the module rebound the name meanwhile).
"""

from __future__ import annotations

import _thread
import os
import sys
from types import ModuleType
from typing import Any

from labotel import frames
from labotel.hooks.primitives import (
    ORIGINAL_FACTORIES,
    InstrumentedLock,
    InstrumentedRLock,
    InstrumentedSimpleQueue,
)

_LOCK_TYPE = type(_thread.allocate_lock())
_RLOCK_TYPE = type(_thread.RLock())


def is_application_module(module: ModuleType) -> bool:
    """The application's own module: not labotel's, the standard library's or an
    installed package's (whose locks their authors made safe already)."""
    filename = getattr(module, "__file__", None)
    if not isinstance(filename, str) or not filename:
        return False
    if frames.is_library(filename):  # labotel's or the stdlib's by its own path: no syscall
        return False
    path = os.path.realpath(filename)  # an installed package may be a link to a checkout
    return frames.is_application(path) and not frames.is_installed(path)


def _plain_locks_and_factories(module: Any,
                               replacements: dict[int, Any]) -> list[tuple[str, Any, Any]]:
    """(name, value, the wrapper class) of each module global that is a plain lock, and
    (name, value, None) of each that is one of the factories themselves."""
    try:
        namespace = vars(module)
        items = list(namespace.items())
    except Exception:  # not a module (sys.modules takes any object), or a hostile one
        return []
    found: list[tuple[str, Any, Any]] = []
    for name, value in items:
        kind = type(value)
        if kind is _LOCK_TYPE:
            found.append((name, value, InstrumentedLock))
        elif kind is _RLOCK_TYPE:
            found.append((name, value, InstrumentedRLock))
        elif id(value) in replacements:  # `from threading import Lock` and the like
            found.append((name, value, None))
    return found


class LockAdopter:
    def __init__(self) -> None:
        self._adopted: list[tuple[ModuleType, str, Any, Any]] = []

    def adopt(self) -> int:
        """Wrap module-global plain locks of application modules, and rebind the lock and
        SimpleQueue factories they imported by name; returns how many globals changed."""
        replacements = {id(ORIGINAL_FACTORIES["Lock"]): InstrumentedLock,
                        id(ORIGINAL_FACTORIES["RLock"]): InstrumentedRLock,
                        id(ORIGINAL_FACTORIES["SimpleQueue"]): InstrumentedSimpleQueue}
        # one wrapper per lock, whatever the globals bound to it (``from state import
        # LOCK``): a lock records its holder and lends itself on the wrapper, and two
        # wrappers of one lock could not see each other's (see primitives._lend)
        wrappers: dict[int, Any] = {}
        for module in list(sys.modules.values()):
            found = _plain_locks_and_factories(module, replacements)
            # the namespace first: resolving a module's path is a dozen syscalls, each a GIL
            # hand-off that costs ms while the application's threads are busy, and only a
            # few dozen of hundreds of modules hold a plain lock or a factory at all
            if not found or not is_application_module(module):
                continue
            namespace = vars(module)
            for name, value, wrap in found:
                wrapper: Any
                if wrap is None:
                    wrapper = replacements[id(value)]
                else:
                    wrapper = wrappers.get(id(value))
                    if wrapper is None:
                        wrapper = wrappers[id(value)] = wrap(value)
                namespace[name] = wrapper
                self._adopted.append((module, name, value, wrapper))
        return len(self._adopted)

    def undo(self) -> None:
        while self._adopted:
            module, name, original, wrapper = self._adopted.pop()
            namespace = vars(module)
            if namespace.get(name) is wrapper:
                namespace[name] = original
