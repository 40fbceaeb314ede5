"""start()/shutdown() from several threads, in any order: the state left is that of the
last call, whole (issue 11, item 4)."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import threading
import time

import pytest
from bench.harm import consistent_state

import labotel
from tests.chaos.support import call_with_deadline
from tests.fault_support import exit_status_within, silent_collector
from tests.metrics_helpers import fetch


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def assert_whole(port: int) -> None:
    state = consistent_state()
    assert state["consistent"], state
    if state["running"]:  # the debug server of the last start() holds the port
        status, _, _ = fetch(f"http://127.0.0.1:{port}/healthz")
        assert status == 200
    else:
        with socket.socket() as probe:  # free again, as the debug server binds it
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", port))
            probe.listen()


def test_start_overlapping_shutdown_leaves_a_whole_monitor():
    """The issue's repro: start() while another thread's shutdown() is stopping the old
    monitor left one reporting "enabled" with no patches, detector or server (10 of 10)."""
    port = free_port()
    options = {"admin_address": f"127.0.0.1:{port}", "race_detection": True,
               "leak_detection": False}
    for _ in range(10):
        labotel.start(**options)
        stopper = threading.Thread(target=labotel.shutdown)
        stopper.start()
        time.sleep(0.001)
        call_with_deadline(lambda: labotel.start(**options), 30)
        stopper.join(30)
        assert_whole(port)
        labotel.shutdown()
        assert_whole(port)


def test_start_shutdown_storm_from_many_threads():
    port = free_port()
    options = {"admin_address": f"127.0.0.1:{port}", "race_detection": True,
               "leak_sample_interval": 0.05}
    errors: list[BaseException] = []

    def storm(seed: int) -> None:
        chance = random.Random(seed)
        for _ in range(15):
            try:
                if chance.random() < 0.5:
                    labotel.start(**options)
                else:
                    labotel.shutdown()
            except BaseException as error:  # noqa: BLE001 - must not happen
                errors.append(error)
            time.sleep(chance.uniform(0, 0.02))

    threads = [threading.Thread(target=storm, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    call_with_deadline(lambda: [thread.join() for thread in threads], 120)
    assert errors == []
    assert_whole(port)
    labotel.start(**options)  # the last call decides
    assert_whole(port)
    assert consistent_state()["running"]
    labotel.shutdown()
    assert_whole(port)
    assert not consistent_state()["running"]


# forking a threaded process is what a pre-fork server does; 3.12+ warns at every fork
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_start_shutdown_and_fork_storm_against_a_silent_collector(monkeypatch, protocol):
    """The collector accepts connections and never answers, the exports to it wait out
    the exporter's timeout, and every shutdown() gives up on them: start()/shutdown() from
    three threads while a fourth forks every 20 ms. No call raises or hangs, every child
    gets through its after-fork hooks and exits, and the last call's state is left, with no
    labotel thread behind it."""
    with silent_collector(monkeypatch, protocol, timeout=3):
        port = free_port()
        options = {"admin_address": f"127.0.0.1:{port}", "race_detection": True,
                   "leak_detection": False, "shutdown_timeout": 1.0,
                   "metric_export_interval": 0.2}
        errors: list[BaseException] = []
        slowest: list[float] = []
        children: list[int] = []
        storming = threading.Event()

        def storm(seed: int) -> None:
            chance = random.Random(seed)
            for _ in range(6):
                began = time.monotonic()
                try:
                    if chance.random() < 0.5:
                        labotel.start(**options)
                        labotel.record_access("storm", write=True)  # something to export
                    else:
                        labotel.shutdown()
                except BaseException as error:  # noqa: BLE001 - must not happen
                    errors.append(error)
                slowest.append(time.monotonic() - began)
                time.sleep(chance.uniform(0, 0.3))

        def forker() -> None:
            while storming.is_set():
                pid = os.fork()
                if pid == 0:
                    os._exit(0)  # the after-fork hooks have run by now
                children.append(pid)
                time.sleep(0.02)

        storming.set()
        fork_thread = threading.Thread(target=forker)
        fork_thread.start()
        threads = [threading.Thread(target=storm, args=(seed,)) for seed in range(3)]
        for thread in threads:
            thread.start()
        try:
            call_with_deadline(lambda: [thread.join() for thread in threads], 120)
        finally:
            storming.clear()
            fork_thread.join(10)
        assert errors == []
        # a liveness bound: a call may wait for the other threads' shutdowns (~1 s each)
        assert max(slowest) < 10, sorted(slowest)
        # and some shutdown did wait on the silent collector (~1 s): the case is the one meant
        assert max(slowest) >= 0.5, sorted(slowest)
        for pid in children:
            assert exit_status_within(pid, 10) == 0
        assert len(children) > 10
        labotel.start(**options)  # the last call decides
        assert_whole(port)
        assert consistent_state()["running"]
        labotel.shutdown()
        assert_whole(port)
        for thread in threading.enumerate():
            if thread.name.startswith(("labotel", "Otel")):
                thread.join(2.0)
                assert not thread.is_alive(), thread.name



UVLOOP_IMPORTED_IN_A_STORM = r"""
import asyncio, json, sys, threading, time
import labotel
from labotel.runtime import loop_classes

WRAPPED = ("run_forever", "call_soon_threadsafe", "create_future")
options = {"admin_address": "", "race_detection": True, "contention_profiling": True,
           "leak_detection": False, "metrics_exporter": "none", "traces_exporter": "none"}
errors = []
stop = threading.Event()

started = []  # polled: the import comes once the storm is under way

def storm():
    while not stop.is_set():
        try:
            labotel.start(**options)
            started.append(True)
            time.sleep(0.001)
            labotel.shutdown()
        except Exception as error:
            errors.append(repr(error))

def import_and_run():
    while not started:
        time.sleep(0.01)
    time.sleep(0.05)
    import uvloop
    for _ in range(20):  # loops run by hand while the hooks come and go
        loop = uvloop.new_event_loop()
        loop.run_until_complete(asyncio.sleep(0.005))
        loop.close()

threads = [threading.Thread(target=storm) for _ in range(3)]
importer = threading.Thread(target=import_and_run)
for thread in threads + [importer]:
    thread.start()
importer.join(60)
time.sleep(0.3)
stop.set()
for thread in threads:
    thread.join(60)
labotel.shutdown()
import uvloop
left = [name for name in WRAPPED if name in vars(uvloop.Loop)]
labotel.start(**options)
on = sorted(name for name in WRAPPED if name in vars(uvloop.Loop))
labotel.shutdown()
print(json.dumps({"errors": errors, "left_after_storm": left, "on_again": on,
                  "left_at_the_end": [n for n in WRAPPED if n in vars(uvloop.Loop)],
                  "watches": sys.meta_path.count(loop_classes._FINDER)}))
"""


def test_uvloop_imported_during_a_start_shutdown_storm_is_left_as_the_last_call_says():
    """The import's hand-over of uvloop's class races starts and shutdowns on three threads:
    after the last shutdown nothing of labotel stays on the class, and a start wraps it; the
    import watch was put on sys.meta_path once."""
    result = call_with_deadline(lambda: subprocess.run(
        [sys.executable, "-c", UVLOOP_IMPORTED_IN_A_STORM], capture_output=True, text=True,
        timeout=120), 150)
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout.splitlines()[-1])
    assert outcome == {"errors": [], "left_after_storm": [],
                       "on_again": ["call_soon_threadsafe", "create_future", "run_forever"],
                       "left_at_the_end": [], "watches": 1}, outcome
