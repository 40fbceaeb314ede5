"""CPU per /metrics scrape and scrape latency: labotel vs the OpenTelemetry contrib
system-metrics instrumentation (its process.* and cpython.* metrics), side by side.

Each side runs in its own process holding 1 million heap objects and 500 threads (the
scale the collectors must stay cheap at), after a full collection (so labotel exports a
GC pause histogram for every generation, as a process that has run a while does), and
serves /metrics over loopback HTTP. Both run at once and this process scrapes them in
alternating blocks, so a machine that speeds up or slows down affects both sides alike.
CPU is each serving process's own CPU time (psutil) over its scrapes, divided by their
number. prometheus_client's default collectors are removed on both sides, so only the
instrumentation under test is measured. Scrapes ask for the text format, version 0.0.4.

labotel reads /proc afresh on every scrape. It reads sys.getallocatedblocks() (a walk over
every pymalloc pool) and mallinfo2() (a walk over malloc's free lists) at most once per
leak_sample_interval, as it does in production (there, with leak detection on, its
sampler takes those readings whether or not anything scrapes).

    uv run python bench/scrape_cost.py [--scrapes 1000] [--rounds 3]
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
import gc
gc.collect(1), gc.collect()  # a pause in every generation, as in a process that has run a while
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


def start_server(side: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    child = subprocess.Popen([sys.executable, "-c", SERVER, side, str(port)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    return child, port


def measure(sides: tuple[str, ...], scrapes: int, block: int = 50) -> list[dict]:
    """Scrape every side ``scrapes`` times, in alternating blocks of ``block``."""
    children = [start_server(side) for side in sides]
    try:
        # one persistent connection per side, as Prometheus keeps its scrape connections open
        connections = [http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                       for _, port in children]
        for connection in connections:  # warm-up
            for _ in range(block):
                _get(connection)
        processes = [psutil.Process(child.pid) for child, _ in children]
        time.sleep(0.5)
        cpu_before = [sum(process.cpu_times()[:2]) for process in processes]
        latencies: list[list[float]] = [[] for _ in sides]
        for _ in range(scrapes // block):
            for connection, side_latencies in zip(connections, latencies, strict=True):
                for _ in range(block):
                    start = time.perf_counter()
                    _get(connection)
                    side_latencies.append(time.perf_counter() - start)
        cpu_after = [sum(process.cpu_times()[:2]) for process in processes]
        series = [sum(1 for line in _get(connection).decode().splitlines()  # served at the end
                      if line and not line.startswith("#")) for connection in connections]
        results = []
        for side, before, after, side_latencies, count in zip(
                sides, cpu_before, cpu_after, latencies, series, strict=True):
            cpu = after - before
            done = len(side_latencies)
            results.append({
                "side": side, "series": count, "cpu_ms_per_scrape": 1000 * cpu / done,
                "latency_ms_p50": 1000 * statistics.median(side_latencies),
                "latency_ms_p99": 1000 * sorted(side_latencies)[int(0.99 * done)]})
        return results
    finally:
        for child, _ in children:
            child.stdin.close()
            child.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scrapes", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sides = ("labotel", "system-metrics")
    rounds = [measure(sides, args.scrapes) for _ in range(args.rounds)]
    ratios = [labotel["cpu_ms_per_scrape"] / anchor["cpu_ms_per_scrape"]
              for labotel, anchor in rounds]
    summary = {}
    for index, side in enumerate(sides):
        runs = [results[index] for results in rounds]
        summary[side] = {key: statistics.median(run[key] for run in runs)
                         for key in ("series", "cpu_ms_per_scrape", "latency_ms_p50",
                                     "latency_ms_p99")}
        print(f"{side:15} series={summary[side]['series']:4.0f}  "
              f"cpu/scrape={summary[side]['cpu_ms_per_scrape']:.3f} ms  "
              f"latency p50={summary[side]['latency_ms_p50']:.2f} ms "
              f"p99={summary[side]['latency_ms_p99']:.2f} ms")
    ratio = statistics.median(ratios)
    print(f"CPU per scrape ratio labotel/system-metrics = {ratio:.2f} (rounds: "
          f"{', '.join(f'{r:.2f}' for r in ratios)}; target <= 0.5, with series "
          f"{summary['labotel']['series']:.0f} >= {summary['system-metrics']['series']:.0f})")
    print(json.dumps({"ratio": ratio, "ratios": ratios, **summary}))


if __name__ == "__main__":
    os.environ.setdefault("LABOTEL_LEAK_DETECTION", "0")
    main()
