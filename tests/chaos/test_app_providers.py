"""On providers the application owns, labotel's shutdown() leaves nothing of its own
collecting (issue 11, item 10), and a later start() works again."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    app_counter = metrics.get_meter("app").create_counter("app.requests")
    app_counter.add(1)

    import labotel

    def labotel_metrics():
        data = reader.get_metrics_data()
        return {m.name for rm in data.resource_metrics for sm in rm.scope_metrics
                if sm.scope.name == "labotel" for m in sm.metrics}

    labotel.start(admin_address="")
    assert "process.memory.usage" in labotel_metrics()
    labotel.shutdown()
    reader.get_metrics_data()  # the collection after shutdown
    left = labotel_metrics()
    assert not left, f"still collected after shutdown: {sorted(left)}"
    names = {m.name for rm in reader.get_metrics_data().resource_metrics
             for sm in rm.scope_metrics for m in sm.metrics}
    assert "app.requests" in names, names  # the app's own instruments are untouched

    labotel.start(admin_address="")
    assert "process.memory.usage" in labotel_metrics()  # fresh instruments, fresh callbacks
    labotel.shutdown()
    print("detached")
""")


def test_shutdown_takes_labotel_instruments_off_an_app_meter_provider():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                            timeout=60, env={**os.environ, "LABOTEL_ADMIN_ADDRESS": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "detached" in result.stdout
