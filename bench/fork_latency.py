"""Parent-side ``os.fork()`` latency with labotel off, and on with OTLP over HTTP and gRPC.

A fourth case has no labotel, only a gRPC channel of the application's own calling the
refusing port every 0.2 s: what gRPC's own fork handler costs any process with gRPC
threads running (labotel's own exporters keep no channel open while the collector is
down, and ask it over a plain socket before the first export and each attempt after it,
so in the gRPC case above gRPC's threads do not run at all).

Each case runs in a process of its own: two threads of ordinary Python work keep the GIL
busy (as a pre-fork server's master rarely is, so this is the hard case), labotel starts
(race detection on, the collector's port refusing connections; forking begins once an
export has failed, so the collector is known to be down), and the main thread forks
``--forks`` times, 50 ms apart; each child writes the time its own code began (after the
fork hooks in the child) and exits. Printed per case: median, p90, p99 and max in ms, and
where the time went (Python fork hooks before, the ``fork()`` call itself with the C
libraries' own fork handlers, hooks after), with the median's ratio to labotel off in the
same run; then the time from ``fork()`` to the child's own first line. ``--tasks N``
keeps N asyncio tasks waiting on a loop in another thread (a busy asyncio service).

    uv run python bench/fork_latency.py [--forks 200] [--tasks 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CASES = {"off": None, "on, OTLP/HTTP": "http/protobuf", "on, OTLP/gRPC": "grpc",
         "off, the app's own gRPC calls": "app-grpc"}
PARTS = ("python hooks before", "fork() and C handlers", "python hooks after")
CHILD_READY = "child's first line"


def child(protocol: str | None, forks: int, tasks: int) -> dict[str, list[float]]:
    marks: dict[str, float] = {}
    # registered first: the last hook before fork() and the first after it in the parent
    os.register_at_fork(before=lambda: marks.__setitem__("before", time.perf_counter()),
                        after_in_parent=lambda: marks.__setitem__("after", time.perf_counter()))
    from bench.harm import unit_of_work

    stop = threading.Event()

    def work() -> None:
        i = 0
        while not stop.is_set():
            unit_of_work(i)
            i += 1

    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))
    if protocol == "app-grpc":
        threading.Thread(target=grpc_calls, args=(refused.getsockname()[1], stop),
                         daemon=True).start()
    elif protocol is not None:
        os.environ.update({
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{refused.getsockname()[1]}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": protocol, "OTEL_TRACES_EXPORTER": "otlp"})
        import labotel

        monitor = labotel.start(admin_address="", race_detection=True,
                                metric_export_interval=1.0)
    for _ in range(2):
        threading.Thread(target=work, daemon=True).start()
    if tasks:
        threading.Thread(target=hold_tasks, args=(tasks, stop), daemon=True).start()
    time.sleep(3)
    if protocol in ("grpc", "http/protobuf"):  # until an export failed: the collector is down
        give_up = time.monotonic() + 30
        while time.monotonic() < give_up and not any(
                entry.get("last_export_ok") is False for entry in monitor.status()["exports"]):
            time.sleep(0.1)
    times: dict[str, list[float]] = {"total": [], **{part: [] for part in PARTS},
                                     CHILD_READY: []}
    for _ in range(forks):
        time.sleep(0.05)
        reader, writer = os.pipe()
        began = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os.write(writer, repr(time.perf_counter()).encode())
            os._exit(0)
        ended = time.perf_counter()
        os.close(writer)
        child_began = float(os.read(reader, 64))
        os.close(reader)
        os.waitpid(pid, 0)
        times["total"].append(ended - began)
        times[CHILD_READY].append(child_began - began)
        for part, value in zip(PARTS, (marks["before"] - began, marks["after"] - marks["before"],
                                       ended - marks["after"]), strict=True):
            times[part].append(value)
    stop.set()
    return times


def hold_tasks(count: int, stop: threading.Event) -> None:
    """``count`` asyncio tasks waiting on an event, on a loop of this thread's own."""
    import asyncio

    async def hold() -> None:
        release = asyncio.Event()
        waiting = [asyncio.ensure_future(release.wait()) for _ in range(count)]
        while not stop.is_set():
            await asyncio.sleep(0.1)
        release.set()
        await asyncio.gather(*waiting)

    asyncio.run(hold())


def grpc_calls(port: int, stop: threading.Event) -> None:
    """An application's own gRPC client: a call every 0.2 s to a port that refuses."""
    import grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    call = channel.unary_unary("/bench.Probe/Call")
    while not stop.wait(0.2):
        try:
            call(b"", timeout=0.1)
        except grpc.RpcError:
            pass
    channel.close()


def quantiles(values: list[float]) -> list[float]:
    ordered = sorted(values)
    return [ordered[int(q * (len(ordered) - 1))] * 1e3 for q in (0.5, 0.9, 0.99, 1.0)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--forks", type=int, default=200)
    parser.add_argument("--tasks", type=int, default=0,
                        help="asyncio tasks held waiting on a loop in another thread")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(CASES[args.child], args.forks, args.tasks)), flush=True)
        os._exit(0)
    results = {}
    for name in CASES:
        done = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", name,
                               "--forks", str(args.forks), "--tasks", str(args.tasks)],
                              capture_output=True, text=True,
                              timeout=args.forks * 0.2 + 120)
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    base = quantiles(results["off"]["total"])[0]
    print(f"{'fork() in the parent, ms':34} {'median':>7} {'p90':>7} {'p99':>7} {'max':>7}"
          "  median ratio to off")
    for name, times in results.items():
        median, p90, p99, worst = quantiles(times["total"])
        print(f"{name:34} {median:7.2f} {p90:7.2f} {p99:7.2f} {worst:7.2f}  {median / base:.2f}")
        for part in PARTS:
            print(f"  {part:32} " + " ".join(f"{v:7.2f}" for v in quantiles(times[part])))
    base = quantiles(results["off"][CHILD_READY])[0]
    print(f"\n{'fork() to the child code, ms':34} {'median':>7} {'p90':>7} {'p99':>7} "
          f"{'max':>7}  median ratio to off")
    for name, times in results.items():
        median, p90, p99, worst = quantiles(times[CHILD_READY])
        print(f"{name:34} {median:7.2f} {p90:7.2f} {p99:7.2f} {worst:7.2f}  {median / base:.2f}")


if __name__ == "__main__":
    main()
