"""Requests/s and p99 latency of labotel's debug server vs prometheus_client's
``start_http_server`` (the server most Python services expose today), side by side, with
0, 50 and 200 idle connections held open to each.

Both sides are separate processes running the same ``labotel.start()`` (leak detection
off), so ``/metrics`` renders the same registry; side "labotel" serves it on its debug
server, side "prometheus_client" on ``start_http_server``. prometheus_client answers
every path with the metrics except ``/favicon.ico`` (an empty 200): that is its analogue
of ``/healthz``. One client thread sends requests one after another on a keep-alive
connection (prometheus_client's server closes after each answer: the client reconnects,
as a scraper would), alternating between the sides in blocks of ``--seconds``, so a
machine that speeds up or slows down affects both alike. Also printed: each server's
threads and descriptors with 200 idle connections open, and the time labotel takes to
answer a /debug/pprof/symbol POST of 10,000 addresses (target <= 50 ms).

    uv run python bench/debug_server.py [--seconds 2] [--rounds 2]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import psutil

SERVER = r"""
import gc, sys, types
import labotel
side, port, addresses = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if side == "labotel":
    labotel.start(admin_address=f"127.0.0.1:{port}", leak_detection=False)
    from labotel.profile import symbols
    functions = [f for f in gc.get_objects() if isinstance(f, types.FunctionType)]
    with open(addresses, "w") as out:  # a symbol table of every function in the process
        out.write("+".join(f"{symbols.code_address(f.__code__) + 2:#x}" for f in functions))
else:
    from prometheus_client import start_http_server
    labotel.start(admin_address="", leak_detection=False)
    start_http_server(port, addr="127.0.0.1")
print("ready", flush=True)
sys.stdin.read()
"""
PATHS = {"labotel": {"/metrics": "/metrics", "/healthz": "/healthz"},
         "prometheus_client": {"/metrics": "/metrics", "/healthz": "/favicon.ico"}}
SIDES = tuple(PATHS)
IDLE_LEVELS = (0, 50, 200)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(side: str, addresses: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    child = subprocess.Popen([sys.executable, "-c", SERVER, side, str(port), addresses],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    return child, port


class Client:
    """Sequential GETs on one keep-alive connection, reconnecting when the server closes."""

    def __init__(self, port: int):
        self.port = port
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def get(self, path: str) -> None:
        self.connection.request("GET", path)
        response = self.connection.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"{path} answered {response.status}")
        if response.will_close:
            self.connection.close()

    def run(self, path: str, seconds: float) -> list[float]:
        latencies = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            began = time.perf_counter()
            self.get(path)
            latencies.append(time.perf_counter() - began)
        return latencies


def open_idle(port: int, count: int) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)]


def measure(seconds: float, rounds: int, results: dict, resources: dict) -> None:
    with tempfile.TemporaryDirectory() as folder:
        addresses = os.path.join(folder, "addresses")
        children = {side: start(side, addresses) for side in SIDES}
        try:
            clients = {side: Client(port) for side, (_, port) in children.items()}
            for side, client in clients.items():  # warm-up
                for path in PATHS[side].values():
                    client.run(path, 0.3)
            for idle_count in IDLE_LEVELS:
                idle = {}
                for side, (_, port) in children.items():
                    began = time.perf_counter()
                    idle[side] = open_idle(port, idle_count)
                    resources[(side, idle_count, "connect_s")] = time.perf_counter() - began
                time.sleep(0.5)
                if idle_count == max(IDLE_LEVELS):
                    for side, (child, _) in children.items():
                        process = psutil.Process(child.pid)
                        resources[side] = (process.num_threads(), process.num_fds())

                for name in ("/metrics", "/healthz"):
                    for _ in range(rounds):
                        for side in SIDES:
                            latencies = clients[side].run(PATHS[side][name], seconds)
                            results.setdefault((idle_count, name, side), []).extend(latencies)
                for sockets in idle.values():
                    for sock in sockets:
                        sock.close()
            results["symbol"] = symbol_times(children["labotel"][1], addresses)
        finally:
            for child, _ in children.values():
                child.stdin.close()
                child.wait(timeout=30)


def symbol_times(port: int, addresses_file: str, count: int = 10_000) -> list[float]:
    with open(addresses_file) as source:
        addresses = source.read().split("+")[:count]
    body = "+".join(addresses).encode()
    times = []
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for _ in range(7):
        began = time.perf_counter()
        connection.request("POST", "/debug/pprof/symbol", body)
        reply = connection.getresponse().read()
        times.append(time.perf_counter() - began)
    resolved = reply.count(b"\n") - 1
    if resolved < len(addresses) * 0.9:
        raise RuntimeError(f"only {resolved} of {len(addresses)} addresses resolved")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per block")
    parser.add_argument("--rounds", type=int, default=2, help="blocks per side and case")
    args = parser.parse_args()
    results: dict = {}
    resources: dict = {}
    measure(args.seconds, args.rounds, results, resources)
    summary = {}
    print(f"{'idle':>4} {'path':9} {'side':18} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7}")
    for idle_count in IDLE_LEVELS:
        for name in ("/metrics", "/healthz"):
            rates = {}
            for side in SIDES:
                latencies = sorted(results[(idle_count, name, side)])
                rate = len(latencies) / (args.seconds * args.rounds)
                p50 = 1000 * statistics.median(latencies)
                p99 = 1000 * latencies[int(0.99 * len(latencies))]
                rates[side] = rate
                summary[f"{idle_count} {name} {side}"] = {"rps": rate, "p50_ms": p50,
                                                          "p99_ms": p99}
                print(f"{idle_count:>4} {name:9} {side:18} {rate:8.0f} {p50:7.2f} {p99:7.2f}")
            ratio = rates["labotel"] / rates["prometheus_client"]
            summary[f"{idle_count} {name} ratio"] = ratio
            print(f"{'':>4} {name:9} {'labotel/prom':18} {ratio:8.2f}x requests/s")
    for side in SIDES:
        threads, fds = resources[side]
        connect = resources[(side, max(IDLE_LEVELS), "connect_s")]
        summary[f"{side} with 200 idle"] = {"threads": threads, "fds": fds,
                                            "connect_s": connect}
        print(f"{side:18} 200 idle connections: opened in {connect:.2f} s; then "
              f"{threads} threads, {fds} descriptors")
    symbol_ms = 1000 * statistics.median(results["symbol"])
    summary["symbol_10000_ms"] = symbol_ms
    print(f"/debug/pprof/symbol, 10,000 addresses: {symbol_ms:.1f} ms (median of 7; "
          "target <= 50 ms)")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
