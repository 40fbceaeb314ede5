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
