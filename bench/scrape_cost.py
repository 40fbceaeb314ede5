"""CPU per /metrics scrape and scrape latency: labotel vs the OpenTelemetry contrib
system-metrics instrumentation (its process.* and cpython.* metrics), side by side.

Each side runs in its own process holding 1 million heap objects and 500 threads (the
scale the collectors must stay cheap at), serves /metrics over loopback HTTP, and is
scraped N times by this process. CPU is the serving process's own CPU time over the
scrapes (psutil), divided by N. prometheus_client's default collectors are removed on
both sides so only the instrumentation under test is measured.

    uv run python bench/scrape_cost.py [--scrapes 300]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import time

import psutil

SERVER = r"""
import sys, threading, time
from prometheus_client import REGISTRY, start_http_server
import prometheus_client
for collector in (prometheus_client.PROCESS_COLLECTOR, prometheus_client.PLATFORM_COLLECTOR,
                  prometheus_client.GC_COLLECTOR):
    REGISTRY.unregister(collector)
heap = [{"n": i} for i in range(1_000_000)]            # 1 million live objects
release = threading.Event()
threads = [threading.Thread(target=release.wait, daemon=True) for _ in range(500)]
for t in threads:
    t.start()
side, port = sys.argv[1], int(sys.argv[2])
if side == "labotel":
    import labotel
    labotel.start(admin_address=f"127.0.0.1:{port}", leak_detection=False)
else:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.instrumentation.system_metrics import (
        _DEFAULT_CONFIG, SystemMetricsInstrumentor)
    from opentelemetry.sdk.metrics import MeterProvider
    config = {k: v for k, v in _DEFAULT_CONFIG.items() if k.startswith(("process.", "cpython."))}
    provider = MeterProvider(metric_readers=[PrometheusMetricReader()])
    SystemMetricsInstrumentor(config=config).instrument(meter_provider=provider)
    start_http_server(port, addr="127.0.0.1")
print("ready", flush=True)
sys.stdin.read()
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(connection: http.client.HTTPConnection) -> bytes:
    connection.request("GET", "/metrics", headers={"Accept": "text/plain;version=0.0.4"})
    response = connection.getresponse()
    body = response.read()
    if response.status != 200:
        raise RuntimeError(f"scrape answered {response.status}")
    if response.will_close:  # the server closed the connection: reconnect for the next
        connection.close()
    return body


def measure(side: str, scrapes: int) -> dict:
    port = free_port()
    child = subprocess.Popen([sys.executable, "-c", SERVER, side, str(port)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        # one persistent connection, as Prometheus keeps its scrape connections open
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        body = _get(connection).decode()  # warm-up
        series = sum(1 for line in body.splitlines() if line and not line.startswith("#"))
        process = psutil.Process(child.pid)
        time.sleep(0.5)
        cpu_before = sum(process.cpu_times()[:2])
        latencies = []
        for _ in range(scrapes):
            start = time.perf_counter()
            _get(connection)
            latencies.append(time.perf_counter() - start)
        cpu = sum(process.cpu_times()[:2]) - cpu_before
        return {"side": side, "series": series, "cpu_ms_per_scrape": 1000 * cpu / scrapes,
                "latency_ms_p50": 1000 * statistics.median(latencies),
                "latency_ms_p99": 1000 * sorted(latencies)[int(0.99 * len(latencies))]}
    finally:
        child.stdin.close()
        child.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scrapes", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[dict]] = {"labotel": [], "system-metrics": []}
    for _ in range(args.rounds):  # alternate sides so machine noise hits both
        for side in results:
            results[side].append(measure(side, args.scrapes))
    summary = {}
    for side, runs in results.items():
        summary[side] = {key: statistics.median(run[key] for run in runs)
                         for key in ("series", "cpu_ms_per_scrape", "latency_ms_p50",
                                     "latency_ms_p99")}
        print(f"{side:15} series={summary[side]['series']:4.0f}  "
              f"cpu/scrape={summary[side]['cpu_ms_per_scrape']:.3f} ms  "
              f"latency p50={summary[side]['latency_ms_p50']:.2f} ms "
              f"p99={summary[side]['latency_ms_p99']:.2f} ms")
    ratio = summary["labotel"]["cpu_ms_per_scrape"] / summary["system-metrics"]["cpu_ms_per_scrape"]
    print(f"CPU per scrape ratio labotel/system-metrics = {ratio:.2f}  (target <= 0.5, "
          f"with series {summary['labotel']['series']:.0f} >= "
          f"{summary['system-metrics']['series']:.0f})")
    print(json.dumps({"ratio": ratio, **{k: v for k, v in summary.items()}}))


if __name__ == "__main__":
    os.environ.setdefault("LABOTEL_LEAK_DETECTION", "0")
    main()
