"""Does a plaintext OTLP/gRPC collector answer at all? Asked without gRPC.

While the collector is down, each export attempt of labotel's own OTLP/gRPC exporters used
to open a gRPC channel, which starts gRPC's thread pool; to a collector that accepts
connections and never answers, that pool ran for the exporter's whole timeout (10 s). A
``fork()`` of the application meeting it ran gRPC's fork handler, which waits for every
pool thread to stop, and an idle pool thread can sleep through the wake-up for as long as
its back-off (up to 3 s): forks of 0.5-0.7 s with the whole process stopped.

So before such an attempt labotel asks the collector over a plain socket: it sends
HTTP/2's client preface and waits, as long as the attempt itself would have had, for the
server's first frame, which HTTP/2 requires to be SETTINGS and which a gRPC server sends
whether or not its application is slow (waiting on a socket costs the application
nothing at fork: no gRPC thread runs). No answer (refused, reset, silent): the attempt
fails, and no gRPC thread ran. An answer: the attempt goes ahead over gRPC as before.
Endpoints this cannot ask (TLS, a Unix socket, a gRPC target name) are not asked.
"""

from __future__ import annotations

import errno
import select
import socket
import time
from collections.abc import Callable

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # length 0, type 4, no flags
_FRAME_HEADER = 9
_SETTINGS = 4
_SLICE = 0.05  # seconds between looks at an abort while waiting


def host_and_port(endpoint: str) -> tuple[str, int] | None:
    """``host:port`` or ``[v6]:port`` as a socket address; None for anything else."""
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit() or "/" in endpoint:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        return None  # an IPv6 address without brackets is ambiguous
    return host, int(port)


_asking: set[Check] = set()  # the checks with a socket open now


def close_inherited() -> None:
    """In a forked child: close the copies of the sockets of checks the parent was running
    (its thread is not in the child, and the copy would hold the connection open)."""
    for check in list(_asking):
        check.close_copy()
    _asking.clear()


class Check:
    """One question to one collector; ``abort()`` from another thread ends it now."""

    def __init__(self, address: tuple[str, int], wait: float) -> None:
        self.address = address
        self.wait = wait
        self._socket: socket.socket | None = None
        self._aborted = False

    def answers(self) -> bool:
        """Whether the server sent an HTTP/2 SETTINGS frame within ``wait`` seconds (the
        TCP connection included). It waits in slices of ``_SLICE``, so ``abort()`` ends it
        even while the connection is being made (a host that drops SYNs)."""
        deadline = time.monotonic() + self.wait
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                *self.address, type=socket.SOCK_STREAM)[0]
            with socket.socket(family, kind, proto) as sock:
                self._socket = sock
                _asking.add(self)
                sock.setblocking(False)
                error = sock.connect_ex(address)
                if error not in (0, errno.EINPROGRESS) or not self._until(
                        deadline, lambda: select.select([], [sock], [], _SLICE)[1]):
                    return False
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    return False  # refused, unreachable
                sock.sendall(_PREFACE + _EMPTY_SETTINGS)  # 33 bytes: fits any send buffer
                header = b""
                while len(header) < _FRAME_HEADER:
                    if not self._until(deadline,
                                       lambda: select.select([sock], [], [], _SLICE)[0]):
                        return False
                    chunk = sock.recv(_FRAME_HEADER - len(header))
                    if not chunk:
                        return False
                    header += chunk
                return header[3] == _SETTINGS
        except (OSError, ValueError):
            return False
        finally:
            _asking.discard(self)
            self._socket = None

    def _until(self, deadline: float, ready: Callable[[], object]) -> bool:
        """Wait for ``ready()`` (one slice each call) until ``deadline`` or an abort."""
        while not self._aborted and time.monotonic() < deadline:
            if ready():
                return True
        return False

    def close_copy(self) -> None:
        sock = self._socket
        if sock is not None:
            sock.close()  # this process's copy only; shutdown() would end the parent's too

    def abort(self) -> None:
        self._aborted = True
        sock = self._socket
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # a blocked recv() returns at once
            except OSError:
                pass
