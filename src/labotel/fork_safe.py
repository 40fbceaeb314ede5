"""labotel's locks, unlocked again in a forked child.

Only the thread that called ``fork()`` lives on in the child. A lock another thread held
at that moment (an application thread counting a race in a storm, the debug server's
thread looking at the descriptor canary, the relay counting a record's bytes) stays held
in the child for ever, and the first thread there to take it stops for good: forked
during a race storm, 4 of 40 children hung at their first race report. So every lock
labotel shares between threads and uses again in a child is made here, raw (never one of
the instrumented locks), and unlocked in place at the start of labotel's after-fork hook,
as CPython's logging and threading do with theirs. What the lock guarded may be half
updated in the child (a counter, a buffer's size): labotel's figures can be off by one
record there, which is better than a stopped worker.

That unlocking is registered when labotel is imported, not at ``start()``: a child runs
its after-fork hooks in the order they were registered, and a hook the application
registered in between (at the import of a module imported after labotel, before
``start()``) that took an instrumented lock or recorded an access reached one of these
locks still held from the parent.
"""

from __future__ import annotations

import _thread
import os
import weakref
from typing import Any

from labotel.compat import cpython

_locks: weakref.WeakSet[Any] = weakref.WeakSet()
_RLOCK = type(_thread.RLock())


def lock() -> _thread.LockType:
    """A raw lock that a forked child gets back unlocked."""
    made = _thread.allocate_lock()
    _locks.add(made)
    return made


def rlock() -> _thread.RLock:
    """A raw re-entrant lock that a forked child gets back unlocked."""
    made = _thread.RLock()
    _locks.add(made)
    return made


def reinit_in_child() -> None:
    """(In the child, before anything of labotel's runs there.) Unlock every lock made by
    ``lock()`` and ``rlock()``, but a re-entrant one the forking thread itself holds (a
    signal handler forking inside ``start()``): that thread, which lives on, lets it go."""
    for made in list(_locks):
        if isinstance(made, _RLOCK) and cpython.lock_is_owned(made)():
            continue
        cpython.at_fork_reinit(made)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=reinit_in_child)
