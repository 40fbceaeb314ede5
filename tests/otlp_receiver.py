"""A real OTLP/HTTP receiver on loopback for tests: decodes protobuf export requests."""

from __future__ import annotations

import gzip
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

MESSAGES = {
    "/v1/metrics": (ExportMetricsServiceRequest, ExportMetricsServiceResponse),
    "/v1/traces": (ExportTraceServiceRequest, ExportTraceServiceResponse),
}


class OTLPReceiver:
    def __init__(self) -> None:
        self.requests: dict[str, list] = {path: [] for path in MESSAGES}
        self.changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path not in MESSAGES:
                    self.send_error(404)
                    return
                request_type, response_type = MESSAGES[self.path]
                message = request_type.FromString(body)
                with receiver.changed:
                    receiver.requests[self.path].append(message)
                    receiver.changed.notify_all()
                payload = response_type().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> OTLPReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def spans(self) -> list:
        with self.changed:
            return [span for request in self.requests["/v1/traces"]
                    for resource_spans in request.resource_spans
                    for scope_spans in resource_spans.scope_spans
                    for span in scope_spans.spans]

    def metric_names(self) -> set[str]:
        with self.changed:
            return {metric.name for request in self.requests["/v1/metrics"]
                    for resource_metrics in request.resource_metrics
                    for scope_metrics in resource_metrics.scope_metrics
                    for metric in scope_metrics.metrics}

    def wait(self, predicate, timeout: float = 15.0):
        with self.changed:
            self.changed.wait_for(lambda: bool(self._call(predicate)), timeout)
        return self._call(predicate)

    def _call(self, predicate):
        return predicate(self)
