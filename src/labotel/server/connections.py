"""The debug server's connections: one selector thread reads, a bounded pool answers.

No thread waits on a slow client. The selector thread accepts, reads without blocking
into each connection's buffer and enforces the timeouts; only a request that has fully
arrived (head and body) goes to a worker thread, which runs the router and writes the
answer. A slow or idle client therefore costs a file descriptor and a small buffer,
never a thread. Every limit comes from ``ServerLimits``:

- a connection that sends nothing for ``idle_timeout`` is closed; one that started a
  request has ``header_timeout`` for its head and ``body_timeout`` for its body (408);
- at ``max_connections`` a new connection replaces an idle one (the oldest that never
  sent a request first: a scraper's keep-alive connection is the last to go), or gets 503;
- at ``max_concurrent_requests`` running handlers a new request gets 503;
- a response must be written within ``write_timeout`` of its request being read (plus
  the request's ``?seconds=``, as Go's pprof extends its write deadline), but is always
  given ``MIN_SEND_SECONDS`` once ready.

A connection belongs to the selector thread or, from a complete request until its
answer is written, to one worker (state ``BUSY``); ``_lock`` guards the hand-over.
While a worker has it, the selector still watches for the client hanging up: the
request's ``cancelled`` event is then set, so a profile waiting out ``?seconds=`` ends
at once, as Go's handlers do when the request context ends.

After answering on a keep-alive connection, a worker waits ``LINGER_FOR_NEXT`` for the
next request and serves it directly if it arrives whole (a client that scrapes or
fetches back to back pays no thread hand-over), as long as half the pool is free.

A connection refused or answered with an error is closed gracefully: the answer, a
half-close, then whatever the client still sends is read and dropped for a while
(bounded), so a client that writes its whole body before reading still gets the answer
instead of a connection reset.
"""

from __future__ import annotations

import collections
import errno
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import cast
from urllib.parse import parse_qs

from labotel import descriptors, fork_safe
from labotel.digits import ascii_digits
from labotel.server import wire
from labotel.server.http import Request, Router
from labotel.server.limits import ServerLimits
from labotel.server.poller import HANGUP, READ, new_poller
from labotel.server.workers import WorkerPool

log = logging.getLogger(__name__)

IDLE, HEAD, BODY, BUSY, CLOSING = "idle", "head", "body", "busy", "closing"
READ_SIZE = 65536
ACCEPTS_PER_WAKE = 64
LINGER_SECONDS = 2.0  # how long a closing connection's remaining input is read and dropped
LINGER_BYTES = 64 << 20  # and how much of it at most
LINGER_FOR_NEXT = 0.005  # a worker's wait for the next request on its keep-alive connection
MAX_SWEEP_INTERVAL = 1.0
# An idle selector thread still looks this often whether the application closed its
# descriptors (then its poll would wait for ever on an epoll nobody can wake)
IDLE_LOOK = 2.0
MIN_SEND_SECONDS = 1.0
RETRY_AFTER = "1"


class Connection:
    __slots__ = ("sock", "fd", "buffer", "state", "since", "deadline", "scanned", "head",
                 "cancelled", "hung_up", "drained", "closed", "served")

    def __init__(self, sock: socket.socket, now: float, idle_timeout: float):
        self.sock = sock
        self.fd = sock.fileno()
        self.buffer = bytearray()
        self.deadline = now + idle_timeout
        self.state = IDLE
        self.since = now  # when it entered its state (eviction picks the oldest idle)
        self.scanned = 0  # bytes of the buffer already searched for the end of the head
        self.head: wire.RequestHead | None = None  # parsed, its body still arriving
        self.cancelled: threading.Event | None = None  # of the request being answered
        self.hung_up = False  # the client closed its side while a worker had the connection
        self.drained = 0
        self.closed = False
        self.served = 0  # requests taken from it


