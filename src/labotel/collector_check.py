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
same way; where a target connects is ``collector_target``'s to say. A host name is looked
up on a thread of its own (``getaddrinfo`` cannot be interrupted, and an unreachable name
server holds it for 5 s or more per try), and every address it has is tried at once, the
first to connect asked, as gRPC goes on to the next address when one fails: asking only
the first took a collector on ``localhost`` listening on IPv4 only for a down one where
``::1`` comes first. A server name a TLS hello cannot carry is not asked.
"""

from __future__ import annotations

import errno
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

from labotel import fork_safe
from labotel.collector_target import Address

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # length 0, type 4, no flags
_FRAME_HEADER = 9
_SETTINGS = 4
_TLS_ANSWERS = (21, 22)  # the content type of an alert record, of a handshake record
_SLICE = 0.05  # seconds between looks at an abort while waiting
_PARTING = 0.5  # seconds an answered server gets to close its side after ours
_MAX_ADDRESSES = 8  # of a name's addresses, the first this many are tried

_asking: set[Check] = set()  # the checks with a socket open now

# poll(2), not select(2): select() cannot watch a descriptor numbered 1024 or more, and a
# busy server has that many open; a question then failed at once, taking a collector that
# answers for a refusing one. poll keeps no descriptor of its own for a fork to inherit.
_Selector = getattr(selectors, "PollSelector", selectors.DefaultSelector)


def close_inherited() -> None:
    """In a forked child: close the copies of the sockets of checks the parent was running
    (its thread is not in the child, and the copy would hold the connection open), and
    forget the parent's lookups (their threads are not in the child either)."""
    for check in list(_asking):
        check.close_copy()
    _asking.clear()
    _lookups.clear()


class _Lookup:
    """One ``getaddrinfo`` on a thread of its own; ``done`` is set when it has ended."""

    def __init__(self, host: str, port: int) -> None:
        self.key = (host, port)
        self.done = threading.Event()
        self.addresses: list[tuple[Any, ...]] = []

    def run(self) -> None:
        try:
            self.addresses = socket.getaddrinfo(*self.key, type=socket.SOCK_STREAM)
        except Exception:  # unknown name, a name idna refuses: no address
            pass
        finally:
            with _lookups_lock:
                if _lookups.get(self.key) is self:
                    del _lookups[self.key]
            self.done.set()


# Lookups running now, by host and port: a question asked while the last one's lookup
# still waits for a name server waits for that one, so a hung resolver holds one thread
_lookups: dict[tuple[str, int], _Lookup] = {}
_lookups_lock = fork_safe.lock()


def _numeric(host: str, port: int) -> list[tuple[Any, ...]] | None:
    """The address of a host given as an IP address (no lookup); None for a name."""
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                  flags=socket.AI_NUMERICHOST)
    except (OSError, UnicodeError):
        return None


def _lookup(host: str, port: int) -> _Lookup:
    """The lookup of ``host`` running now, or a new one."""
    with _lookups_lock:
        lookup = _lookups.get((host, port))
        if lookup is not None:
            return lookup
        lookup = _lookups[(host, port)] = _Lookup(host, port)
    try:
        threading.Thread(target=lookup.run, name="labotel-collector-lookup",
                         daemon=True).start()
    except RuntimeError:  # no thread to be had: no address, this time
        with _lookups_lock:
            _lookups.pop((host, port), None)
        lookup.done.set()
    return lookup


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
        self._sockets: list[socket.socket] = []  # open now (every address being tried)
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
            if isinstance(self.address, str):
                candidates: list[tuple[Any, ...]] = [
                    (socket.AF_UNIX, socket.SOCK_STREAM, 0, "", self.address)]
            else:
                candidates = self._addresses(*self.address, deadline)
            with _Selector() as selector:
                _asking.add(self)
                sock = self._connect_first(candidates, selector, deadline)
                if sock is None:
                    return False
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
        except Exception:  # whatever the address or the network does: no answer
            return False
        finally:
            _asking.discard(self)
            sockets, self._sockets = self._sockets, []
            for sock in sockets:
                sock.close()

    def _addresses(self, host: str, port: int, deadline: float) -> list[tuple[Any, ...]]:
        """The host's addresses (``getaddrinfo``), looked up on another thread while this
        one waits in slices, so the deadline and ``abort()`` hold during the lookup too."""
        numeric = _numeric(host, port)
        if numeric is not None:
            return numeric
        lookup = _lookup(host, port)
        if not self._until(deadline, lambda: lookup.done.wait(_SLICE)):
            return []
        return lookup.addresses

    def _connect_first(self, candidates: list[tuple[Any, ...]],
                       selector: selectors.BaseSelector,
                       deadline: float) -> socket.socket | None:
        """Connect to every candidate at once; the first connected socket (the others
        closed), or None when all were refused, or the deadline or an abort came first."""
        for family, kind, proto, _, address in candidates[:_MAX_ADDRESSES]:
            try:
                sock = socket.socket(family, kind, proto)
            except OSError:  # a family this host has not (IPv6 off): the next address
                continue
            self._sockets.append(sock)
            sock.setblocking(False)
            error = sock.connect_ex(address)
            if error in (0, errno.EINPROGRESS):  # (EAGAIN: a Unix listener's backlog
                selector.register(sock, selectors.EVENT_WRITE)  # is full, as refused)
        ready: list[Any] = []

        def some_ready() -> bool:
            ready[:] = selector.select(_SLICE)
            return bool(ready)

        while selector.get_map():
            if not self._until(deadline, some_ready):
                return None
            for key, _ in ready:
                sock = key.fileobj  # type: ignore[assignment]
                selector.unregister(sock)
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    for other in list(selector.get_map().values()):
                        selector.unregister(other.fileobj)
                    selector.register(sock, selectors.EVENT_WRITE)
                    return sock  # type: ignore[return-value]
        return None  # refused, unreachable

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
        for sock in list(self._sockets):
            sock.close()  # this process's copy only; shutdown() would end the parent's too

    def abort(self) -> None:
        self._aborted = True
        for sock in list(self._sockets):
            try:
                sock.shutdown(socket.SHUT_RDWR)  # a blocked recv() returns at once
            except OSError:
                pass
