"""Helpers for the zero-code tests: run apps under the real ``opentelemetry-instrument``
launcher, find free loopback ports, and receive OTLP over real gRPC in this process."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent import futures
from pathlib import Path

import grpc
import psutil
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

BIN = Path(sys.executable).parent
LAUNCHER = BIN / "opentelemetry-instrument"


def free_port_run(count: int) -> int:
    """A port P such that P .. P+count-1 are all free on 127.0.0.1 right now."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + count > 65535:
            continue
        holders = []
        try:
            for port in range(base, base + count):
                holder = socket.socket()
                holders.append(holder)
                holder.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for holder in holders:
                holder.close()
    raise RuntimeError(f"no run of {count} free ports")


def launcher_env(**overrides: str) -> dict[str, str]:
    """The test's environment minus any OTEL_/LABOTEL_ settings, with the venv first on PATH."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OTEL_", "LABOTEL_", "PYTHONPATH"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update({"OTEL_LOGS_EXPORTER": "none", "PYTHONUNBUFFERED": "1",
                "OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_METRIC_EXPORT_INTERVAL": "300"})
    env.update(overrides)
    return env


def launch(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    """``opentelemetry-instrument *args`` with stdin a pipe (closing it ends the test apps)."""
    return subprocess.Popen([str(LAUNCHER), *args], cwd=cwd, env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def read_line(process: subprocess.Popen, prefix: str, timeout: float = 60.0) -> str:
    """The first stdout line starting with ``prefix`` (the app's handshake)."""
    result: list[str] = []

    def read() -> None:
        for line in process.stdout:
            if line.startswith(prefix):
                result.append(line.strip())
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    if not result:
        process.kill()
        _, err = process.communicate(timeout=10)
        raise AssertionError(f"no {prefix!r} line from the app; stderr:\n{err[-4000:]}")
    return result[0]


def finish(process: subprocess.Popen, timeout: float = 30.0) -> str:
    """Close the app's stdin (it exits), return its stderr; fail if it did not exit cleanly."""
    try:
        _, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
        raise AssertionError(f"app did not exit; stderr:\n{err[-4000:]}") from None
    assert process.returncode == 0, f"exit {process.returncode}; stderr:\n{err[-4000:]}"
    return err


def terminate(process: subprocess.Popen, timeout: float = 30.0) -> str:
    """SIGTERM ``process`` and return its stderr once it exits. If it has not exited within
    ``timeout``, fail with the Python stack of it and each process under it (py-spy dump):
    a hang at exit says where it waits."""
    tree = [process.pid]
    try:
        tree += [child.pid for child in psutil.Process(process.pid).children(recursive=True)]
    except psutil.Error:
        pass
    process.send_signal(signal.SIGTERM)
    try:
        return process.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        pass
    dumps = []
    for pid in tree:
        if psutil.pid_exists(pid):
            dump = subprocess.run([str(BIN / "py-spy"), "dump", "--pid", str(pid)],
                                  capture_output=True, text=True, timeout=60)
            dumps.append(f"--- pid {pid}:\n{dump.stdout}{dump.stderr}")
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    err = process.communicate()[1]
    raise AssertionError(f"no exit within {timeout} s of SIGTERM; stacks:\n"
                         + "\n".join(dumps) + f"\nstderr:\n{err[-4000:]}")


def get(url: str, timeout: float = 10.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except http.client.HTTPException as error:
        # Polling a port nothing listens on yet can connect the socket to itself (the
        # kernel picked that same port as the source) and read back our own request.
        raise ConnectionError(f"{url}: no HTTP answer ({error!r})") from error


def get_json(url: str) -> dict:
    status, body = get(url)
    assert status == 200, f"{url}: {status} {body}"
    return json.loads(body)


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def attributes(resource_or_span) -> dict:
    """OTLP KeyValue list -> {key: python value}."""
    out = {}
    for item in resource_or_span.attributes:
        kind = item.value.WhichOneof("value")
        out[item.key] = getattr(item.value, kind) if kind else None
    return out


class GrpcOTLPReceiver(trace_service_pb2_grpc.TraceServiceServicer,
                       metrics_service_pb2_grpc.MetricsServiceServicer):
    """Trace and metrics OTLP/gRPC services on a loopback port; keeps every request."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.trace_requests: list = []
        self.metric_requests: list = []
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def Export(self, request, context):  # noqa: N802 (the gRPC method name)
        with self._lock:
            if isinstance(request, trace_service_pb2.ExportTraceServiceRequest):
                self.trace_requests.append(request)
                return trace_service_pb2.ExportTraceServiceResponse()
            self.metric_requests.append(request)
            return metrics_service_pb2.ExportMetricsServiceResponse()

    def __enter__(self) -> GrpcOTLPReceiver:
        self._server.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.stop(grace=None)

    def spans(self) -> list[tuple[dict, object]]:
        """(resource attributes, span) for every span received."""
        with self._lock:
            requests = list(self.trace_requests)
        return [(attributes(rs.resource), span) for request in requests
                for rs in request.resource_spans for ss in rs.scope_spans for span in ss.spans]

    def metric_resources(self, scope: str) -> list[tuple[dict, set[str]]]:
        """(resource attributes, metric names) of every export with metrics from ``scope``."""
        with self._lock:
            requests = list(self.metric_requests)
        found = []
        for request in requests:
            for rm in request.resource_metrics:
                names = {m.name for sm in rm.scope_metrics if sm.scope.name == scope
                         for m in sm.metrics}
                if names:
                    found.append((attributes(rm.resource), names))
        return found
