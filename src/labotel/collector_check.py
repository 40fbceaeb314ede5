"""Does an OTLP/gRPC collector answer at all? Asked without gRPC.

While the collector is down, each export attempt of labotel's own OTLP/gRPC exporters used
to open a gRPC channel, which starts gRPC's thread pool; to a collector that accepts
connections and never answers, that pool ran for the exporter's whole timeout (10 s). A
``fork()`` of the application meeting it ran gRPC's fork handler, which waits for every
pool thread to stop, and an idle pool thread can sleep through the wake-up for as long as
its back-off (up to 3 s): forks of 0.5-0.7 s with the whole process stopped.

So before such an attempt, and before the first export, labotel asks the collector over
a plain socket, and waits as long as the attempt itself would have had (waiting on a
socket costs the application nothing at fork: no gRPC thread runs):

- a plaintext collector gets HTTP/2's client preface; its first frame back must be
  SETTINGS, which HTTP/2 requires and a gRPC server sends whether or not its application
  is slow;
- a TLS collector gets a TLS ClientHello (offering ``h2``); its first byte back must begin
  a TLS handshake or alert record. That says its TLS stack answers, nothing more: the
  certificate is not checked (the attempt itself does that, with the exporter's
  credentials), and a collector that wants a client certificate still answers the hello.

No answer (refused, reset, silent, or not the protocol asked): the attempt fails, and no
gRPC thread ran. An answer: the attempt goes ahead over gRPC as before, and the question's
connection is ended cleanly (this side closed first, the rest of the answer read until the
server closes), not reset: a collector may log every reset. A Unix socket is asked the
same way (``unix:`` and ``unix-abstract:`` targets), and so are gRPC's URI forms of one
host and port (``dns:///host:port``, ``ipv4:``, ``ipv6:``). Endpoints this cannot ask (no
port, a list of addresses, another resolver's scheme, a server name a TLS hello cannot
carry) are not asked.
"""

from __future__ import annotations

import errno
import selectors
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # length 0, type 4, no flags
_FRAME_HEADER = 9
_SETTINGS = 4
_TLS_ANSWERS = (21, 22)  # the content type of an alert record, of a handshake record
_SLICE = 0.05  # seconds between looks at an abort while waiting
_PARTING = 0.5  # seconds an answered server gets to close its side after ours

Address = tuple[str, int] | str  # a host and port, or a Unix socket's path


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


def socket_address(target: str) -> Address | None:
    """Where a gRPC target connects: ``host:port``; gRPC's URI forms for one address
    (``dns:[//authority/]host:port``, ``ipv4:addr:port``, ``ipv6:[addr]:port``); a Unix
    socket (``unix:path``, ``unix:///abs/path``, ``unix-abstract:name``, the path
    returned as text, an abstract name with its leading NUL). None for what cannot be
    asked: no port (gRPC's default is not guessed), several addresses, other schemes."""
    scheme, sep, rest = target.partition(":")
    if not sep or scheme not in ("dns", "ipv4", "ipv6", "unix", "unix-abstract"):
        return host_and_port(target)
    if scheme == "unix":
        path = rest[2:] if rest.startswith("//") else rest  # unix:///abs -> /abs
        return path if path and "\0" not in path else None
    if scheme == "unix-abstract":
        return "\0" + rest if rest else None
    if scheme == "dns" and rest.startswith("//"):
        rest = rest[2:].partition("/")[2]  # a DNS server named as authority: not used
    if "," in rest:
        return None  # ipv4:a:1,b:2 lists several addresses: which one is used is gRPC's
    return host_and_port(rest)


_asking: set[Check] = set()  # the checks with a socket open now

# poll(2), not select(2): select() cannot watch a descriptor numbered 1024 or more, and a
# busy server has that many open; a question then failed at once, taking a collector that
# answers for a refusing one. poll keeps no descriptor of its own for a fork to inherit.
_Selector = getattr(selectors, "PollSelector", selectors.DefaultSelector)


def close_inherited() -> None:
    """In a forked child: close the copies of the sockets of checks the parent was running
    (its thread is not in the child, and the copy would hold the connection open)."""
    for check in list(_asking):
        check.close_copy()
    _asking.clear()


