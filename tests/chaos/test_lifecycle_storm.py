"""start()/shutdown() from several threads, in any order: the state left is that of the
last call, whole (issue 11, item 4)."""

from __future__ import annotations

import random
import socket
import threading
import time

from bench.harm import consistent_state

import labotel
from tests.chaos.support import call_with_deadline
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
