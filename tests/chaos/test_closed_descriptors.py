"""An application that closes every descriptor under labotel, as daemonizing does.

python-daemon's ``DaemonContext`` (or a hand-written double fork) closes every descriptor
it did not open, then the daemon opens its own files and sockets, which take the same
numbers. labotel used to go on with its numbers: urllib3 found the exporter's pooled
connection "dropped" and closed it, closing the daemon's file under it (the next write
raised ``EBADF``); the debug server's thread waited for ever on an epoll nobody could
wake, so ``shutdown()`` took its 5 s and left the thread. Now labotel notices (a canary
descriptor of its own), lets go of every number without closing it, and opens new ones:
the debug server listens again on its address, exports reach the collector again.
"""

from __future__ import annotations

import http.server
import json
import os
import socketserver
import subprocess
import sys
import threading
import time

import pytest

import labotel
from tests.metrics_helpers import fetch

pytestmark = pytest.mark.skipif(not hasattr(os, "closerange"), reason="needs os.closerange")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# argv: collector port, directory for the daemon's files
_DAEMON = r"""
import json, os, socket, sys, threading, time, urllib.request
port, directory = int(sys.argv[1]), sys.argv[2]
import labotel
monitor = labotel.start(service_name="daemon", admin_address="127.0.0.1:0",
                        otlp_endpoint=f"http://127.0.0.1:{port}", otlp_protocol="http/protobuf",
                        metric_export_interval=0.3, shutdown_timeout=3)
give_up = time.monotonic() + 20
while time.monotonic() < give_up and not any(
        e.get("last_export_ok") for e in monitor.status()["exports"]):
    time.sleep(0.05)  # a pooled keep-alive connection to the collector exists now
host, admin_port = monitor.server.address
urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/admin/monitoring/", timeout=5).read()

os.closerange(3, 65536)  # what DaemonContext.open() does
closed_at = time.time()
# the daemon's own files and listening socket take labotel's old numbers
files = [open(os.path.join(directory, f"daemon{n}.log"), "wb") for n in range(16)]
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(8)
listener.setblocking(False)
numbers = [f.fileno() for f in files] + [listener.fileno()]
time.sleep(3.5)  # exports every 0.3 s; the debug server looks at least every 2 s

errors = []
for n, f in enumerate(files):
    try:
        f.write(b"daemon %d\n" % n)
        f.close()
    except OSError as error:
        errors.append(f"daemon{n}.log: {error!r}")
stolen = 0
try:
    listener.accept()
    stolen = 1
except BlockingIOError:
    pass
try:
    view = json.loads(urllib.request.urlopen(
        f"http://127.0.0.1:{admin_port}/admin/monitoring/", timeout=5).read())
    losses = view["descriptors_closed_by_the_application"]
except Exception as error:
    losses = repr(error)
began = time.monotonic()
labotel.shutdown()
took = time.monotonic() - began
print(json.dumps({"errors": errors, "stolen": stolen, "losses": losses, "numbers": numbers,
                  "shutdown": took, "closed_at": closed_at,
                  "threads": [t.name for t in threading.enumerate()]}))
"""


