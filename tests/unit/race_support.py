"""Helpers for the race-detector tests: a started detector and small thread utilities."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import labotel


def start_detector(**options: Any) -> labotel.Monitor:
    labotel.shutdown()
    settings = dict(race_detection=True, admin_address="", runtime_metrics=False,
                    leak_detection=False, service_name="race-test")
    settings.update(options)
    return labotel.start(**settings)


def races_on(resource: str) -> list[labotel.Detection]:
    return [d for d in labotel.detections("race_condition")
            if d.attributes["labotel.race.resource"] == resource]


def spawn(target: Callable[..., Any], *args: Any, name: str | None = None) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, name=name)
    thread.start()
    return thread


def run_all(*targets: Callable[[], Any]) -> None:
    """Start one thread per target, then join them all."""
    threads = [spawn(target) for target in targets]
    for thread in threads:
        thread.join()


def wait_until(flag: list, timeout: float = 5.0) -> None:
    """Poll a plain list (no synchronization labotel could see) until it is non-empty."""
    deadline = time.monotonic() + timeout
    while not flag:
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the other thread")
        time.sleep(0.002)


def write(resource: str) -> None:
    labotel.record_access(resource, write=True)


def read(resource: str) -> None:
    labotel.record_access(resource)