def client_hello(server_name: str) -> bytes:
    """The bytes a TLS client offering HTTP/2 sends first, for ``server_name`` (SNI)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # nothing is verified: only whether the server answers
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    outgoing = ssl.MemoryBIO()
    tls = context.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname=server_name)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:  # the hello is out; the server's answer is not in
        pass
    return outgoing.read()


class Check:
    """One question to one collector; ``abort()`` from another thread ends it now."""

    def __init__(self, address: Address, wait: float, tls: bool = False) -> None:
        self.address = address
        self.wait = wait
        self.tls = tls
        self._socket: socket.socket | None = None
        self._aborted = False
        # No answer because the wait ran out (a silent or slow server), not because the
        # connection was refused or reset, nor aborted
        self.ran_out = False

    def answers(self) -> bool:
        """Whether the server answered within ``wait`` seconds (the TCP connection
        included): an HTTP/2 SETTINGS frame, or for ``tls`` a TLS handshake or alert
        record. It waits in slices of ``_SLICE``, so ``abort()`` ends it even while the
        connection is being made (a host that drops SYNs). True, unasked, for a server name
        a TLS hello cannot carry."""
        hello = _PREFACE + _EMPTY_SETTINGS  # 33 bytes: fits any send buffer
        unix = isinstance(self.address, str)
        if self.tls:
            # over a Unix socket gRPC names the server "localhost", as labotel does here
            server_name = "localhost" if unix else self.address[0]
            try:
                hello = client_hello(server_name)  # ~0.5 KB: fits one too
            except (OSError, ValueError, TypeError):  # a name ssl will not send: not asked
                return True
        deadline = time.monotonic() + self.wait
        try:
            address: Any = self.address  # a path (Unix), or what getaddrinfo returns
            family, kind, proto = socket.AF_UNIX, socket.SOCK_STREAM, 0
            if not isinstance(self.address, str):
                host, port = self.address
                family, kind, proto, _, address = socket.getaddrinfo(
                    host, port, type=socket.SOCK_STREAM)[0]
            with socket.socket(family, kind, proto) as sock, _Selector() as selector:
                self._socket = sock
                _asking.add(self)
                sock.setblocking(False)
                selector.register(sock, selectors.EVENT_WRITE)
                error = sock.connect_ex(address)
                if unix and error == errno.EAGAIN:  # a Unix listener's backlog is full
                    return False
                if error not in (0, errno.EINPROGRESS) or not self._until(
                        deadline, lambda: selector.select(_SLICE)):
                    return False
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    return False  # refused, unreachable
                sock.sendall(hello)
                selector.modify(sock, selectors.EVENT_READ)
                if self.tls:
                    first = self._receive(sock, selector, 1, deadline)
                    answered = len(first) == 1 and first[0] in _TLS_ANSWERS
                else:
                    header = self._receive(sock, selector, _FRAME_HEADER, deadline)
                    answered = len(header) == _FRAME_HEADER and header[3] == _SETTINGS
                if answered:
                    self._part(sock, selector)
                return answered
        except (OSError, ValueError):
            return False
        finally:
            _asking.discard(self)
            self._socket = None

    def _receive(self, sock: socket.socket, selector: selectors.BaseSelector, size: int,
                 deadline: float) -> bytes:
        """Up to ``size`` bytes, fewer if the server closes, the deadline passes or the
        check is aborted first."""
        received = b""
        while len(received) < size:
            if not self._until(deadline, lambda: selector.select(_SLICE)):
                break
            chunk = sock.recv(size - len(received))
            if not chunk:
                break
            received += chunk
        return received

    def _part(self, sock: socket.socket, selector: selectors.BaseSelector) -> None:
        """End the connection the way a client that is done does: close this side, then
        read what the server still sends until it closes its own (``_PARTING`` at most).
        Closing with the server's answer unread resets the connection, which a server
        may log as an error for every question (grpc-go: "connection reset by peer", at
        warning); a clean end of stream it closes without a word, in the middle of a TLS
        handshake too."""
        try:
            sock.shutdown(socket.SHUT_WR)
            end = time.monotonic() + _PARTING
            while not self._aborted and time.monotonic() < end:
                if selector.select(_SLICE) and not sock.recv(65536):
                    return
        except OSError:
            pass

    def _until(self, deadline: float, ready: Callable[[], object]) -> bool:
        """Wait for ``ready()`` (one slice each call) until ``deadline`` or an abort."""
        while not self._aborted and time.monotonic() < deadline:
            if ready():
                return True
        self.ran_out = not self._aborted
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
