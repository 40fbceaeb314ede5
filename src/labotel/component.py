"""The life cycle every labotel part follows, and the guard that keeps failures contained."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from labotel.monitor import Monitor

F = TypeVar("F", bound=Callable[..., Any])


class Unavailable(Exception):
    """Raised by ``Component.start`` when this interpreter cannot run the component safely;
    the monitor logs the reason once, shows it in ``/admin/monitoring/`` and runs the rest."""


class Component:
    """A part of labotel that starts with the monitor and undoes itself on stop.

    ``start`` may register instruments, routes (``monitor.router``), patches and
    threads; ``stop`` must undo all of it. ``after_fork_in_child`` restarts whatever
    background threads the component owns (threads do not survive ``fork``).
    """

    name = "component"

    def start(self, monitor: Monitor) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        """Undo everything ``start`` did."""

    def after_fork_in_child(self) -> None:
        """Restart background threads in a forked child."""


def guarded_callback(monitor: Monitor, component: str,
                     callback: Callable[[Any], Iterable]) -> Callable[[Any], list]:
    """An observable-instrument callback that never raises: failures are counted, logged once."""

    @functools.wraps(callback)
    def run(options: Any) -> list:
        try:
            return list(callback(options))
        except Exception:
            monitor.reporter.component_failed(component)
            return []

    return run
