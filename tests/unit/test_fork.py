"""The fork path of ``labotel.start()``: a forked child (``os.fork``, multiprocessing's fork
context) reports its own process, over its own debug server on the next free port."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import threading
import time
import urllib.request

import psutil
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client.parser import text_string_to_metric_families

import labotel
from labotel import sdk
from tests.fault_support import exit_status_within
from tests.integration.zero_code_support import free_port_run

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def read(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def report(port: int) -> dict:
    """What the process serving ``port`` says about itself."""
    base = f"http://127.0.0.1:{port}"
    goroutines = json.loads(read(base + "/admin/monitoring/goroutines"))
    info, threads = {}, None
    for family in text_string_to_metric_families(read(base + "/metrics")):
        if family.name == "target_info":
            info = family.samples[0].labels
        if family.name == "process_thread_count":
            (threads,) = [s.value for s in family.samples  # labotel owns this provider
                          if s.labels.get("otel_scope_name", "labotel") == "labotel"]
    return {"pid": goroutines["pid"], "target_info": info, "thread_count": threads,
            "thread_names": [t["name"] for t in goroutines["threads"]["items"]],
            "os_threads": psutil.Process().num_threads()}


def child_probe(port: int) -> dict:
    """Runs in the child: its own view plus what its labotel monitor holds."""
    monitor = labotel.monitor.current()
    own = report(port)
    own["self_pid"] = os.getpid()
    own["server_url"] = monitor.admin_url
    return own


def fork_and_probe(port: int) -> dict:
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 0
        try:
            payload = json.dumps(child_probe(port)).encode()
        except BaseException as error:  # report it to the parent instead
            payload, code = json.dumps({"error": repr(error)}).encode(), 1
        try:
            os.write(writer, payload)
        finally:
            os._exit(code)
    os.close(writer)
    chunks = []
    while chunk := os.read(reader, 65536):
        chunks.append(chunk)
    os.close(reader)
    _, status = os.waitpid(pid, 0)
    result = json.loads(b"".join(chunks))
    assert os.waitstatus_to_exitcode(status) == 0, result
    result["forked_pid"] = pid
    return result


def queue_probe(port: int, results) -> None:
    results.put(child_probe(port))


@pytest.fixture
def busy_parent():
    """Six sleeping threads in the parent: a child that reports its own figures shows
    far fewer threads than the parent it was forked from."""
    stop = threading.Event()
    threads = [threading.Thread(target=stop.wait, name=f"parent-only-{n}") for n in range(6)]
    for thread in threads:
        thread.start()
    yield
    stop.set()
    for thread in threads:
        thread.join()


def check_child(child: dict, parent: dict, port: int) -> None:
    assert child["pid"] == child["self_pid"] != parent["pid"]
    info = child["target_info"]
    assert info["process_pid"] == str(child["self_pid"])
    assert info["process_parent_pid"] == str(parent["pid"])
    assert info["service_instance_id"] != parent["target_info"]["service_instance_id"]
    assert info["service_name"] == parent["target_info"]["service_name"] == "fork-test"
    assert child["server_url"] == f"http://127.0.0.1:{port}"
    # every background thread labotel runs in the parent runs again in the child
    labotel_threads = {n for n in parent["thread_names"] if n.startswith("labotel-")}
    assert "labotel-debug-server" in labotel_threads
    assert labotel_threads <= set(child["thread_names"])
    assert not any(name.startswith("parent-only") for name in child["thread_names"])
    # the runtime collectors read the child's /proc entry, not the parent's
    assert abs(child["thread_count"] - child["os_threads"]) <= 2
    assert child["thread_count"] <= parent["thread_count"] - 5


def test_forked_child_reports_its_own_process(busy_parent):
    base = free_port_run(3)
    labotel.start(admin_address=f"127.0.0.1:{base}", service_name="fork-test")
    parent = report(base)
    assert parent["pid"] == os.getpid()

    first = fork_and_probe(base + 1)
    assert first["self_pid"] == first["forked_pid"]
    check_child(first, parent, base + 1)
    # the child closed only its copy of the listening socket: the parent still serves
    assert report(base)["target_info"] == parent["target_info"]
    # a second child takes the same worker port once the first has exited
    second = fork_and_probe(base + 1)
    check_child(second, parent, base + 1)
    assert second["target_info"]["service_instance_id"] != first["target_info"][
        "service_instance_id"]


def test_multiprocessing_fork_child_reports_its_own_process(busy_parent):
    base = free_port_run(3)
    labotel.start(admin_address=f"127.0.0.1:{base}", service_name="fork-test")
    parent = report(base)
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    process = context.Process(target=queue_probe, args=(base + 1, results))
    process.start()
    child = results.get(timeout=30)
    process.join(30)
    assert process.exitcode == 0
    assert child["self_pid"] == process.pid
    check_child(child, parent, base + 1)


def test_worker_server_can_be_turned_off():
    base = free_port_run(2)
    labotel.start(admin_address=f"127.0.0.1:{base}", admin_worker_ports=0)
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    process = context.Process(
        target=lambda: results.put(labotel.monitor.current().admin_url))
    process.start()
    assert results.get(timeout=30) is None
    process.join(30)
    assert process.exitcode == 0
    with pytest.raises(OSError):
        read(f"http://127.0.0.1:{base + 1}/healthz")


def test_worker_port_setting_is_validated():
    with pytest.raises(ValueError, match="admin_worker_ports"):
        labotel.start(admin_address="127.0.0.1:0", admin_worker_ports=-1)


def spawn_probe(base: int, results) -> None:
    """A spawned child starts labotel itself (as the launcher's sitecustomize would)."""
    monitor = labotel.start(admin_address=f"127.0.0.1:{base}", service_name="fork-test")
    try:
        results.put({"admin_url": monitor.admin_url, "report": report(base + 1)})
    finally:
        labotel.shutdown()


def test_spawned_child_of_a_labotel_process_takes_the_next_port():
    base = free_port_run(3)
    labotel.start(admin_address=f"127.0.0.1:{base}", service_name="fork-test")
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(target=spawn_probe, args=(base, results))
    process.start()
    child = results.get(timeout=60)
    process.join(30)
    assert process.exitcode == 0
    assert child["admin_url"] == f"http://127.0.0.1:{base + 1}"
    assert child["report"]["pid"] == process.pid
    assert child["report"]["target_info"]["process_pid"] == str(process.pid)
    assert report(base)["pid"] == os.getpid()


def test_port_taken_by_a_stranger_is_not_worked_around():
    base = free_port_run(2)
    with socket.socket() as stranger:  # not our parent: labotel must not move aside
        stranger.bind(("127.0.0.1", base))
        stranger.listen()
        monitor = labotel.start(admin_address=f"127.0.0.1:{base}")
        assert monitor.server is None


def test_heap_reading_in_progress_at_fork_does_not_block_the_child():
    """The leak sampler may hold a heap reading's lock while another thread forks."""
    import signal
    import time

    from labotel.runtime import heap

    heap._blocks._lock.acquire()  # as if a reading were under way in this thread
    try:
        pid = os.fork()
        if pid == 0:  # the child: its first reading must not wait on the parent's lock
            os._exit(0 if heap.small_object_blocks() > 0 else 1)
    finally:
        heap._blocks._lock.release()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child blocked on the parent's heap-reading lock")
    assert os.waitstatus_to_exitcode(status) == 0


def fork_while_a_thread_holds(locks: list, provider) -> int:
    """Fork while another thread of the parent holds ``locks`` (as a collection or a
    measurement does); they are still that thread's in the parent after fork. The child
    collects and shuts labotel down (``collect_and_shut_down_then_exit``); its pid."""
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        for lock in locks:
            lock.acquire()
        holding.set()
        release.wait(30)
        for lock in reversed(locks):
            lock.release()

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert holding.wait(10)
    try:
        pid = os.fork()
        if pid == 0:
            collect_and_shut_down_then_exit(provider)
        # still the holder's (an RLock has no locked() before 3.13)
        assert all(lock.locked() for lock in locks if hasattr(lock, "locked"))
    finally:
        release.set()
        holder.join(10)
    return pid


def collect_and_shut_down_then_exit(provider) -> None:
    """In a forked child: a collection, then labotel's shutdown, each within 5 s, else
    exit status 1 (the child hung)."""
    for step in (provider.force_flush, labotel.shutdown):
        thread = threading.Thread(target=step, daemon=True)
        thread.start()
        thread.join(5)
        if thread.is_alive():
            os._exit(1)
    os._exit(0)


def test_metric_locks_another_thread_held_at_fork_are_free_in_the_child():
    """The parent's reader holds each view's lock while it collects, and a thread recording
    a measurement holds its aggregation's: a child forked at that moment waited for ever
    at its next collection, and then at its exit (``shutdown()`` takes the collection lock
    that collection kept): a gunicorn worker that never ended on SIGTERM."""
    from labotel.compat import otel

    monitor = labotel.start(admin_address="", leak_detection=False)
    try:
        provider = monitor.providers.meter_provider
        provider.force_flush()  # a collection: every instrument has its views and aggregations
        collection = otel.collection_lock(provider)  # labotel's fork hook holds this one
        held = [lock for lock in otel.metric_locks(provider) if lock is not collection]
        assert len(held) > 10
        pid = fork_while_a_thread_holds(held, provider)
        assert exit_status_within(pid, 30) == 0
    finally:
        labotel.shutdown()


def test_a_collection_running_at_fork_is_not_waited_for_and_the_child_collects():
    """A parent thread is collecting (it holds the SDK's collection lock, as during a slow
    observable callback) when the application forks: fork does not wait for it (waiting
    gave up the GIL, and busy threads made fork's tail tens of ms), and the child, which
    copied that lock held, gets a fresh one: it collects and shuts down."""
    from labotel.compat import otel

    monitor = labotel.start(admin_address="", leak_detection=False)
    try:
        provider = monitor.providers.meter_provider
        collection = otel.collection_lock(provider)
        pid = fork_while_a_thread_holds([collection], provider)  # fork took nothing
        assert exit_status_within(pid, 30) == 0
        provider.force_flush()  # and the parent's own collections go on
    finally:
        labotel.shutdown()


def test_an_attribution_running_at_fork_lets_go_in_the_child():
    """The parent's attribution thread enters and leaves its events' locks between bursts:
    a child forked then hung for ever in labotel's after-fork hook, setting the copied
    stop event, inside ``os.fork()`` (a chaos scenario's forked probe, in CI, 2026-12-02).
    Here this thread holds those locks across the fork, as that thread would."""
    from labotel.detect.attribution import Attribution

    attribution = Attribution(seconds=60)
    held = [attribution._stop._cond, attribution._idle._cond, attribution._lease_lock]
    for lock in held:
        lock.acquire()
    try:
        pid = os.fork()
        if pid == 0:  # the child lets go, then samples as the detector would, in 5 s
            def let_go() -> None:
                attribution.forget()
                attribution.wait_idle(1.0)
                attribution.abandon()

            thread = threading.Thread(target=let_go, daemon=True)
            thread.start()
            thread.join(5)
            os._exit(1 if thread.is_alive() else 0)
    finally:
        for lock in reversed(held):
            lock.release()
    assert exit_status_within(pid, 20) == 0


class SlowExporter(MetricExporter):
    """A push exporter whose every export takes ``seconds`` and ends in ``result``."""

    def __init__(self, seconds: float, result: MetricExportResult = MetricExportResult.SUCCESS):
        super().__init__()
        self.seconds = seconds
        self.result = result
        self.in_flight = threading.Event()
        self.exports = 0

    def export(self, metrics_data, timeout_millis: float = 10_000, **kwargs):
        self.in_flight.set()
        time.sleep(self.seconds)
        self.in_flight.clear()
        self.exports += 1
        return self.result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs) -> None:
        pass


