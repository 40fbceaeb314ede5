"""Helpers for fault-path tests: a collector that never answers, a forked child's exit, a
process holding over 1024 descriptors, an HTTP CONNECT proxy."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator

import pytest


@contextlib.contextmanager
def silent_collector(monkeypatch: pytest.MonkeyPatch, protocol: str,
                     timeout: int = 3) -> Iterator[socket.socket]:
    """OTLP (metrics and traces, over ``protocol``) sent to a port whose connections the
    kernel completes and nobody reads: every export waits out ``timeout`` seconds."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT",
                           f"http://127.0.0.1:{silent.getsockname()[1]}")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
        monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", str(timeout))
        yield silent


def exit_status_within(pid: int, seconds: float) -> int | None:
    """The child's exit code, or None (and the child killed) if it is still running."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


@contextlib.contextmanager
def descriptors_past_1024() -> Iterator[None]:
    """This process holding descriptors numbered up to 1029, as a busy server does (its
    soft limit raised to allow it, as such a server's is): a socket opened meanwhile
    gets a number of 1030 or more."""
    resource = pytest.importorskip("resource")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 1200
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
        except (ValueError, OSError):
            pytest.skip(f"cannot open {want} descriptors here (limit {soft}/{hard})")
    held: list[int] = []
    try:
        while not held or held[-1] < 1040:  # every free number below taken
            held.append(os.open(os.devnull, os.O_RDONLY))
        for fd in [fd for fd in held if fd >= 1030]:  # the next sockets get these
            os.close(fd)
            held.remove(fd)
        with socket.socket() as probe:
            assert probe.fileno() >= 1024  # the case meant
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@contextlib.contextmanager
def connect_proxy(upstream: tuple[str, int]) -> Iterator[tuple[str, list[bytes]]]:
    """An HTTP CONNECT proxy on loopback that tunnels every CONNECT to ``upstream``
    (whatever name it asks for: a name only the proxy can resolve, as behind an egress
    proxy). Yields its URL and the request lines it was sent."""
    listener = socket.create_server(("127.0.0.1", 0))
    requests: list[bytes] = []

    def pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def serve() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # closed: the proxy is done
                return
            head = b""
            while b"\r\n\r\n" not in head and (chunk := client.recv(4096)):
                head += chunk
            requests.append(head.split(b"\r\n", 1)[0])
            server = socket.create_connection(upstream)
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            for ends in ((client, server), (server, client)):
                threading.Thread(target=pipe, args=ends, daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", requests
    finally:
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)  # ends the accept() waiting
        listener.close()
