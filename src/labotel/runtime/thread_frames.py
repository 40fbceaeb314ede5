"""Every thread's current frame, without CPython 3.11's deadlock.

``cpython.current_frames()`` holds the interpreter's thread-list lock while it creates frame
objects. On CPython 3.11 such an allocation can start a garbage collection, and if the
garbage holds a ``threading.local`` (an object with one, in a reference cycle), freeing it
takes that same lock: the calling thread deadlocks, and with it every thread that then
waits for the GIL (reproduced: ``tests/chaos/test_thread_frames.py``; 3.10, 3.12 and
3.13 are not affected). So on 3.11 the collector's first threshold is raised for the
duration of the call, in one C-level sequence (no Python bytecode runs in between, so no
other thread can run and see the changed threshold or change it).
"""

from __future__ import annotations

import functools
import gc
import operator
import sys
from types import FrameType

from labotel.compat import cpython

_CALL = operator.methodcaller("__call__")
_AFFECTED = sys.version_info[:2] == (3, 11)


def current_frames() -> dict[int, FrameType]:
    """``sys._current_frames()``: thread ident -> innermost frame."""
    read = cpython.current_frames_function()
    if not _AFFECTED:
        return read()
    old = gc.get_threshold()
    steps = (functools.partial(gc.set_threshold, 1 << 30, *old[1:]), read,
             functools.partial(gc.set_threshold, *old))
    return list(map(_CALL, steps))[1]