class _Collector(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    posts: list[float]


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the exporter pools its connection

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.posts.append(time.time())  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def collector():
    server = _Collector(("127.0.0.1", 0), _Handler)
    server.posts = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_a_daemonizing_application_keeps_its_files_and_labotel_recovers(collector, tmp_path):
    done = subprocess.run([sys.executable, "-c", _DAEMON, str(collector.server_address[1]),
                           str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["errors"] == [], result  # labotel closed none of the daemon's files
    for n in range(16):
        assert (tmp_path / f"daemon{n}.log").read_bytes() == b"daemon %d\n" % n
    assert result["stolen"] == 0, result  # nor answered on the daemon's socket
    assert result["losses"] == 1, (result, done.stderr[-2000:])  # served again, and says so
    assert [t for t in result["threads"] if t != "MainThread"] == [], result
    assert result["shutdown"] < 3 + 0.2, result
    assert any(at > result["closed_at"] + 0.5 for at in collector.posts), result  # exports
    assert "closed labotel's file descriptors" in done.stderr


def test_a_connection_closed_just_after_the_servers_look_leaves_the_daemons_file(tmp_path):
    """The daemon closes every descriptor and opens its files right after its last
    request to the debug server: the selector thread had looked at the canary before, and
    then closed that request's connection, by number: the daemon's file (1 run in 6 of the
    test above on 3.13, with the restarted server then unreachable). Now every close looks
    at the canary first."""
    import socket

    from labotel import descriptors

    monitor = labotel.start(admin_address="127.0.0.1:0", metrics_exporter="none",
                            traces_exporter="none", leak_detection=False)
    old_server = monitor.server
    loop = old_server._loop
    client = socket.create_connection(monitor.server.address)
    files = []
    try:
        give_up = time.monotonic() + 5
        while not loop._connections and time.monotonic() < give_up:
            time.sleep(0.01)
        connection = next(iter(loop._connections.values()))
        losses = descriptors.losses
        # the daemon's files now have the connection's and the canary's numbers
        files = _daemon_files_at(tmp_path, connection.fd, descriptors._canary[0])
        loop._close(connection)  # as the selector thread would, right after its look
        for number in files:
            os.write(number, b"still the daemon's\n")  # EBADF if labotel closed it
        assert descriptors.losses == losses + 1
        # the application left labotel its listener: the old server closes it, and the
        # new one listens on the same port (it found the port taken, and said so in a
        # traceback, while the old listener was let go of without closing)
        assert _serving_again(monitor, old_server) == old_server.address[1]
    finally:
        client.close()
        _close_numbers(files)
        labotel.shutdown()
    _assert_daemon_wrote(tmp_path, files)
    _assert_no_labotel_thread_left()


def test_an_export_request_looks_at_the_canary_after_encoding_its_batch(collector, tmp_path):
    """The export looks at the canary before it encodes its batch; the daemon may close
    every descriptor meanwhile. urllib3 then found the pooled connection's number readable
    (the daemon's file) and closed it as a dropped connection. The request looks again."""
    from labotel import descriptors, sdk

    monitor = labotel.start(admin_address="", otlp_endpoint=f"http://127.0.0.1:"
                            f"{collector.server_address[1]}", otlp_protocol="http/protobuf",
                            metric_export_interval=60, leak_detection=False)
    files = []
    try:
        exporter = next(e for e in sdk._owned_exporters(monitor.providers)
                        if getattr(e, "_labotel_session", None) is not None)
        session = exporter._labotel_session
        url = f"http://127.0.0.1:{collector.server_address[1]}/v1/metrics"
        session.post(url, data=b"", timeout=5)  # a pooled keep-alive connection now
        pools = session.get_adapter(url).poolmanager.pools
        pooled = next(conn.sock for key in pools.keys() for conn in pools[key].pool.queue
                      if conn is not None and conn.sock is not None)
        files = _daemon_files_at(tmp_path, pooled.fileno(), descriptors._canary[0])
        session.post(url, data=b"", timeout=5)  # as the export's request, after encoding
        for number in files:
            os.write(number, b"still the daemon's\n")  # EBADF if labotel closed it
    finally:
        _close_numbers(files)
        labotel.shutdown()
    _assert_daemon_wrote(tmp_path, files)


def _daemon_files_at(directory, *numbers: int) -> list[int]:
    """The daemon's files at ``numbers`` (labotel's until now), as closing everything and
    opening files leaves them."""
    for number in numbers:
        with open(directory / f"daemon{number}.log", "wb") as log:
            os.dup2(log.fileno(), number)
    return list(numbers)


def _close_numbers(numbers: list[int]) -> None:
    for number in numbers:
        try:
            os.close(number)
        except OSError:
            pass


def _assert_daemon_wrote(directory, numbers: list[int]) -> None:
    for number in numbers:
        assert (directory / f"daemon{number}.log").read_bytes() == b"still the daemon's\n"


def _serving_again(monitor, old_server) -> int:
    """The port of the debug server started after a loss, once it answers."""
    give_up = time.monotonic() + 10
    while time.monotonic() < give_up:
        server = monitor.server
        if server is not None and server is not old_server:
            status, _, _ = fetch(f"{server.url}/healthz")
            assert status == 200
            return server.address[1]
        time.sleep(0.01)
    raise AssertionError(f"no debug server after the loss: {monitor.server!r}")


def _assert_no_labotel_thread_left() -> None:
    """shutdown() leaves no thread of labotel's; an orphaned server's ends at once too
    (it waited for its next look, up to 2 s, and the next test saw it)."""
    give_up = time.monotonic() + 1
    while time.monotonic() < give_up:
        left = [t.name for t in threading.enumerate() if t.name.startswith("labotel")]
        if not left:
            return
        time.sleep(0.01)
    raise AssertionError(f"labotel threads left after shutdown: {left}")
