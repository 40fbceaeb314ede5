"""The application's exit: labotel's own exit hook closes its providers within
``shutdown_timeout``. Before it, the SDK's exit hooks waited out every export to a hung
collector (10 s at the exporter's default timeout, 6.9-8 s with a refused port)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from tests.integration.zero_code_support import GrpcOTLPReceiver

# Python 3.12 starts no thread in an exit hook (cpython gh-113964): labotel closes the
# providers one after the other there, and the last span export is bounded only by the
# exporter's own timeout unless the collector is known down (README, "Shutdown and exit").
THREADS_AT_EXIT = sys.version_info[:2] != (3, 12)

APP = """
import sys, time
import labotel
from labotel.detect.detection import Detection

monitor = labotel.start(admin_address="", shutdown_timeout=1.0, metric_export_interval={interval})
if {span}:
    monitor.reporter.report(Detection(kind="memory_leak", summary="a span to export"))
{before_exit}
print("exiting", flush=True)
"""


def exit_seconds(endpoint: str, protocol: str = "grpc", *, span: bool = False,
                 interval: float = 0.2, before_exit: str = "time.sleep(0.5)",
                 timeout: float = 60.0, **extra_env: str) -> tuple[float, str]:
    """Run a labotel app that exits by returning from its script: the seconds from its
    last line to the end of the process, and its stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "LABOTEL_"))}
    env.update(OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
               OTEL_TRACES_EXPORTER="otlp", OTEL_METRICS_EXPORTER="otlp",
               OTEL_LOGS_EXPORTER="none", OTEL_EXPORTER_OTLP_TIMEOUT="6",
               OTEL_SERVICE_NAME="exit-test", PYTHONUNBUFFERED="1", **extra_env)
    code = APP.format(interval=interval, span=span, before_exit=textwrap.dedent(before_exit))
    process = subprocess.Popen([sys.executable, "-c", code], env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None
    line = process.stdout.readline()
    last_line_at = time.monotonic()
    try:
        _, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
        pytest.fail(f"the app did not exit within {timeout} s; stderr:\n{err[-3000:]}")
    took = time.monotonic() - last_line_at
    assert line.strip() == "exiting", err[-3000:]
    assert process.returncode == 0, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    return took, err


@pytest.fixture
def hung_endpoint():
    """A collector that accepts connections and never answers."""
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(64)
        yield f"http://127.0.0.1:{hung.getsockname()[1]}"


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_exit_with_a_hung_collector_is_bounded_by_shutdown_timeout(hung_endpoint, protocol):
    # a liveness bound, not a speed target: unbounded, the exit waits the exporter's 6 s
    took, err = exit_seconds(hung_endpoint, protocol)
    assert took < 1.0 + 2.5, took
    assert "already shutdown" not in err, err[-3000:]  # the aborted exporters keep quiet


@pytest.mark.skipif(not THREADS_AT_EXIT, reason="3.12: no thread starts in an exit hook, so "
                    "a span export already hung is bounded by the exporter's timeout")
@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_exit_with_a_span_to_send_to_a_hung_collector_is_bounded(hung_endpoint, protocol):
    took, err = exit_seconds(hung_endpoint, protocol, span=True)
    assert took < 1.0 + 2.5, took
    assert "already shutdown" not in err, err[-3000:]


def test_exit_with_a_collector_known_down_drops_what_is_unsent_at_once():
    """The last exports failed: exit gives the exporters one second (DOWN_COLLECTOR_WAIT),
    and on 3.12, where exit hooks start no thread, none."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        refused = f"http://127.0.0.1:{closed.getsockname()[1]}"  # not listening: refused
    # exports every 0.2 s, each retried until the exporter's 6 s timeout: wait for a failure
    took, err = exit_seconds(refused, span=True, before_exit="time.sleep(6.5)")
    # the exporter's own error, or labotel's when the collector was asked (gRPC: no call)
    assert "Failed to export" in err or "does not answer (refused" in err, err[-3000:]
    assert took < 1.0 + 2.5, took


def test_exit_during_a_first_exports_back_off_is_not_held_by_it():
    """Both first exports ask the refusing collector again after the exporter's back-off
    (0.8-1.2 s, then 1.6-2.4 s) when the app exits. The abort ends those pauses: on 3.12,
    where the providers are closed on the exiting thread and the span processor's join has
    no bound, the exit waited for the span export's last question (2.0-2.7 s, 4.3 s once
    in CI); now it waits for nothing there, and one second where threads run."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        refused = f"http://127.0.0.1:{closed.getsockname()[1]}"
    took, err = exit_seconds(refused, span=True, before_exit="time.sleep(1.0)",
                             OTEL_BSP_SCHEDULE_DELAY="200")  # the span's export began
    assert took < (0.9 if not THREADS_AT_EXIT else 1.0 + 0.8), took


def test_exit_sends_the_last_metrics_and_spans():
    """The exit hook is a shutdown, not an abort: with a working collector the last
    collection and the span waiting in the batch both arrive, on every Python version."""
    with GrpcOTLPReceiver() as receiver:
        # one export a minute: the only export this short app makes is the one at exit
        exit_seconds(receiver.endpoint, span=True, interval=60, before_exit="")
        pushed = {name for _, names in receiver.metric_resources("labotel") for name in names}
        assert "process.thread.count" in pushed, pushed
        assert [span.name for _, span in receiver.spans()] == ["labotel.memory_leak"]


def test_exit_while_a_daemon_thread_holds_labotels_lock_does_not_hang(hung_endpoint):
    """An application thread stuck inside start() or shutdown() (here: holding the lock
    they share) must not hang the exit: the hook waits shutdown_timeout for the lock,
    then the process exits without labotel's last exports."""
    hold = """
    import threading
    held = threading.Event()
    def hold():
        labotel.monitor._lock.acquire()
        held.set()
        time.sleep(3600)
    threading.Thread(target=hold, daemon=True).start()
    held.wait()
    """
    took, err = exit_seconds(hung_endpoint, before_exit=hold)
    assert "held labotel's lock at exit" in err, err[-3000:]
    assert took < 1.0 + 2.5, took
