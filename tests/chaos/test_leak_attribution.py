"""Leak attribution never changes what the application computes (issue 11, item 1): it
asks the garbage collector for no object, so it never holds one another thread is still
building (a tuple being filled by ``tuple(genexpr)`` then failed with SystemError)."""

from __future__ import annotations

import gc
import threading
import time

import labotel
from tests.unit.test_leaks_memory import FAST, source_line, wait_for

LEAKED: list = []


def leak(stop: threading.Event) -> None:
    # ten every 10 ms: a round every 0.1 s fell between all of a shortened attribution's
    # few 0.05 s bursts now and then (twice in a row in one CI run: "site unknown")
    i = 0
    while not stop.is_set():
        for _ in range(10):
            LEAKED.append({"id": i, "payload": "y" * 1000 + str(i)})  # ATTRIBUTED LINE
            i += 1
        time.sleep(0.01)


def test_attribution_names_the_line_without_asking_the_collector_for_objects(monkeypatch):
    asked = []

    def forbidden(*args, **kwargs):
        asked.append(args)
        raise AssertionError("gc.get_objects()/get_referrers() expose unfinished objects")

    monkeypatch.setattr(gc, "get_objects", forbidden)
    monkeypatch.setattr(gc, "get_referrers", forbidden)
    labotel.shutdown()
    gc.collect()  # earlier tests' garbage, which the first check would free
    monitor = labotel.start(admin_address="", **FAST)
    stop = threading.Event()
    worker = threading.Thread(target=leak, args=(stop,), daemon=True)
    worker.start()
    try:
        assert wait_for(lambda: labotel.detections("memory_leak"), 60), (
            monitor.component("detect.memory").view()["memory_leak"]["last_attribution"])
    finally:
        stop.set()
        worker.join(5)
        LEAKED.clear()
    detection = labotel.detections("memory_leak")[0]
    assert asked == []
    assert detection.attributes["labotel.leak.site"] == source_line("# ATTRIBUTED LINE",
                                                                    __file__)
    container = detection.attributes["labotel.leak.containers"][0]
    assert "global 'LEAKED' of module tests.chaos.test_leak_attribution" in container
    assert any(t.startswith("dict +") for t in detection.attributes["labotel.leak.types"])
