"""The OpenTelemetry side of the compat seam: per-provider answers, probed capabilities."""

from __future__ import annotations

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CollectorRegistry

from labotel import sdk
from labotel.prometheus import is_prometheus_reader


def test_an_unrelated_providers_prometheus_reader_does_not_stop_labotels_own():
    # The SDK keeps every provider's readers in one class-level set: asking it whether
    # "this provider" already has a Prometheus reader answered for every provider.
    unrelated = MeterProvider(metric_readers=[PrometheusMetricReader(registry=CollectorRegistry())])
    app = MeterProvider()
    try:
        reader = sdk._attach_prometheus_reader(app)
        assert reader is not None and is_prometheus_reader(reader)
        app.remove_metric_reader(reader)
    finally:
        app.shutdown()
        unrelated.shutdown()


def test_a_provider_that_has_a_prometheus_reader_gets_no_second_one():
    app = MeterProvider(metric_readers=[PrometheusMetricReader(registry=CollectorRegistry())])
    try:
        assert sdk._attach_prometheus_reader(app) is None
    finally:
        app.shutdown()
