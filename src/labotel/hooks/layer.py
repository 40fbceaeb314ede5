"""Subscribing to the hooks: patches go in with the first subscriber that needs them and
come out with the last one; module-level locks of the application are adopted once.

At most one subscriber of each kind listens at a time (the race detector for edges, the
contention profiler for waits).
"""

from __future__ import annotations

from typing import Any

from labotel import fork_safe
from labotel.compat import cpython
from labotel.hooks import active, patches, primitives, signals
from labotel.hooks.adopt import LockAdopter
from labotel.patching import Patcher, say_left_in_place
from labotel.runtime import loop_classes

_lock = fork_safe.lock()  # raw: never one of the instrumented locks
_subscribers: dict[str, tuple[Any, Any, bool]] = {}  # name -> (edges, waits, adopt)
_patcher = Patcher()
_installed: set[str] = set()
_adopter = LockAdopter()
_adopted: int | None = None  # module globals adopted, once the first adopting subscriber came


def subscribe(name: str, *, edges: Any = None, waits: Any = None, adopt: bool = False) -> int:
    """Start delivering hook events to ``edges`` and/or ``waits`` (hooks are live once this
    returns); with ``adopt``, wrap the application's module-level locks made before.

    Returns how many module globals are adopted. A second subscriber of a kind already
    listening is a ``ValueError``.
    """
    global _adopted
    with _lock:
        for other, (other_edges, other_waits, _) in _subscribers.items():
            if other != name and ((edges and other_edges) or (waits and other_waits)):
                raise ValueError(f"{name}: {other} already receives these hook events")
        kinds = {kind for kind, wanted in ((patches.EDGES, edges), (patches.WAITS, waits))
                 if wanted is not None}
        try:
            classes = loop_classes.watch(_loop_class_imported)
            patches.install(kinds, _installed, _patcher.replace, _patcher.holds, classes)
            if "signals" not in _installed:
                signals.install(_patcher.replace)
                _installed.add("signals")
            _subscribers[name] = (edges, waits, adopt)
            _publish()
            if adopt and _adopted is None:
                _adopted = _adopter.adopt()
        except BaseException:
            _subscribers.pop(name, None)
            _publish()
            if not _subscribers:
                _undo()  # (the failure is what the caller hears of)
            raise
        return _adopted or 0


def unsubscribe(name: str) -> None:
    """Stop delivering to ``name``; the last one out undoes adoption and every patch."""
    left: list[str] = []
    with _lock:
        if _subscribers.pop(name, None) is None:
            return
        _publish()
        if not _subscribers:
            left = _undo()
    say_left_in_place(left)


def _loop_class_imported(loop_class: loop_classes.LoopClass) -> None:
    """uvloop imported while hooks are in (on the importing thread)."""
    with _lock:
        if _subscribers:
            patches.install_loop_class(loop_class, _installed, _patcher.replace,
                                       _patcher.holds)


def adopted_locks() -> int:
    return _adopted or 0


def _publish() -> None:
    edges = next((e for e, _, _ in _subscribers.values() if e is not None), None)
    waits = next((w for _, w, _ in _subscribers.values() if w is not None), None)
    active.edges = primitives._edges = edges
    active.waits = primitives._waits = waits


def _undo() -> list[str]:
    """(under ``_lock``) Undo adoption and every patch; returns what was left in place."""
    global _adopted
    loop_classes.unwatch(_loop_class_imported)
    _adopter.undo()
    _adopted = None
    left = _patcher.undo()
    signals.uninstall()
    _installed.clear()
    return left


def after_fork_in_child() -> None:
    """(Run by the monitor's fork hook, after threading's own.) Waiter marks of the
    parent's threads go stale; raw locks may be held by them."""
    active.generation += 1
    # threading's own after-fork hook rebuilt _active_limbo_lock with threading.RLock, which
    # is ours while patched: put the plain lock back under it.
    limbo = cpython.active_limbo_lock()
    if primitives.instrumented(limbo):
        cpython.set_active_limbo_lock(primitives.raw_lock(limbo))

