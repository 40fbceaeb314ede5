"""A race reaches an OTLP/gRPC receiver (what Jaeger or the Collector listens on) as a span
that can be found by its ``labotel.race.resource`` attribute."""

from __future__ import annotations

import threading
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

import labotel
from tests.unit.race_support import spawn, start_detector, wait_until


class TraceReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """The OTLP trace service, in process, on a loopback port."""

    def __init__(self) -> None:
        self.spans: list = []
        self.received = threading.Condition()

    def Export(self, request, context):  # noqa: N802 - the gRPC method name
        with self.received:
            for resource_spans in request.resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend(scope_spans.spans)
            self.received.notify_all()
        return trace_service_pb2.ExportTraceServiceResponse()

    def find(self, key: str, value: str, timeout: float = 15.0):
        def match():
            for span in self.spans:
                attributes = {a.key: a.value for a in span.attributes}
                if key in attributes and attributes[key].string_value == value:
                    return span, attributes
            return None

        with self.received:
            self.received.wait_for(match, timeout)
            return match()


def test_race_span_is_exported_over_otlp_grpc():
    receiver = TraceReceiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        start_detector(traces_exporter="otlp", otlp_endpoint=f"http://127.0.0.1:{port}",
                       otlp_protocol="grpc", metrics_exporter="none")
        done = []

        def writer():
            labotel.record_access("orders_cache", write=True)
            done.append(True)

        thread = spawn(writer, name="cache-writer")
        wait_until(done)
        labotel.record_access("orders_cache")
        thread.join()
        labotel.shutdown()  # flushes the batch span processor
        found = receiver.find("labotel.race.resource", "orders_cache")
    finally:
        server.stop(grace=None)
    assert found is not None, "no span with labotel.race.resource=orders_cache arrived"
    span, attributes = found
    assert span.name == "labotel.race_condition"
    assert attributes["labotel.race.previous.thread.name"].string_value == "cache-writer"
    assert attributes["labotel.race.previous.write"].bool_value is True
    assert attributes["code.lineno"].int_value > 0
    assert [event.name for event in span.events] == ["stack", "stack"]
