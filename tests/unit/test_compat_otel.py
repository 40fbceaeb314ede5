"""The OpenTelemetry side of the compat seam: per-provider answers, probed capabilities."""

from __future__ import annotations

import json
import logging

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CollectorRegistry

from labotel import compat, sdk
from labotel.prometheus import is_prometheus_reader
from tests.metrics_helpers import fetch


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


def test_every_capability_is_available_at_the_versions_labotel_allows(monkeypatch):
    # .ci/run runs this at the locked versions and at the lowest ones pyproject allows
    monkeypatch.setattr(compat, "_probed", {})
    missing = {name: c.reason for name, c in compat.probe().items() if not c.available}
    assert missing == {}


def test_a_missing_capability_is_logged_once_and_shown(monkeypatch, caplog, monitor):
    monkeypatch.setattr(compat, "_probed", {})
    with monkeypatch.context() as patched:  # as on an SDK before 1.43
        patched.delattr(MeterProvider, "add_metric_reader")
        with caplog.at_level(logging.WARNING, logger="labotel"):
            found = compat.probe()
            compat.probe()  # probed once: asked again, it neither re-checks nor re-logs
    lines = [r.getMessage() for r in caplog.records if "is off" in r.getMessage()]
    assert len(lines) == 1
    assert "otel.add_metric_reader" in lines[0] and "/metrics for a MeterProvider" in lines[0]
    assert found["otel.add_metric_reader"].available is False

    _, _, body = fetch(monitor.admin_url + "/admin/monitoring/")
    capabilities = json.loads(body)["capabilities"]
    assert capabilities["otel.add_metric_reader"]["available"] is True
    assert "feature" in capabilities["cpython.handle_run"]