class ConnectionLoop:
    """Serves ``router`` on ``listener`` until ``stop()``; ``run`` is the selector thread."""

    def __init__(self, listener: socket.socket, router: Router, limits: ServerLimits,
                 thread_name: str, on_error: Callable[[], None]):
        self.limits = limits
        self._listener = listener
        self._router = router
        self._on_error = on_error
        self._poller = new_poller()
        self._waker, self._wake_end = socket.socketpair()
        for sock in (listener, self._waker, self._wake_end):
            sock.setblocking(False)
        self._listener_fd = listener.fileno()
        self._waker_fd = self._waker.fileno()
        # what each number named, to close after a loss those the application left us
        self._identities = {sock: descriptors.identity(sock.fileno())
                            for sock in (listener, self._waker, self._wake_end)}
        self._on_released: Callable[[], None] | None = None
        self._released = False
        self._poller.register(self._listener_fd, READ)
        self._poller.register(self._waker_fd, READ)
        self._connections: dict[int, Connection] = {}  # by fd; the selector thread's own
        self._returned: collections.deque[tuple[Connection, bool, bool]] = collections.deque()
        # hand-over of connections between threads; a forked child's abandon() takes it
        self._lock = fork_safe.rlock()
        self._loop_done = False
        self._pool = WorkerPool(limits.max_concurrent_requests, thread_name + "-worker",
                                on_error)
        self._stopping = False
        self._accept_paused_until = 0.0
        self._accept_failed = False  # warned once that the process is out of descriptors
        self._next_sweep = float("inf")
        self._failures = 0
        # the application closed labotel's descriptors: let go of ours without closing them
        self.orphaned = False
        descriptors.on_lost(self, self.orphan)

    # -- figures for tests and the bench ------------------------------------------------
    @property
    def open_connections(self) -> int:
        return len(self._connections)

    @property
    def worker_threads(self) -> int:
        return self._pool.threads

    @property
    def requests_in_progress(self) -> int:
        return self._pool.size - self._pool.spare()

    def connection_states(self) -> collections.Counter[str]:
        """How many connections are idle, reading a head or body, busy or closing."""
        return collections.Counter(c.state for c in list(self._connections.values()))

    # -- the selector thread ------------------------------------------------------------
    def run(self) -> None:
        try:
            while not self._stopping:
                try:
                    self._turn()
                    self._failures = 0
                except Exception:  # a labotel bug: count it, keep serving
                    self._failures += 1
                    log.debug("labotel: debug server loop failed", exc_info=True)
                    self._on_error()
                    time.sleep(min(0.01 * self._failures, 1.0))  # never a hot spin
        finally:
            self._close_all()

    def _turn(self) -> None:
        now = time.monotonic()
        if self._connections or self._accept_paused_until:
            wake_at = min(self._next_sweep, self._accept_paused_until or now + 1,
                          now + MAX_SWEEP_INTERVAL)
            timeout = max(0.0, wake_at - now)
        else:
            timeout = IDLE_LOOK  # nothing to time out: until a client, stop() or a look
        # each descriptor number may name the application's file since the last turn
        if descriptors.check() or self._stopping:
            return
        events = self._poller.poll(timeout)
        if descriptors.check() or self._stopping:
            return
        if any(fd == self._waker_fd for fd, _ in events):
            self._drain_waker()  # before reading _returned: a wake sent later is not lost
        while self._returned:  # before the events: a connection answered meanwhile is idle
            self._guarded(self._take_back, *self._returned.popleft())
        for fd, _ in events:
            if fd == self._listener_fd:
                self._accept()
            elif fd != self._waker_fd:
                connection = self._connections.get(fd)
                if connection is not None and not connection.closed:
                    self._guarded(self._ready, connection)
        now = time.monotonic()
        if now >= self._next_sweep or (self._accept_paused_until
                                       and now >= self._accept_paused_until):
            self._sweep(now)

    def _guarded(self, step: Callable[..., None], connection: Connection, *args: object) -> None:
        try:
            step(connection, *args)
        except Exception:
            log.debug("labotel: debug server connection failed", exc_info=True)
            self._on_error()
            self._close(connection)

    def _set_deadline(self, connection: Connection, state: str, now: float,
                      seconds: float) -> None:
        connection.deadline = now + seconds  # before the state: the sweep reads both
        connection.since = now
        connection.state = state
        if connection.deadline < self._next_sweep:
            self._next_sweep = connection.deadline

    # -- accepting ------------------------------------------------------------------------
    def _accept(self) -> None:
        for _ in range(ACCEPTS_PER_WAKE):
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                if error.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # out of descriptors: stop accepting for a moment instead of spinning
                    (log.debug if self._accept_failed else log.warning)(
                        "labotel: debug server cannot accept (%s); pausing 0.5 s", error)
                    self._accept_failed = True
                    self._poller.unregister(self._listener_fd)
                    self._accept_paused_until = time.monotonic() + 0.5
                return  # ECONNABORTED and friends: the client is gone already
            sock.setblocking(False)
            if len(self._connections) >= self.limits.max_connections and not self._evict_idle():
                _refuse(sock, wire.error_response(
                    503, "too many connections to the labotel debug server; retry later",
                    {"Retry-After": RETRY_AFTER}))
                continue
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass  # already reset
            now = time.monotonic()
            connection = Connection(sock, now, self.limits.idle_timeout)
            self._connections[connection.fd] = connection
            self._poller.register(connection.fd, READ)
            self._set_deadline(connection, IDLE, now, self.limits.idle_timeout)

    def _evict_idle(self) -> bool:
        """Close an idle (or closing) connection to make room; False if none.

        First those that never sent a request (a flood of idle connects), oldest first;
        only then a client's keep-alive connection (a scraper's, between two scrapes).
        """
        chosen = None
        for connection in self._connections.values():
            if connection.state in (IDLE, CLOSING) and (chosen is None or (
                    connection.served > 0, connection.since) < (chosen.served > 0, chosen.since)):
                chosen = connection
        if chosen is None:
            return False
        self._close(chosen)
        return True

    def _drain_waker(self) -> None:
        try:
            self._waker.recv(4096)
        except (BlockingIOError, InterruptedError):
            pass

    def wake(self) -> None:
        if self.orphaned:  # the waker's number may be the application's file now
            return
        try:
            self._wake_end.send(b"\0")
        except OSError:
            pass  # full (the loop is awake anyway) or closed (stopping)

    # -- reading ----------------------------------------------------------------------------
    def _ready(self, connection: Connection) -> None:
        with self._lock:
            if connection.state == BUSY:  # the hang-up watch fired: the client has left
                connection.hung_up = True  # (fires once: a request taken later must know)
                cast(threading.Event, connection.cancelled).set()
                return
        if connection.state == CLOSING:
            self._linger(connection)
            return
        data = _receive(connection)
        if data is None:
            return
        if not data:
            self._close(connection)
            return
        connection.buffer += data
        self._advance(connection, time.monotonic())

    def _advance(self, connection: Connection, now: float) -> None:
        """Dispatch the next request once it is whole; start the head/body deadlines."""
        try:
            taken = self._take_request(connection)
        except wire.ProtocolError as error:
            self._fail(connection, error.status, error.message, error.headers)
            return
        except OSError:  # the interim 100 Continue could not be sent: the client is gone
            self._close(connection)
            return
        if taken is not None:
            self._dispatch(connection, *taken, now)
        elif connection.head is not None:
            if connection.state != BODY:
                self._set_deadline(connection, BODY, now, self.limits.body_timeout)
        elif connection.buffer and connection.state != HEAD:
            self._set_deadline(connection, HEAD, now, self.limits.header_timeout)

    def _take_request(self, connection: Connection) -> tuple[wire.RequestHead, bytes] | None:
        """The next whole request in the buffer, taken out of it; None while incomplete.

        Raises ``wire.ProtocolError`` (leaving the offending bytes in the buffer).
        """
        limits = self.limits
        buffer = connection.buffer
        if connection.head is None:
            if not connection.scanned:
                # empty lines before a request are ignored (RFC 9112 2.2)
                del buffer[:len(buffer) - len(buffer.lstrip(b"\r\n"))]
                if not buffer:
                    return None
                if buffer[0] == wire.TLS_HANDSHAKE:
                    raise wire.ProtocolError(400, "this is a plain-HTTP server (a TLS "
                                                  "handshake was sent)")
            end = wire.head_end(buffer, connection.scanned)
            if end < 0:
                wire.check_incomplete(buffer, limits.max_request_line, limits.max_header_bytes)
                connection.scanned = max(1, len(buffer) - 2)
                return None
            head = wire.parse_head(bytes(buffer[:end]), limits.max_request_line,
                                   limits.max_header_bytes, limits.max_body_bytes)
            del buffer[:end]
            connection.scanned = 0
            connection.head = head
            if head.expect_continue and len(buffer) < head.content_length:
                connection.sock.send(wire.CONTINUE)  # a few bytes: never blocks
        head = connection.head
        if len(buffer) < head.content_length:
            return None
        body = bytes(buffer[:head.content_length])
        del buffer[:head.content_length]
        connection.head = None
        return head, body

    def _request(self, connection: Connection, head: wire.RequestHead, body: bytes) -> Request:
        connection.served += 1
        cancelled = threading.Event()
        with self._lock:
            if connection.hung_up:
                cancelled.set()
            connection.cancelled = cancelled
        query = parse_qs(head.query, keep_blank_values=True) if head.query else {}
        return Request(head.method, head.path, query, head.headers, body, cancelled)

    def _dispatch(self, connection: Connection, head: wire.RequestHead, body: bytes,
                  now: float) -> None:
        request = self._request(connection, head, body)
        self._poller.modify(connection.fd, HANGUP)  # first: if it fails, it is not busy
        connection.state = BUSY
        if not self._pool.submit(self._serve, connection, head, request, now):
            connection.state = CLOSING  # no worker has it
            self._fail(connection, 503, "the labotel debug server is busy with other "
                                        "requests; retry later", {"Retry-After": RETRY_AFTER},
                       head_request=head.method == "HEAD")

    # -- answering (on a worker thread) ----------------------------------------------------
    def _serve(self, connection: Connection, head: wire.RequestHead, request: Request,
               read_at: float) -> None:
        keep = gone = False
        try:
            while True:
                keep = self._answer(connection, head, request, read_at)
                if not keep or self._pool.spare() < max(1, self._pool.size // 2):
                    break
                following = self._next_request(connection)
                if following is None:
                    break
                head, request, read_at = following
        except (EOFError, OSError):
            keep, gone = False, True
        finally:
            self._hand_back(connection, keep, gone)

    def _answer(self, connection: Connection, head: wire.RequestHead, request: Request,
                read_at: float) -> bool:
        """Run the router and write its answer; whether the connection stays open."""
        response = self._router.handle(request)
        keep = head.keep_alive and not request.cancelled.is_set() and not self._stopping
        data = wire.response_head(response.status, response.header_items(), keep,
                                  head.version)
        if request.method != "HEAD":
            data += response.body
        deadline = read_at + self.limits.write_timeout + _profile_seconds(request)
        connection.sock.settimeout(max(deadline - time.monotonic(), MIN_SEND_SECONDS))
        connection.sock.sendall(data)
        return keep

    def _next_request(self, connection: Connection
                      ) -> tuple[wire.RequestHead, Request, float] | None:
        """The next request if it arrives whole within LINGER_FOR_NEXT, else None (what
        did arrive stays in the buffer for the selector thread). EOFError: client left."""
        if connection.buffer:
            return None  # pipelined input: the selector thread sorts it out
        connection.sock.settimeout(LINGER_FOR_NEXT)
        try:
            data = connection.sock.recv(READ_SIZE)
        except TimeoutError:
            return None
        if not data:
            raise EOFError
        connection.buffer += data
        try:
            taken = self._take_request(connection)
        except wire.ProtocolError:
            return None  # the selector thread answers it (the bytes are still buffered)
        if taken is None:
            return None
        head, body = taken
        return head, self._request(connection, head, body), time.monotonic()

    def _hand_back(self, connection: Connection, keep: bool, gone: bool) -> None:
        try:
            connection.sock.setblocking(False)
        except OSError:
            keep, gone = False, True
        with self._lock:
            done = self._loop_done  # the selector thread has finished: close it here
            if not done and keep and not connection.buffer and connection.head is None:
                # the usual keep-alive case: it only has to become idle and readable again
                try:
                    self._poller.modify(connection.fd, READ)
                except (OSError, ValueError):
                    keep = False  # the selector thread closes it
                else:
                    connection.cancelled = None
                    self._set_deadline(connection, IDLE, time.monotonic(),
                                       self.limits.idle_timeout)
                    if not self._poller.sees_changes_while_polling:
                        self.wake()
                    return
            if not done:
                self._returned.append((connection, keep, gone))
        if done:  # close it, outside the lock (the canary's look may run a loss's reactions)
            self._let_go(connection.sock)
            return
        self.wake()

    # -- back on the selector thread -------------------------------------------------------
    def _take_back(self, connection: Connection, keep: bool, gone: bool) -> None:
        if connection.closed:
            return
        now = time.monotonic()
        with self._lock:
            connection.state = CLOSING  # no longer busy: _close may close the socket now
        if gone or (connection.cancelled is not None and connection.cancelled.is_set()):
            self._close(connection)
            return
        if not keep:
            self._start_closing(connection, now)
            return
        connection.cancelled = None
        self._set_deadline(connection, IDLE, now, self.limits.idle_timeout)
        self._poller.modify(connection.fd, READ)
        self._advance(connection, now)  # input that arrived with or after the last request

    def _fail(self, connection: Connection, status: int, message: str,
              headers: dict[str, str] | None = None, head_request: bool | None = None) -> None:
        """Answer a request the server refuses, then close the connection gracefully."""
        if head_request is None:  # the refused head is still at the start of the buffer
            head_request = connection.buffer.startswith(b"HEAD ")
        try:
            connection.sock.send(wire.error_response(status, message, headers,
                                                     head_request=head_request))
        except OSError:
            self._close(connection)
            return
        self._start_closing(connection, time.monotonic())

    def _start_closing(self, connection: Connection, now: float) -> None:
        try:
            connection.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(connection)
            return
        connection.buffer = bytearray()
        connection.head = None
        connection.drained = 0
        self._set_deadline(connection, CLOSING, now, min(LINGER_SECONDS,
                                                         self.limits.body_timeout))
        self._poller.modify(connection.fd, READ)

    def _linger(self, connection: Connection) -> None:
        data = _receive(connection)
        if data is None:
            return
        connection.drained += len(data)
        if not data or connection.drained > LINGER_BYTES:
            self._close(connection)

    # -- timeouts and closing --------------------------------------------------------------
    def _sweep(self, now: float) -> None:
        if self._accept_paused_until and now >= self._accept_paused_until:
            self._accept_paused_until = 0.0
            self._poller.register(self._listener_fd, READ)
        # at least once a second: a deadline set by a worker meanwhile is not lost
        next_sweep = now + MAX_SWEEP_INTERVAL
        for connection in list(self._connections.values()):
            with self._lock:
                expired = connection.state != BUSY and connection.deadline <= now
            if expired:
                self._guarded(self._expire, connection)
            elif connection.state != BUSY:
                next_sweep = min(next_sweep, connection.deadline)
        self._next_sweep = next_sweep

    def _expire(self, connection: Connection) -> None:
        if connection.state == HEAD:
            self._fail(connection, 408, "timed out reading the request head "
                                        f"(header_timeout {self.limits.header_timeout:g} s)")
        elif connection.state == BODY:
            self._fail(connection, 408, "timed out reading the request body "
                                        f"(body_timeout {self.limits.body_timeout:g} s)")
        else:  # idle, or done lingering
            self._close(connection)

    def _close(self, connection: Connection) -> None:
        with self._lock:
            if connection.closed:
                return
            if connection.cancelled is not None:
                connection.cancelled.set()
            if connection.state == BUSY:
                # a worker is writing to it: wake that write with an error, but leave the
                # closing to when it hands the connection back (the descriptor must not
                # be reused by another file while the worker still holds its number)
                try:
                    connection.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return
            connection.closed = True
            if not self.orphaned:
                self._poller.unregister(connection.fd)
            self._connections.pop(connection.fd, None)
        # outside the lock: the canary's look may run the loss's reactions (a new server)
        self._let_go(connection.sock)

    def _let_go(self, sock: socket.socket) -> None:
        """Close ``sock``; once orphaned, give its number up without closing it. The
        canary is looked at first (a loss orphans this loop): a daemon closes every
        descriptor right after its last request to the debug server, and this close came
        just after the turn's own look, closing the daemon's file at that number."""
        if not self.orphaned:
            descriptors.check()
        try:
            if self.orphaned:
                sock.detach()
            else:
                sock.close()
        except OSError:
            pass

    def stop(self) -> None:
        self._stopping = True
        self.wake()

    def orphan(self) -> None:
        """The application closed labotel's descriptors: stop serving, and let go of every
        descriptor this server had without closing one that is the application's now (the
        selector thread ends at once if its waker is still ours, else at its next look,
        within ``IDLE_LOOK``)."""
        if self.orphaned:
            return
        self.orphaned = True
        self._stopping = True
        if descriptors.still_ours(self._identities[self._wake_end]):
            try:
                self._wake_end.send(b"\0")
            except OSError:
                pass

    def when_released(self, then: Callable[[], None]) -> bool:
        """(Orphaned.) Call ``then`` on the selector thread once it has let go of its
        listener (closed if still ours, so the port is free again); False if it already
        has (``then`` is not called)."""
        with self._lock:
            if self._released:
                return False
            self._on_released = then
            return True

    def _close_all(self) -> None:
        with self._lock:
            self._loop_done = True  # workers still running close their own connections
            returned = [item[0] for item in self._returned]
            self._returned.clear()
            closing = returned + [connection for connection in self._connections.values()
                                  if connection.state != BUSY]
            for connection in returned:
                connection.state = CLOSING
        # a running request still gets its answer (as Go's Shutdown allows); its worker
        # closes it
        for connection in closing:
            self._close(connection)
        if self.orphaned:  # free the port first: the new server waits for it
            self._close_descriptors()
            self._pool.stop()
        else:
            self._pool.stop()
            self._close_descriptors()
        descriptors.forget(self)

    def abandon(self) -> None:
        """In a forked child: close every descriptor the parent's server had, touch nothing else."""
        for connection in list(self._connections.values()):
            self._let_go(connection.sock)
        self._close_descriptors()
        descriptors.forget(self)

    def _close_descriptors(self) -> None:
        for sock in (self._listener, self._waker, self._wake_end):
            if self.orphaned and descriptors.still_ours(self._identities.get(sock)):
                try:  # the application closed only some descriptors: this one is ours
                    sock.close()
                except OSError:
                    pass
            else:
                self._let_go(sock)
        with self._lock:
            self._released, then = True, self._on_released
            self._on_released = None
        if then is not None:
            try:
                then()
            except Exception:  # a labotel bug: count it; the thread ends quietly
                log.debug("labotel: the debug server's replacement failed", exc_info=True)
                self._on_error()
        if self.orphaned:  # an epoll cannot give its number up: never finalized
            descriptors.keep_forever(self._poller)
            return
        try:
            self._poller.close()
        except OSError:
            pass


def _profile_seconds(request: Request) -> float:
    """The ``?seconds=`` a profile request waits out before answering (0 if none)."""
    raw = request.arg("seconds")
    if not raw or not ascii_digits(raw) or len(raw) > 7:
        return 0.0
    return float(raw)


def _refuse(sock: socket.socket, answer: bytes) -> None:
    """Answer a connection that is not let in and close it (a best-effort graceful close)."""
    try:
        try:
            sock.recv(READ_SIZE)  # what already arrived, so closing does not reset
        except (BlockingIOError, InterruptedError):
            pass
        sock.send(answer)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    finally:
        sock.close()


def _receive(connection: Connection) -> bytes | None:
    """What the socket has now: b"" once the peer is gone, None when nothing is ready."""
    try:
        return connection.sock.recv(READ_SIZE)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b""
