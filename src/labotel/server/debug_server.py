"""The debug HTTP server on ``admin_address``, and the check that guards its exposure."""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from collections.abc import Callable

from labotel.config import parse_address
from labotel.server.connections import ConnectionLoop
from labotel.server.http import Router
from labotel.server.limits import ServerLimits

log = logging.getLogger(__name__)
# Connections the kernel completes before they are accepted (it caps this at
# net.core.somaxconn). socketserver's 5 made a burst of 60 connects wait 8 s in SYN
# retries; 128 still overflowed under a burst of idle connects faster than accept.
LISTEN_BACKLOG = 1024


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(address: str, token: str | None, allow_insecure: bool) -> None:
    """Refuse a non-loopback bind without a token unless explicitly allowed."""
    host, _ = parse_address(address)
    if is_loopback(host):
        return
    if token:
        log.warning("labotel: debug server on %s (not loopback); bearer token required", address)
    elif allow_insecure:
        log.warning("labotel: debug server on %s is reachable off this host WITHOUT a token "
                    "(admin_allow_insecure is set): anyone who can reach it can read "
                    "profiles and thread stacks", address)
    else:
        raise ValueError(
            f"admin_address: {address!r} is not a loopback address; set admin_token "
            "(LABOTEL_ADMIN_TOKEN) or admin_allow_insecure=True (LABOTEL_ADMIN_ALLOW_INSECURE=1)")


class DebugServer:
    """The debug HTTP server on ``address``: a selector thread and a bounded worker pool.

    Binding happens here (an address in use raises ``OSError`` at once); ``start()``
    begins serving on a daemon thread named ``thread_name``.
    """

    def __init__(self, address: str, router: Router, thread_name: str = "labotel-debug-server",
                 limits: ServerLimits | None = None,
                 on_error: Callable[[], None] | None = None):
        host, port = parse_address(address)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.limits = limits or ServerLimits.from_settings()
        self._listener = socket.create_server((host, port), family=family,
                                              backlog=LISTEN_BACKLOG)
        self._address = self._listener.getsockname()[:2]  # kept: an orphan's is detached
        self._loop = ConnectionLoop(self._listener, router, self.limits, thread_name,
                                    on_error or _count_server_error(router))
        self._thread = threading.Thread(target=self._loop.run, name=thread_name, daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._address
        return host, port

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    @property
    def open_connections(self) -> int:
        return self._loop.open_connections

    @property
    def worker_threads(self) -> int:
        return self._loop.worker_threads

    @property
    def requests_in_progress(self) -> int:
        return self._loop.requests_in_progress

    def connection_states(self) -> dict[str, int]:
        return dict(self._loop.connection_states())

    def start(self) -> None:
        self._thread.start()

    def abandon(self) -> None:
        """In a forked child: close the child's copies of the parent's sockets.

        The serving threads stayed in the parent; the child must not hold the port open.
        """
        self._loop.abandon()

    def orphan(self) -> None:
        """The application closed labotel's descriptors: serve no more, close none of
        those that are the application's now."""
        self._loop.orphan()

    def when_released(self, then: Callable[[], None]) -> bool:
        """(Orphaned.) Call ``then`` once the listener is let go of, on the server's thread;
        False if it already is."""
        return self._loop.when_released(then)

    def stop(self) -> None:
        self._loop.stop()
        if self._loop.orphaned:  # its thread ends at its next look; nothing to close
            return
        if self._thread.ident is not None:
            self._thread.join(timeout=5)
        else:
            self._loop.abandon()  # never started: just release the sockets


def _count_server_error(router: Router) -> Callable[[], None]:
    def count() -> None:
        router.report_error("server")
    return count
