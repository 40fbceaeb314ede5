"""Readiness of the debug server's sockets: epoll on Linux, poll elsewhere.

Each socket is watched in one of two ways:

- ``READ``: tell when it can be read (a request arriving, or the client closing);
- ``HANGUP``: while a worker thread owns the connection, tell only when the client goes
  away, once (epoll's EPOLLRDHUP with EPOLLONESHOT). More input (a pipelined request)
  does not wake the selector thread, and a reset connection cannot make it spin.

Where the OS has no EPOLLRDHUP (poll on macOS), ``HANGUP`` stops watching instead:
a client leaving mid-request is then noticed only when its answer is written.
``modify`` may be called from a worker thread while another thread polls.
"""

from __future__ import annotations

import select

READ, HANGUP = "read", "hangup"


class Poller:
    """epoll (Linux): changes made from any thread take effect in a running ``poll``."""

    watches_hangup = True
    sees_changes_while_polling = True

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._masks = {READ: select.EPOLLIN,
                       HANGUP: select.EPOLLRDHUP | select.EPOLLONESHOT}

    def register(self, fd: int, how: str) -> None:
        self._epoll.register(fd, self._masks[how])

    def modify(self, fd: int, how: str) -> None:
        self._epoll.modify(fd, self._masks[how])

    def unregister(self, fd: int) -> None:
        try:
            self._epoll.unregister(fd)
        except (OSError, ValueError):  # closed already
            pass

    def poll(self, timeout: float | None) -> list[tuple[int, int]]:
        return self._epoll.poll(-1 if timeout is None else timeout)

    def close(self) -> None:
        self._epoll.close()


class PortablePoller:
    """poll(2): no hang-up watch; a change is seen at the next ``poll`` (wake it)."""

    watches_hangup = False
    sees_changes_while_polling = False

    def __init__(self) -> None:
        self._poll = select.poll()

    def register(self, fd: int, how: str) -> None:
        if how == READ:
            self._poll.register(fd, select.POLLIN)

    def modify(self, fd: int, how: str) -> None:
        if how == READ:
            self._poll.register(fd, select.POLLIN)  # registers or modifies
        else:
            self.unregister(fd)

    def unregister(self, fd: int) -> None:
        try:
            self._poll.unregister(fd)
        except (KeyError, ValueError):
            pass

    def poll(self, timeout: float | None) -> list[tuple[int, int]]:
        return self._poll.poll(None if timeout is None else timeout * 1000)

    def close(self) -> None:
        pass


def new_poller() -> Poller | PortablePoller:
    if hasattr(select, "epoll") and hasattr(select, "EPOLLRDHUP"):
        return Poller()
    return PortablePoller()
