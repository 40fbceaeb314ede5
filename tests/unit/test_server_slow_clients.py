"""200 idle and 20 slowloris connections cost the debug server no thread and cannot keep
it from answering; the timeouts release them."""

import os
import socket
import threading
import time

import labotel
from tests.metrics_helpers import fetch
from tests.unit.raw_http import split

IDLE, SLOWLORIS = 200, 20


def server_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("labotel-debug-server")]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_idle_and_slowloris_clients_neither_pin_threads_nor_block_answers():
    monitor = labotel.start(admin_address="127.0.0.1:0", leak_detection=False,
                            admin_header_timeout=3.0, admin_idle_timeout=3.0)
    limits = monitor.server.limits
    address = monitor.server.address
    fds_before = open_fds()
    stop = threading.Event()
    idle = [socket.create_connection(address, timeout=10) for _ in range(IDLE)]
    slow = [socket.create_connection(address, timeout=10) for _ in range(SLOWLORIS)]
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200

    def dribble():  # one header byte per connection every 0.25 s (the server's timeout ends it)
        for index in range(len(head)):
            for sock in slow:
                try:
                    sock.send(head[index:index + 1])
                except OSError:
                    pass
            if stop.wait(0.25):
                return

    dribbler = threading.Thread(target=dribble, daemon=True)
    dribbler.start()
    try:
        time.sleep(0.5)  # all connected and dribbling
        for path in ("/healthz", "/metrics", "/healthz", "/metrics"):
            started = time.monotonic()
            status, _, body = fetch(monitor.admin_url + path)
            assert status == 200 and body
            assert time.monotonic() - started < 1.0, path
        # bounded: at most max_connections descriptors (the client's 220 are ours, not its),
        # one selector thread plus the workers that answered
        assert monitor.server.open_connections <= limits.max_connections
        server_fds = open_fds() - fds_before - IDLE - SLOWLORIS
        assert server_fds <= limits.max_connections + 4
        assert len(server_threads()) <= 1 + limits.max_concurrent_requests
        assert len(server_threads()) <= 3  # what two sequential fetches needed

        # the timeouts release them: slowloris get 408 after header_timeout, idle ones EOF
        deadline = time.monotonic() + limits.header_timeout + limits.idle_timeout + 3
        answers = []
        for sock in slow:
            answers.append(_read_all(sock, deadline))
        for sock in idle:
            assert _read_all(sock, deadline) in (b"", None)  # None: replaced earlier (reset)
        assert all(split(answer)[0].status == 408 for answer in answers)
        # after the 408 a connection lingers (what the client still sends is read and
        # dropped) for at most 2 s, then it is closed too
        deadline = time.monotonic() + 3
        while monitor.server.open_connections and time.monotonic() < deadline:
            time.sleep(0.05)
        assert monitor.server.open_connections == 0
    finally:
        stop.set()
        dribbler.join(5)
        for sock in idle + slow:
            sock.close()
        labotel.shutdown()


def _read_all(sock: socket.socket, deadline: float) -> bytes | None:
    data = b""
    while True:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(4096)
        except ConnectionResetError:
            return None if not data else data
        if not chunk:
            return data
        data += chunk
