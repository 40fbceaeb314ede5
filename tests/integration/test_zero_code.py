"""``opentelemetry-instrument python app.py`` turns labotel on with no code change.

Every test runs the real launcher from the venv in a subprocess, on loopback ports of its
own; OTLP goes over real gRPC to a receiver in this process.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.zero_code_support import (
    GrpcOTLPReceiver,
    finish,
    free_port_run,
    get,
    get_json,
    launch,
    launcher_env,
    read_line,
    wait_for,
)

# A plain app: no labotel import. It makes one span through the OpenTelemetry API,
# reports its pid, and runs until the test closes its stdin.
PLAIN_APP = """
import os, sys
from opentelemetry import trace

with trace.get_tracer("plain-app").start_as_current_span("checkout"):
    pass
labotel_running = "labotel.monitor" in sys.modules and (
    sys.modules["labotel.monitor"].current() is not None)
print("READY", os.getpid(), labotel_running, flush=True)
sys.stdin.read()
"""


@pytest.fixture
def receiver():
    with GrpcOTLPReceiver() as running:
        yield running


def write_app(directory: Path, source: str, name: str = "app.py") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(source))
    return path


def families(body: str) -> dict:
    return {family.name: family for family in text_string_to_metric_families(body)}


def labotel_series(body: str) -> set[str]:
    """Sample names that come from labotel's own instruments."""
    return {sample.name for family in text_string_to_metric_families(body)
            for sample in family.samples if sample.labels.get("otel_scope_name") == "labotel"}


def target_info(body: str) -> dict[str, str]:
    samples = families(body)["target_info"].samples
    assert len(samples) == 1, samples
    return samples[0].labels


def test_plain_app_prometheus_configurator(tmp_path, receiver):
    """OTEL_METRICS_EXPORTER=prometheus: one registry, served on 9464-style port and on
    labotel's debug port; labotel's metrics, endpoints and the app's span all work."""
    admin, prom = free_port_run(1), free_port_run(1)
    write_app(tmp_path, PLAIN_APP)
    env = launcher_env(OTEL_SERVICE_NAME="plain-app", OTEL_METRICS_EXPORTER="prometheus",
                       OTEL_EXPORTER_PROMETHEUS_PORT=str(prom),
                       OTEL_EXPORTER_PROMETHEUS_HOST="127.0.0.1",
                       OTEL_TRACES_EXPORTER="otlp", OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint)
    # the launcher flag (not an environment variable) places the debug server
    app = launch(["--labotel_admin_address", f"127.0.0.1:{admin}", "python", "app.py"],
                 tmp_path, env)
    try:
        _, pid, labotel_loaded = read_line(app, "READY").split()
        assert labotel_loaded == "True"  # started by the launcher, not by the app
        debug = f"http://127.0.0.1:{admin}"

        status, debug_metrics = get(debug + "/metrics")
        assert status == 200
        status, prom_metrics = get(f"http://127.0.0.1:{prom}/metrics")
        assert status == 200
        for body in (debug_metrics, prom_metrics):
            names = labotel_series(body)
            assert {"process_thread_count", "process_memory_usage_bytes"} <= names, names
            info = target_info(body)
            assert info["process_pid"] == pid and info["service_name"] == "plain-app"
            assert re.fullmatch(r"[0-9a-f-]{36}", info["service_instance_id"])
            # one reader on the registry: no series appears twice
            lines = [line for line in body.splitlines() if line and not line.startswith("#")]
            assert len(lines) == len(set(lines))
        assert target_info(debug_metrics) == target_info(prom_metrics)

        assert get(debug + "/healthz") == (200, "ok\n")
        assert get_json(debug + "/admin/monitoring/goroutines")["pid"] == int(pid)
        assert get_json(debug + "/admin/monitoring")["service"] == "plain-app"
        assert get_json(debug + "/admin/monitoring/heap")["pid"] == int(pid)
        assert get(debug + "/admin/monitoring/detections?kind=nonsense")[0] == 400

        spans = wait_for(lambda: [(r, s) for r, s in receiver.spans() if s.name == "checkout"])
        assert spans, "the app's span never reached the OTLP receiver"
        resource, _ = spans[0]
        assert resource["service.name"] == "plain-app"
        assert resource["process.pid"] == int(pid)  # labotel's identity on the configurator's
        assert resource["service.instance.id"] == target_info(debug_metrics)["service_instance_id"]
    finally:
        finish(app)