@pytest.mark.parametrize("export_seconds, result, waited", [
    (0.3, MetricExportResult.SUCCESS, True),
    (3.0, MetricExportResult.SUCCESS, False),
    (0.3, MetricExportResult.FAILURE, False),
], ids=["export-ends-soon", "export-stuck", "collector-failing"])
def test_fork_waits_for_an_export_in_flight_only_to_a_collector_that_answers(
        export_seconds, result, waited):
    """An OTLP/gRPC call in flight at fork time can leave gRPC's locks held in the child, so
    an export to a healthy collector is waited for; with the collector down (its last export
    failed) fork does not wait at all (it waited 0.5 s per fork: issue 11, item 7)."""
    threads_before = set(threading.enumerate())
    exporter = SlowExporter(export_seconds, result)
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=20)
    provider = MeterProvider(metric_readers=[reader])
    provider.get_meter("fork-test").create_counter("ticks").add(1)
    providers = sdk.Providers(provider, TracerProvider(), True, True, None)
    sdk.watch_exports(providers)
    # The reader exports from its constructor on: an export in flight as the watch goes
    # in ends unwatched. Only after a watched one has ended is the collector known to
    # answer (before that, fork waits exporting.FIRST_WAIT, 0.1 s, less than 0.3 s): a
    # loaded machine made the one in flight here the first watched export.
    known = exporter.exports + 2 if waited else 1
    try:
        deadline = time.monotonic() + 10
        while not (exporter.exports >= known and exporter.in_flight.is_set()):
            assert time.monotonic() < deadline, "no export after a watched one started"
            time.sleep(0.005)
        sdk.hold_collection_for_fork(providers)  # what os.fork() runs first
        try:
            # waited: the export ended and no new one can start while the lock is held;
            # stuck: not waited for past exporting.HEALTHY_WAIT (0.5 s of the 3 s);
            # failing: not waited for at all, though it ends soon
            assert exporter.in_flight.is_set() is not waited
        finally:
            sdk.release_collection_after_fork()
    finally:
        sdk.unwatch_exports(providers)
        provider.shutdown(timeout_millis=100)
        # the reader's thread ends with its export in flight (3 s when stuck): a later test
        # that counts threads must not see it
        deadline = time.monotonic() + 10
        while set(threading.enumerate()) - threads_before and time.monotonic() < deadline:
            time.sleep(0.01)
