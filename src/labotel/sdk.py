"""OpenTelemetry providers, readers and exporters for labotel.

If the application (or ``opentelemetry-instrument``) already set global providers,
labotel registers its instruments on those and owns nothing. Otherwise it builds its own
MeterProvider (Prometheus reader on the default prometheus_client registry, plus OTLP or
console push readers as configured) and TracerProvider (OTLP/console span exporters),
keeps them private to labotel, and shuts them down in ``shutdown()``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import uuid

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

from labotel.config import Settings

log = logging.getLogger("labotel")
INSTRUMENTATION_SCOPE = "labotel"


@dataclasses.dataclass
class Providers:
    meter_provider: metrics.MeterProvider
    tracer_provider: trace.TracerProvider
    owns_meter_provider: bool
    owns_tracer_provider: bool
    resource: Resource | None

    def shutdown(self) -> None:
        """Flush and shut down what labotel created; leave the app's providers alone."""
        for owned, provider in ((self.owns_tracer_provider, self.tracer_provider),
                                (self.owns_meter_provider, self.meter_provider)):
            if not owned:
                continue
            try:
                provider.force_flush()
                provider.shutdown()
            except Exception:
                log.exception("labotel: shutting down %s failed", type(provider).__name__)


def global_meter_provider_set() -> bool:
    return not type(metrics.get_meter_provider()).__name__.startswith("_Proxy")


def global_tracer_provider_set() -> bool:
    provider = trace.get_tracer_provider()
    return not isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider))


def build_resource(settings: Settings) -> Resource:
    """Resource from OTEL_RESOURCE_ATTRIBUTES / OTEL_SERVICE_NAME, plus this process."""
    attributes = {
        "service.instance.id": str(uuid.uuid4()),
        "process.pid": os.getpid(),
        "process.runtime.name": sys.implementation.name,
        "process.runtime.version": sys.version.split()[0],
    }
    resource = Resource.create(attributes)
    name = settings.service_name
    if name is None and resource.attributes.get("service.name", "").startswith("unknown_service"):
        script = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
        name = os.path.splitext(script)[0] or "python"
    if name:
        resource = resource.merge(Resource({"service.name": name}))
    return resource


def build_providers(settings: Settings) -> Providers:
    resource = None
    if global_meter_provider_set():
        meter_provider, owns_meter = metrics.get_meter_provider(), False
    else:
        resource = build_resource(settings)
        meter_provider = MeterProvider(resource=resource, metric_readers=_metric_readers(settings))
        owns_meter = True
    if global_tracer_provider_set():
        tracer_provider, owns_tracer = trace.get_tracer_provider(), False
    else:
        resource = resource or build_resource(settings)
        tracer_provider = TracerProvider(resource=resource)
        for exporter in _span_exporters(settings):
            tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
        owns_tracer = True
    return Providers(meter_provider, tracer_provider, owns_meter, owns_tracer, resource)


def _metric_readers(settings: Settings) -> list[MetricReader]:
    readers: list[MetricReader] = []
    interval_ms = settings.metric_export_interval * 1000
    for name in settings.metrics_exporters():
        if name == "prometheus":
            from opentelemetry.exporter.prometheus import PrometheusMetricReader

            readers.append(PrometheusMetricReader())
        elif name == "otlp":
            readers.append(PeriodicExportingMetricReader(
                _otlp_exporter(settings, "metrics"), export_interval_millis=interval_ms))
        elif name == "console":
            readers.append(PeriodicExportingMetricReader(
                ConsoleMetricExporter(), export_interval_millis=interval_ms))
    return readers


def _span_exporters(settings: Settings) -> list:
    exporters = []
    for name in settings.traces_exporters():
        if name == "otlp":
            exporters.append(_otlp_exporter(settings, "traces"))
        elif name == "console":
            exporters.append(ConsoleSpanExporter())
        elif name == "prometheus":
            raise ValueError("traces_exporter: 'prometheus' cannot export traces")
    return exporters


def _otlp_exporter(settings: Settings, signal: str):
    """An OTLP exporter; with no explicit endpoint the exporter reads OTEL_* itself."""
    protocol = settings.otlp_protocol or os.environ.get(
        f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL", "grpc")
    endpoint = settings.otlp_endpoint
    if protocol == "http/protobuf":
        if signal == "metrics":
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        cls = OTLPMetricExporter if signal == "metrics" else OTLPSpanExporter
        if endpoint:
            return cls(endpoint=endpoint.rstrip("/") + f"/v1/{signal}")
        return cls()
    if signal == "metrics":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        cls = OTLPMetricExporter
    else:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        cls = OTLPSpanExporter
    return cls(endpoint=endpoint) if endpoint else cls()
