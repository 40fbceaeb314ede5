"""What differs between the CPython versions labotel supports: 3.11, 3.12 and 3.13.

Each difference is one named capability, read once from the interpreter itself (what it
has, not which version number it reports), so the rest of labotel asks here instead of
comparing ``sys.version_info`` or probing with ``getattr(..., None)``.
``tests/unit/test_compat_python.py`` pins every answer on every supported version.

Differences that need no capability:

- ``code.co_qualname`` (3.11+) is on every supported version; the race report names
  functions with it, which is one reason 3.10 is not supported.
- ``sys.monitoring`` (3.12+) is not used: labotel installs no trace or profile hook it could
  make cheaper (races are recorded by explicit calls and lock patches, CPU profiles by
  sampling ``sys._current_frames()`` from a thread, GC pauses by ``gc.callbacks``).
"""

from __future__ import annotations

import _thread
import asyncio
import sys
import sysconfig
import threading
from collections.abc import Collection

SUPPORTED: tuple[tuple[int, int], ...] = ((3, 11), (3, 12), (3, 13))
"""The versions pyproject.toml's classifiers name and ``.ci/run`` tests, oldest first."""

PLAIN_LOCK_TYPE: type = type(_thread.allocate_lock())
PLAIN_RLOCK_TYPE: type = type(_thread.RLock())

LOCK_IS_A_TYPE: bool = isinstance(threading.Lock, type)
"""3.13+: ``threading.Lock`` is the lock type itself, so applications may
``isinstance(x, threading.Lock)``; before, it was a factory function."""


def free_threaded_build() -> bool:
    """A build that can run without the GIL (``python3.13t``), whether or not it is on now."""
    return bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


def gil_enabled() -> bool:
    """Whether the GIL serialises Python code in this process right now.

    On a free-threaded build the GIL is off unless ``PYTHON_GIL=1`` or an imported
    extension without free-threading support turned it back on; it is never turned off
    again once on, so an answer of True holds for the rest of the process.
    """
    probe = getattr(sys, "_is_gil_enabled", None)  # 3.13+; every earlier build has a GIL
    return True if probe is None else bool(probe())


def _task_registries() -> tuple[Collection[asyncio.Task], ...] | None:
    tasks = asyncio.tasks
    if hasattr(tasks, "_scheduled_tasks") and hasattr(tasks, "_eager_tasks"):
        # 3.12+: eager tasks still in their first step (asyncio.eager_task_factory), then
        # tasks that suspended at least once; eager first, as all_tasks() copies them, so
        # one that moves from the first to the second meanwhile is not missed
        return tasks._eager_tasks, tasks._scheduled_tasks  # type: ignore[attr-defined]  # 3.12+
    if hasattr(tasks, "_all_tasks"):  # 3.11: one weak set of every task
        return (tasks._all_tasks,)
    return None


TASK_REGISTRIES: tuple[Collection[asyncio.Task], ...] | None = _task_registries()
"""asyncio's module-level sets that together hold every task of every loop, in the order to
copy them (from any thread); None where they are not found (then ask
``asyncio.all_tasks(loop)`` per loop)."""


def copy_registry(registry: Collection[asyncio.Task]) -> list[asyncio.Task]:
    """The tasks in one of ``TASK_REGISTRIES``, from any thread."""
    for _ in range(100):  # a weak set may change size while other threads run
        try:
            return list(registry)
        except RuntimeError:
            continue
    return []
