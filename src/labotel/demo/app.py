"""The LabEnd HTTP service: orders API, fault switches, and labotel's debug routes on the
same port (``/metrics``, ``/debug/pprof/*``, ``/admin/monitoring/*``)."""

from __future__ import annotations

import json
import logging
import os
import random
import re
import signal
import sys
import tempfile
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import trace

import labotel
from labotel.config import parse_address
from labotel.demo.faults import FAULTS, Faults
from labotel.demo.outbox import OutboxRelay
from labotel.demo.store import Store
from labotel.server.http import Request

log = logging.getLogger("labend")

# What the demo turns on unless the environment says otherwise: the race detector, the
# contention profiles, and leak windows short enough that every detector fires within a
# minute of its switch.
DEMO_OPTIONS = {
    "service_name": "labend",
    "admin_address": "",
    "race_detection": True,
    "contention_profiling": True,
    "leak_sample_interval": 1.0,
    "leak_window": 30.0,
}
ORDER_PATH = re.compile(r"^/orders/(\d+)$")
FAULT_PATH = re.compile(r"^/faults/([a-z-]+)$")


class LabEnd:
    def __init__(self, database: str):
        options = {name: value for name, value in DEMO_OPTIONS.items()
                   if f"LABOTEL_{name.upper()}" not in os.environ}
        self.monitor = labotel.start(**options)
        self.tracer = self.monitor.providers.tracer_provider.get_tracer("labend")
        self.store = Store(database)
        meter = self.monitor.providers.meter_provider.get_meter("labend")
        self.relay = OutboxRelay(self.store, meter)
        self.faults = Faults(lambda: self.relay.loop)

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        if path == "/" and method == "GET":
            return 200, {"service": "LabEnd", "orders": "/orders", "faults": "/faults",
                         "metrics": "/metrics", "pprof": "/debug/pprof/",
                         "admin": "/admin/monitoring/"}
        if path == "/orders":
            if method == "POST":
                return self._create_order(body)
            if method == "GET":
                return 200, {"orders": self.store.list_orders()}
        if (match := ORDER_PATH.match(path)) and method == "GET":
            order = self.store.get_order(int(match.group(1)))
            return (200, order) if order else (404, {"error": "no such order"})
        if path == "/faults" and method == "GET":
            return 200, self.faults.state()
        if match := FAULT_PATH.match(path):
            name = match.group(1)
            if name not in FAULTS:
                return 404, {"error": f"no such fault {name!r}", "faults": sorted(FAULTS)}
            if method in ("POST", "PUT"):
                self.faults.enable(name)
                return 200, self.faults.state()[name]
            if method == "DELETE":
                self.faults.disable(name)
                return 200, self.faults.state()[name]
        return 405 if path in ("/orders", "/faults") else 404, {"error": f"{method} {path}"}

    def _create_order(self, body: bytes) -> tuple[int, Any]:
        try:
            data = json.loads(body or b"{}")
            item = data["item"]
            quantity = data.get("quantity", 1)
            if not isinstance(item, str) or not item or not isinstance(quantity, int) \
                    or quantity < 1:
                raise ValueError
        except (ValueError, KeyError, TypeError):
            return 400, {"error": 'expected JSON {"item": "<name>", "quantity": <int >= 1>}'}
        return 201, self.store.create_order(item, quantity)


def make_handler(app: LabEnd) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "LabEnd"

        def _serve(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if parts.path.startswith(("/metrics", "/debug/", "/admin/", "/healthz")):
                response = app.monitor.router.handle(Request.build(
                    self.command, parts.path, parts.query, dict(self.headers.items()), body))
                self._send(response.status, response.body, response.content_type,
                           response.headers)
                return
            with app.tracer.start_as_current_span(
                    f"{self.command} {re.sub(r'/[0-9]+', '/{id}', parts.path)}",
                    kind=trace.SpanKind.SERVER,
                    attributes={"http.request.method": self.command,
                                "url.path": parts.path}) as span:
                status, data = app.handle(self.command, parts.path, body)
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(trace.StatusCode.ERROR)
            payload = json.dumps(data, indent=2).encode() + b"\n"
            self._send(status, payload, "application/json", {})

        def _send(self, status: int, body: bytes, content_type: str,
                  headers: dict[str, str]) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers.items():
                if name.lower() != "content-length":
                    self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _serve

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            log.debug(format, *args)

    return Handler


def _traffic(base_url: str, rate: float, stop: threading.Event) -> None:
    """A gentle stream of orders so the outbox and the metrics move on their own."""
    items = ["keyboard", "mouse", "monitor", "cable", "laptop"]
    while not stop.wait(1.0 / rate):
        body = json.dumps({"item": random.choice(items), "quantity": random.randint(1, 3)})
        request = urllib.request.Request(base_url + "/orders", body.encode(),
                                         {"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(request, timeout=5).read()
        except OSError:
            pass


def run(address: str, database: str | None = None, traffic: float = 2.0) -> int:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host, port = parse_address(address)
    if database is None:
        database = os.path.join(tempfile.mkdtemp(prefix="labend-"), "labend.db")
    app = LabEnd(database)
    server = ThreadingHTTPServer((host, port), make_handler(app))
    server.daemon_threads = True
    base = f"http://{host}:{server.server_address[1]}"
    app.relay.start()
    stop = threading.Event()
    if traffic > 0:
        threading.Thread(target=_traffic, args=(base, traffic, stop), name="traffic",
                         daemon=True).start()
    print(_banner(base, database), flush=True)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        app.faults.disable_all()
        app.relay.stop()
        server.server_close()
        labotel.shutdown()
    return 0


def _banner(base: str, database: str) -> str:
    fault_lines = "\n".join(f"    curl -X POST {base}/faults/{name:<12} # {what}"
                            for name, what in FAULTS.items())
    return f"""
LabEnd demo service on {base}  (database {database}; Ctrl-C stops it)

  Orders API     curl -X POST {base}/orders -d '{{"item": "keyboard", "quantity": 2}}'
                 curl {base}/orders
  Metrics        curl {base}/metrics
  Detections     curl {base}/admin/monitoring/detections
  Threads/tasks  curl {base}/admin/monitoring/goroutines
  Heap, GC       curl {base}/admin/monitoring/heap   {base}/admin/monitoring/gc
  Profiles       go tool pprof {base}/debug/pprof/profile?seconds=10
                 go tool pprof {base}/debug/pprof/mutex    (and /block: who waited where)
                 curl '{base}/debug/pprof/goroutine?debug=2'

  Provoke a problem (each detector reports within a minute; DELETE switches it off):
{fault_lines}
  Then watch the log below, or curl {base}/admin/monitoring/detections
""".rstrip() + "\n"


if __name__ == "__main__":
    sys.exit(run(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:8080"))