def test_plain_app_otlp_configurator(tmp_path, receiver):
    """The distro's default (OTLP metrics, no Prometheus port): labotel's metrics reach the
    receiver over OTLP with the app's pid, and labotel still serves them on /metrics."""
    admin = free_port_run(1)
    write_app(tmp_path, PLAIN_APP)
    env = launcher_env(OTEL_SERVICE_NAME="otlp-app", OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
                       LABOTEL_ADMIN_ADDRESS=f"127.0.0.1:{admin}")
    app = launch(["python", "app.py"], tmp_path, env)
    try:
        _, pid, _ = read_line(app, "READY").split()
        wanted = {"process.thread.count", "process.memory.usage"}
        # an export may come between start()'s first instrument and the collectors' (300 ms)
        exports = wait_for(lambda: [(resource, names) for resource, names
                                    in receiver.metric_resources("labotel") if wanted <= names])
        assert exports, ("labotel's runtime metrics never reached the OTLP receiver: "
                         f"{receiver.metric_resources('labotel')}")
        resource, names = exports[-1]
        assert resource["process.pid"] == int(pid) and resource["service.name"] == "otlp-app"

        status, body = get(f"http://127.0.0.1:{admin}/metrics")
        assert status == 200
        assert "process_thread_count" in labotel_series(body)
        assert target_info(body)["service_instance_id"] == resource["service.instance.id"]
    finally:
        finish(app)


def test_disabled_instrumentations_turns_labotel_off(tmp_path):
    admin = free_port_run(1)
    write_app(tmp_path, PLAIN_APP)
    env = launcher_env(OTEL_METRICS_EXPORTER="none", OTEL_TRACES_EXPORTER="none",
                       LABOTEL_ADMIN_ADDRESS=f"127.0.0.1:{admin}",
                       OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="flask, labotel")
    app = launch(["python", "app.py"], tmp_path, env)
    try:
        _, _, labotel_running = read_line(app, "READY").split()
        assert labotel_running == "False"
        with pytest.raises(OSError):
            get(f"http://127.0.0.1:{admin}/healthz", timeout=2)
    finally:
        finish(app)


def test_bad_labotel_setting_is_reported_and_the_app_still_runs(tmp_path):
    write_app(tmp_path, PLAIN_APP)
    env = launcher_env(OTEL_METRICS_EXPORTER="none", OTEL_TRACES_EXPORTER="none",
                       LABOTEL_LEAK_WINDOW="soon")
    app = launch(["python", "app.py"], tmp_path, env)
    read_line(app, "READY")
    err = finish(app)
    assert "labotel: not started by opentelemetry-instrument" in err
    assert "LABOTEL_LEAK_WINDOW" in err and "leak_window" in err


# The racy app: it imports labotel only for the access annotations (it never calls start()).
# BALANCE_LOCK is created while the app's modules are imported: if the launcher started
# labotel too late the lock would be invisible to the detector and the correctly locked
# updates of "balance" would be reported as a race. (The test turns off race_adopt_locks,
# the detector's own rescue for locks created before start(), so only timing counts.)
COUNTERS_MODULE = """
import threading
import labotel

BALANCE_LOCK = threading.Lock()
balance = {"value": 0}
hits = {"value": 0}

def deposit():
    with BALANCE_LOCK:
        labotel.record_access("balance", write=True)
        balance["value"] += 1

def hit():
    labotel.record_access("hits", write=True)  # no lock: a race with any other hit()
    hits["value"] += 1
"""

RACY_APP = """
import os, sys, threading
import counters

def work(target):
    threads = [threading.Thread(target=target) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

work(counters.deposit)
work(counters.hit)
print("READY", os.getpid(), flush=True)
sys.stdin.read()
"""


def test_race_in_plain_app_is_detected(tmp_path, receiver):
    admin = free_port_run(1)
    write_app(tmp_path, COUNTERS_MODULE, "counters.py")
    write_app(tmp_path, RACY_APP)
    env = launcher_env(OTEL_METRICS_EXPORTER="none", OTEL_TRACES_EXPORTER="otlp",
                       OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
                       LABOTEL_ADMIN_ADDRESS=f"127.0.0.1:{admin}", LABOTEL_RACE_ADOPT_LOCKS="0")
    app = launch(["--labotel_race_detection", "1", "python", "app.py"], tmp_path, env)
    try:
        read_line(app, "READY")
        found = get_json(f"http://127.0.0.1:{admin}/admin/monitoring/detections"
                         "?kind=race_condition")["detections"]
        resources = {d["attributes"].get("labotel.race.resource") for d in found}
        assert resources == {"hits"}, found
        spans = wait_for(lambda: [
            s for _, s in receiver.spans() if s.name == "labotel.race_condition"
            and any(a.key == "labotel.race.resource" and a.value.string_value == "hits"
                    for a in s.attributes)])
        assert spans, "the race span never reached the OTLP receiver"
    finally:
        finish(app)
