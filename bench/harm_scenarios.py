"""The scenarios ``bench/harm.py`` runs: each one something that must not hurt the app.

A scenario is a class registered with ``@register``. The harness (``bench/harm.py``) runs
the application workload with labotel off (baseline), then on with ``options()``, then off
again, and measures throughput, RSS, fork latency and shutdown time. A scenario adds:

- ``environment()``: variables set before ``labotel.start()`` (an unreachable collector);
- ``app_side(ctx)``: threads of application code that run in every phase (a race storm
  calls ``record_access`` with labotel off too, where it costs nothing);
- ``labotel_side(ctx)``: threads that run only while labotel is on (a start/shutdown storm,
  a client polling the debug server);
- ``figures(ctx)``: scenario-specific figures for the JSON result.

Application code reports every exception it sees through ``ctx.app_error()``: the harness
counts them, and the chaos tests (``tests/chaos/``) fail on any.

To add one (say the abandoned CPU profile of issue 11, item 6), write a class here (or in
a module that ``bench/harm.py`` imports) and decorate it with ``@register``::

    @register
    class AbandonedProfile(Scenario):
        name = "abandoned_profile"
        summary = "clients that drop ?seconds=20 CPU profiles after 1 s"

        def labotel_side(self, ctx):
            ctx.loop(lambda: ..., every=1.0)   # runs until the labotel phase ends
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import labotel

REGISTRY: dict[str, type[Scenario]] = {}


def register(cls: type[Scenario]) -> type[Scenario]:
    if cls.name in REGISTRY:
        raise ValueError(f"scenario {cls.name!r} registered twice")
    REGISTRY[cls.name] = cls
    return cls


class Context:
    """What a scenario's threads share with the harness: stop flags and error counting."""

    def __init__(self) -> None:
        self.app_stop = threading.Event()  # set when the whole run ends
        self.labotel_stop = threading.Event()  # set when the labotel phase ends
        self.errors: list[str] = []
        self.threads: list[threading.Thread] = []
        self.values: dict[str, Any] = {}
        self.monitor_url: str | None = None
        self._lock = threading.Lock()

    def app_error(self, error: BaseException) -> None:
        with self._lock:
            self.errors.append(f"{type(error).__name__}: {error}"[:300])

    def loop(self, body: Callable[[], None], *, every: float = 0.0, stop: threading.Event,
             name: str = "scenario") -> threading.Thread:
        """Run ``body`` every ``every`` seconds until ``stop``; exceptions are app errors."""

        def run() -> None:
            # paced with sleep and a flag read: waiting on the shared stop Event would take
            # its lock, an edge that orders every looping thread after the others
            while not stop.is_set():
                try:
                    body()
                except BaseException as error:  # noqa: BLE001 - the app must see none
                    self.app_error(error)
                if every:
                    time.sleep(every)

        thread = threading.Thread(target=run, name=f"app-{name}", daemon=True)
        thread.start()
        self.threads.append(thread)
        return thread


class Scenario:
    name = "scenario"
    summary = ""
    fork_every = 2.0  # seconds between probe forks (fork latency is measured on each)
    app_kept_bytes = 0  # memory the scenario's app code keeps on purpose (not labotel's)

    def environment(self) -> dict[str, str]:
        return {}

    def options(self) -> dict[str, Any]:
        return {}

    def app_side(self, ctx: Context) -> None:
        """Application threads that run in every phase (labotel on and off)."""

    def labotel_side(self, ctx: Context) -> None:
        """Threads that run only while labotel is on."""

    def figures(self, ctx: Context) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        """Release what the scenario opened (servers, sockets)."""


# -- collectors that do not answer -------------------------------------------------------
def refused_endpoint() -> str:
    """A loopback port nothing listens on: connections are refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


class HungCollector:
    """A TCP server that accepts every connection and never answers (nor reads)."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.connections: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="hung-collector", daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}"

    def _accept(self) -> None:
        self.listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                connection, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            self.connections.append(connection)  # held open, never read

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        for connection in self.connections:
            connection.close()
        self.listener.close()


