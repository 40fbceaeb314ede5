"""Exemplars: off unless OTEL_METRICS_EXEMPLAR_FILTER asks, and then really collected."""

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import labotel


@pytest.mark.parametrize("chosen, expected", [(None, 0), ("always_off", 0), ("always_on", 1),
                                              ("trace_based", 1)])
def test_exemplar_filter_decides_what_labotels_provider_keeps(monkeypatch, chosen, expected):
    if chosen is None:
        monkeypatch.delenv("OTEL_METRICS_EXEMPLAR_FILTER", raising=False)
    else:
        monkeypatch.setenv("OTEL_METRICS_EXEMPLAR_FILTER", chosen)
    monitor = labotel.start(admin_address="", leak_detection=False)
    reader = InMemoryMetricReader()
    monitor.providers.meter_provider.add_metric_reader(reader)
    latency = monitor.meter.create_histogram("test.latency", unit="s")
    with monitor.tracer.start_as_current_span("request"):  # a sampled span to point at
        latency.record(0.25)
    data = reader.get_metrics_data()
    points = [point for resource in data.resource_metrics for scope in resource.scope_metrics
              for metric in scope.metrics if metric.name == "test.latency"
              for point in metric.data.data_points]
    assert len(points) == 1 and len(points[0].exemplars) == expected
    if expected:
        assert points[0].exemplars[0].value == 0.25 and points[0].exemplars[0].span_id
