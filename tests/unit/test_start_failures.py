"""``start()`` where the process's circumstances let it fail: no thread can start (a
container at its pids limit, a process out of address space). A configuration error
raises ``ValueError``; anything else is logged, what was built is undone, and ``start()``
returns a monitor that is not running: the application starts anyway, and a later
``start()`` tries again."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import threading

import pytest

import labotel
from labotel import sdk
from tests.unit.test_exports_while_down import wait_until

# A child process in which no thread can start, for real: each new thread's stack (1 GiB)
# is more than the address space left to it. Everything is imported first.
NO_THREADS = textwrap.dedent("""
    import logging, resource, sys, threading
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(message)s")
    import labotel, labotel.monitor
    {setup}

    def address_space():
        for line in open("/proc/self/status"):
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024

    resource.setrlimit(resource.RLIMIT_AS, (address_space() + (400 << 20),
                                            resource.RLIM_INFINITY))
    threading.stack_size(1 << 30)
    try:
        threading.Thread(target=print).start()
    except RuntimeError as error:
        print("no thread starts:", error)
    original_start = threading.Thread.start
    monitor = labotel.start(admin_address="127.0.0.1:0", race_detection=True,
                            otlp_endpoint="http://127.0.0.1:9", otlp_protocol="grpc",
                            traces_exporter="otlp")
    print("running:", monitor.running, "| current:", labotel.monitor.current())
    print("error:", monitor.start_error)
    print("threads:", sorted(t.name for t in threading.enumerate()))
    print("patches undone:", threading.Thread.start is original_start)
    {check}
    resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    threading.stack_size(0)
    again = labotel.start(admin_address="127.0.0.1:0")
    print("again running:", again.running, bool(again.admin_url))
    labotel.shutdown()
""")

APP_PROVIDERS = """
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
app_reader = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[app_reader]))
trace.set_tracer_provider(TracerProvider())
"""

# labotel's series left on the application's MeterProvider after the failed start
LEFT_ON_APP_PROVIDER = """
data = app_reader.get_metrics_data()
names = [m.name for rm in (data.resource_metrics if data else []) for sm in rm.scope_metrics
         for m in sm.metrics if m.name.startswith("labotel")]
print("labotel series on the app's provider:", names)
"""


def run_without_threads(setup: str = "", check: str = "") -> str:
    script = NO_THREADS.format(setup=setup, check=check)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.parametrize("providers", ["labotel's", "the application's"])
def test_a_process_where_no_thread_can_start_runs_without_labotel(providers):
    """With its own providers, start() fails building them (the SDK's resource detection
    runs on a thread pool); with the application's, at the debug server's thread, after
    its instruments and patches went in. Either way the application gets no exception,
    nothing of labotel is left, and once threads can start again so does labotel."""
    app_owned = providers == "the application's"
    out = run_without_threads(APP_PROVIDERS if app_owned else "",
                              LEFT_ON_APP_PROVIDER if app_owned else "")
    assert "no thread starts: can't start new thread" in out  # the case meant
    assert "could not start (RuntimeError: can't start new thread); the application runs " \
           "without it" in out
    assert "running: False | current: None" in out
    assert "error: RuntimeError: can't start new thread" in out
    assert "threads: ['MainThread']" in out
    assert "patches undone: True" in out
    if app_owned:
        assert "labotel series on the app's provider: []" in out
    assert "again running: True True" in out


def _reader_threads() -> list[str]:
    return [thread.name for thread in threading.enumerate()
            if "PeriodicExportingMetricReader" in thread.name
            or thread.name.startswith(("labotel", "OtelBatch"))]


def test_a_start_that_fails_once_its_meter_exports_stops_that_export(monkeypatch, caplog):
    """The meter's reader starts exporting as it is built; a failure building the span
    side after it (here the span exporters) must not leave that export running on a
    monitor nobody can shut down."""
    def no_span_exporters(settings):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(sdk, "_span_exporters", no_span_exporters)
    with caplog.at_level(logging.ERROR, logger="labotel"):
        monitor = labotel.start(admin_address="127.0.0.1:0", otlp_endpoint="http://127.0.0.1:9",
                                otlp_protocol="grpc", metric_export_interval=0.2)
    assert not monitor.running and labotel.monitor.current() is None
    assert monitor.start_error == "RuntimeError: can't start new thread"
    assert "could not start" in caplog.text
    assert wait_until(lambda: not _reader_threads(), 2), _reader_threads()


def test_a_configuration_error_still_raises_and_is_undone(monkeypatch):
    def bad_span_exporters(settings):
        raise ValueError("traces_exporter: no such exporter 'nope'")

    monkeypatch.setattr(sdk, "_span_exporters", bad_span_exporters)
    with pytest.raises(ValueError, match="traces_exporter"):
        labotel.start(admin_address="127.0.0.1:0", otlp_endpoint="http://127.0.0.1:9",
                      otlp_protocol="grpc", metric_export_interval=0.2)
    assert labotel.monitor.current() is None
    assert wait_until(lambda: not _reader_threads(), 2), _reader_threads()
