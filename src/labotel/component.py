"""The life cycle every labotel part follows."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from labotel.context import Context


class Unavailable(Exception):
    """Raised by ``Component.start`` when this interpreter cannot run the component safely;
    the monitor logs the reason once, shows it in ``/admin/monitoring/`` and runs the rest."""


class Component:
    """A part of labotel that starts with the monitor and undoes itself on stop.

    ``start`` gets a ``Context`` and may register instruments, routes and views through
    it, install patches and start threads; ``stop`` must undo all of it.
    ``after_fork_in_child`` restarts whatever background threads the component owns
    (threads do not survive ``fork``).
    """

    name = "component"

    def start(self, context: Context) -> None:
        raise NotImplementedError

    def end_requests(self) -> None:
        """labotel is about to stop, its debug server first: end whatever keeps one of
        the component's requests waiting (the server waits for running requests)."""

    def stop(self) -> None:
        """Undo everything ``start`` did."""

    def after_fork_in_child(self) -> None:
        """Restart background threads in a forked child."""