def race_storm(ctx: Context, per_second: int, stop: threading.Event) -> None:
    """Two threads that race on a new resource, at a new pair of lines, ``per_second`` times
    a second: each race is a new detection (new fingerprint) and new shadow state."""
    counter = itertools.count()
    batch = max(1, per_second // 100)
    handoff: list[int] = []

    def writer() -> None:
        for _ in range(batch):
            i = next(counter)
            labotel.record_access(f"storm-{i}", write=True, location=f"/srv/storm.py:{i}")
            handoff.append(i)

    def reader() -> None:
        while handoff:
            i = handoff.pop(0)
            labotel.record_access(f"storm-{i}", location=f"/srv/storm_reader.py:{i}")

    ctx.loop(writer, every=0.01, stop=stop, name="race-writer")
    ctx.loop(reader, every=0.01, stop=stop, name="race-reader")


# -- the scenarios of issue 11 ------------------------------------------------------------
class _RefusingCollectorScenario(Scenario):
    """OTLP over gRPC to a port that refuses connections."""

    def __init__(self) -> None:
        self.endpoint = refused_endpoint()

    def environment(self) -> dict[str, str]:
        return {"OTEL_EXPORTER_OTLP_ENDPOINT": self.endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_TRACES_EXPORTER": "otlp"}


@register
class LeakAttribution(Scenario):
    name = "leak_attribution"
    summary = ("item 1: leak attribution keeps running (short windows) while the app "
               "builds tuples from generators and one thread grows a list")
    app_kept_bytes = 24 * 1024 * 1024  # the sawtooth leak's peak

    def options(self) -> dict[str, Any]:
        return {"leak_sample_interval": 0.2, "leak_window": 2, "memory_leak_min_rate": 1000,
                "leak_attribution_seconds": 2}

    def app_side(self, ctx: Context) -> None:
        kept: list[bytes] = []
        ctx.values["kept"] = kept

        def grow() -> None:  # 1 MB/s for 24 s, then let go: a leak that keeps returning
            if len(kept) >= 2400:
                kept.clear()
            kept.append(os.urandom(10_000))

        def build() -> None:
            for _ in range(100):
                if tuple(x for x in _numbers(200))[-1] != 199:
                    raise AssertionError("tuple(genexpr) built a wrong tuple")

        ctx.loop(grow, every=0.01, stop=ctx.app_stop, name="grow")
        for n in range(2):
            ctx.loop(build, stop=ctx.app_stop, name=f"tuples-{n}")

    def figures(self, ctx: Context) -> dict[str, Any]:
        return ctx.values.get("figures", {})


def _numbers(n: int):
    yield from range(n)


@register
class RaceStormDeadCollector(_RefusingCollectorScenario):
    name = "race_storm_dead_collector"
    summary = ("item 2: ~400 new races/s with race detection on and the OTLP collector's "
               "port refusing connections (gRPC)")

    def options(self) -> dict[str, Any]:
        return {"race_detection": True, "metric_export_interval": 1.0}

    def app_side(self, ctx: Context) -> None:
        race_storm(ctx, 400, ctx.app_stop)


class _HungCollectorScenario(Scenario):
    protocol = "grpc"

    def __init__(self) -> None:
        self.collector = HungCollector()

    def environment(self) -> dict[str, str]:
        return {"OTEL_EXPORTER_OTLP_ENDPOINT": self.collector.endpoint,
                "OTEL_EXPORTER_OTLP_PROTOCOL": self.protocol, "OTEL_TRACES_EXPORTER": "otlp"}

    def options(self) -> dict[str, Any]:
        return {"race_detection": True, "metric_export_interval": 1.0}

    def app_side(self, ctx: Context) -> None:
        race_storm(ctx, 50, ctx.app_stop)

    def figures(self, ctx: Context) -> dict[str, Any]:
        return {"collector_connections": len(self.collector.connections)}

    def close(self) -> None:
        self.collector.close()


@register
class HungCollectorGrpc(_HungCollectorScenario):
    name = "hung_collector_grpc"
    summary = "an OTLP/gRPC collector that accepts connections and never answers"
    protocol = "grpc"


@register
class HungCollectorHttp(_HungCollectorScenario):
    name = "hung_collector_http"
    summary = "an OTLP/HTTP collector that accepts connections and never answers"
    protocol = "http/protobuf"


class _Hostile:
    """Base for resources/tokens whose dunder methods misbehave."""

    mode = "raise"

    def __hash__(self) -> int:
        return self._misbehave(hash)

    def __eq__(self, other: object) -> bool:
        return bool(self._misbehave(lambda o: o is other))

    def __repr__(self) -> str:
        return str(self._misbehave(lambda o: f"<{self.mode} {id(o):x}>"))

    __str__ = __repr__

    def __len__(self) -> int:
        return int(self._misbehave(lambda o: 3))

    def _misbehave(self, honest: Callable[[Any], Any]) -> Any:
        mode = self.mode
        if mode == "raise":
            raise RuntimeError("hostile dunder")
        if mode == "reenter":  # calls back into labotel from inside labotel's call
            labotel.record_access("reentered", write=True)
            labotel.happens_before("reentered-token")
            labotel.detections()
            return honest(object())
        if mode == "slow":
            time.sleep(0.0005)
            return honest(self)
        return honest(random.random())  # inconsistent: a new answer every time


def hostile_objects() -> list[Any]:
    objects = []
    for mode in ("raise", "reenter", "slow", "inconsistent"):
        cls = type(f"Hostile_{mode}", (_Hostile,), {"mode": mode})
        objects.append(cls())

    class SameHash:  # the deadlock: proxies of objects with one hash, as resources
        def __hash__(self) -> int:
            return 42

    objects += [labotel.shared(SameHash(), f"same-hash-{n}") for n in "ab"]
    return objects


@register
class HostileResources(Scenario):
    name = "hostile_resources"
    summary = ("item 3: resources and tokens whose __hash__/__eq__/__repr__ raise, re-enter "
               "labotel, are slow or inconsistent; /admin/monitoring/races polled meanwhile")

    def options(self) -> dict[str, Any]:
        return {"race_detection": True}

    def app_side(self, ctx: Context) -> None:
        objects = hostile_objects()

        def use(thread: int) -> Callable[[], None]:
            def body() -> None:
                for obj in objects:
                    labotel.record_access(obj, write=bool(thread))
                    labotel.happens_before(obj)
                    labotel.happens_after(obj)
                    labotel.record_access("named", location=obj)
            return body

        for n in range(2):
            ctx.loop(use(n), every=0.002, stop=ctx.app_stop, name=f"hostile-{n}")

    def labotel_side(self, ctx: Context) -> None:
        poll_views(ctx, ["/admin/monitoring/races", "/admin/monitoring/detections"], every=0.2)

    def figures(self, ctx: Context) -> dict[str, Any]:
        return {"answers": ctx.values.get("view_status")}


# A client of labotel's debug server, run as a process of its own: a scraper is not the
# application. Polling from threads of the application's process took the GIL from the
# application's threads for the client's own work (building requests, parsing answers),
# and the labotel-off control ran without it, so that was counted as labotel's harm. At
# the lowest CPU priority, it uses the machine's idle CPU, not the application's core.
_POLLER = """
import json, os, sys, time, urllib.error, urllib.request
os.nice(19)
base, every, paths = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
answers = {}
try:
    while True:
        for path in paths:
            try:
                with urllib.request.urlopen(base + path, timeout=10) as response:
                    response.read()
                    status = response.status
            except urllib.error.HTTPError as error:
                status = error.code
            except OSError as error:  # the server is gone between two storm calls
                status = type(error).__name__
            answers[f"{path} {status}"] = answers.get(f"{path} {status}", 0) + 1
        time.sleep(every)
except KeyboardInterrupt:  # the harness's SIGINT: the labotel phase ended
    pass
print(json.dumps(answers), flush=True)
"""


def poll_views(ctx: Context, paths: list[str], every: float) -> None:
    """Poll ``paths`` of the debug server every ``every`` seconds (0: flat out) from a
    process of its own until the labotel phase ends; each answer's status is counted in
    ``ctx.values["view_status"]`` (a poller that fails counts as one answer that is not
    200)."""
    answers = ctx.values.setdefault("view_status", {})

    def run() -> None:
        if ctx.monitor_url is None:
            return
        poller = subprocess.Popen([sys.executable, "-c", _POLLER, ctx.monitor_url,
                                   str(every), *paths], stdout=subprocess.PIPE, text=True)
        while not ctx.labotel_stop.is_set():  # not Event.wait(): see Context.loop
            time.sleep(0.05)
        poller.send_signal(signal.SIGINT)
        try:
            out, _ = poller.communicate(timeout=30)
            counted = json.loads(out.splitlines()[-1])
        except (subprocess.TimeoutExpired, ValueError, IndexError) as error:
            poller.kill()
            poller.communicate()
            counted = {f"poller failed: {type(error).__name__}": 1}
        for key, count in counted.items():
            answers[key] = answers.get(key, 0) + count

    thread = threading.Thread(target=run, name="app-poll", daemon=True)
    thread.start()
    ctx.threads.append(thread)


@register
class StartShutdownStorm(Scenario):
    name = "start_shutdown_storm"
    summary = ("item 4: three threads call labotel.start()/shutdown() in random order "
               "(race detection on, a fixed debug port)")

    def __init__(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]

    def options(self) -> dict[str, Any]:
        return {"race_detection": True, "admin_address": f"127.0.0.1:{self.port}"}

    def labotel_side(self, ctx: Context) -> None:
        calls = ctx.values.setdefault("calls", {"start": 0, "shutdown": 0})

        def flip() -> None:
            if random.random() < 0.5:
                labotel.start(**self.options())
                calls["start"] += 1
            else:
                labotel.shutdown()
                calls["shutdown"] += 1

        for n in range(3):
            ctx.loop(flip, every=random.uniform(0.005, 0.05), stop=ctx.labotel_stop,
                     name=f"storm-{n}")

    def figures(self, ctx: Context) -> dict[str, Any]:
        return {"calls": ctx.values.get("calls"), "final": ctx.values.get("final_state")}


@register
class HugeResourceNames(Scenario):
    name = "huge_resource_names"
    summary = "item 5: 20 new 1 MB resource names a second, raced on by two threads"

    def options(self) -> dict[str, Any]:
        return {"race_detection": True}

    def app_side(self, ctx: Context) -> None:
        counter = itertools.count()
        filler = "x" * (1 << 20)

        def touch() -> None:
            name = f"{next(counter)}-{filler}"
            labotel.record_access(name, write=True)
            labotel.happens_before(name)

        ctx.loop(touch, every=0.05, stop=ctx.app_stop, name="names")


@register
class ForkStorm(_RefusingCollectorScenario):
    name = "fork_storm"
    summary = "item 7: a fork every 50 ms while the OTLP collector refuses connections"
    fork_every = 0.05

    def options(self) -> dict[str, Any]:
        return {"metric_export_interval": 0.5}


@register
class ScrapeStorm(Scenario):
    name = "scrape_storm"
    summary = ("item 9: every /admin/monitoring view and /metrics polled in a loop by two "
               "clients (processes of their own)")
    paths = ("/metrics", "/admin/monitoring/heap", "/admin/monitoring/goroutines",
             "/admin/monitoring/gc", "/admin/monitoring/detections", "/admin/monitoring/races")

    def labotel_side(self, ctx: Context) -> None:
        for _ in range(2):
            poll_views(ctx, list(self.paths), every=0.0)

    def figures(self, ctx: Context) -> dict[str, Any]:
        return {"answers": ctx.values.get("view_status")}


@contextlib.contextmanager
def environment(variables: dict[str, str]):
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
