"""The OpenTelemetry side of the compat seam: per-provider answers, probed capabilities."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap

import opentelemetry.exporter.otlp.proto.grpc.exporter  # noqa: F401 - its capabilities get checked
import pytest
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


HTTP_ONLY = textwrap.dedent("""
    import json, logging, sys
    logging.basicConfig(level=logging.WARNING)
    import labotel
    from labotel import compat
    monitor = labotel.start(admin_address="", metric_export_interval=60, shutdown_timeout=1)
    print(json.dumps({"grpc_imported": "grpc" in sys.modules,
                      "capabilities": monitor.status()["capabilities"]}))
    labotel.shutdown()
    import opentelemetry.exporter.otlp.proto.grpc.exporter  # the application's, say
    monitor = labotel.start(admin_address="", metric_export_interval=60, shutdown_timeout=1)
    print(json.dumps({"capabilities": monitor.status()["capabilities"]}))
    labotel.shutdown()
""")


def test_a_process_exporting_over_http_does_not_import_grpc_to_check_it():
    """Importing gRPC only to probe its exporter cost every process that exports over
    HTTP (or not at all) ~45 ms, and 8 s of start() with the application's threads busy.
    Its capabilities say "not checked" until something imports the gRPC exporter; the
    next start() checks them."""
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
           "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
    done = subprocess.run([sys.executable, "-c", HTTP_ONLY], capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    first, second = (json.loads(line) for line in done.stdout.splitlines()
                     if line.startswith("{"))
    assert first["grpc_imported"] is False
    for name in ("otel.grpc_reconnect", "otel.grpc_idle_when_down"):
        assert first["capabilities"][name]["available"] is None
        assert first["capabilities"][name]["reason"].startswith("not checked")
        assert second["capabilities"][name]["available"] is True
    assert first["capabilities"]["otel.add_metric_reader"]["available"] is True
    assert "is off" not in done.stderr  # "not checked" is no missing capability


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


def test_a_failed_grpc_export_call_is_reported_and_the_stub_is_otherwise_untouched():
    """labotel learns that an attempt failed from a wrapper of the exporter's stub; an SDK
    that calls the stub some other way (``Export.future``) still reaches the real one."""
    from labotel.compat import otel

    class Export:  # a unary-unary multi-callable, as gRPC's stubs have
        fail = True
        future = "the stub's own"

        def __call__(self, request, timeout=None):
            if self.fail:
                raise RuntimeError("UNAVAILABLE")
            return "ok"

    class Stub:
        def __init__(self) -> None:
            self.Export = Export()  # noqa: N815 - the gRPC method name
            self.channel = "the stub's channel"

    class Exporter:
        _client = Stub()

    exporter, failed = Exporter(), []
    otel.report_failed_grpc_calls(exporter, lambda: failed.append(1))
    otel.report_failed_grpc_calls(exporter, lambda: failed.append(1))  # wrapped once
    with pytest.raises(RuntimeError):
        exporter._client.Export(request=b"", timeout=1)
    assert failed == [1]
    Export.fail = False
    assert exporter._client.Export(request=b"") == "ok" and failed == [1]
    assert exporter._client.Export.future == "the stub's own"
    assert exporter._client.channel == "the stub's channel"
