"""Every interpreter difference labotel knows of, pinned on the version running the suite
(``.ci/run`` runs it on each version pyproject.toml claims)."""

from __future__ import annotations

import asyncio
import json
import logging
import pathlib
import re
import sys
import threading
import tomllib

import pytest

import labotel
from labotel.compat import python
from labotel.runtime import aio
from tests.metrics_helpers import fetch

ROOT = pathlib.Path(__file__).resolve().parents[2]
VERSION = sys.version_info[:2]


def test_this_interpreter_is_one_labotel_claims():
    assert VERSION in python.SUPPORTED, (
        f"Python {VERSION[0]}.{VERSION[1]} is not claimed: test it, then add it to "
        "labotel.compat.python.SUPPORTED, pyproject.toml's classifiers and the README")


def test_pyproject_and_readme_claim_exactly_the_supported_versions():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    claimed = sorted(tuple(int(part) for part in c.rsplit(" :: ", 1)[1].split("."))
                     for c in project["classifiers"]
                     if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c))
    assert claimed == sorted(python.SUPPORTED)
    names = [f"{major}.{minor}" for major, minor in python.SUPPORTED]
    assert project["requires-python"] == f">={names[0]}"
    quick = (ROOT / "README.md").read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert f"Python {', '.join(names[:-1])} or {names[-1]}" in quick


def test_lock_is_a_type_from_3_13():
    assert python.LOCK_IS_A_TYPE is (VERSION >= (3, 13))
    original = threading.Lock
    assert isinstance(original(), python.PLAIN_LOCK_TYPE)
    assert isinstance(threading.RLock(), python.PLAIN_RLOCK_TYPE)


def test_isinstance_against_threading_lock_holds_while_the_race_detector_patches_it(
        monitor_with_races_factory):
    """3.13 apps may write ``isinstance(x, threading.Lock)``: patching must not change it."""
    early_lock, early_rlock = threading.Lock(), threading.RLock()
    monitor_with_races_factory()
    assert threading.Lock is not python.PLAIN_LOCK_TYPE  # patched: the instrumented class
    new_lock, new_rlock = threading.Lock(), threading.RLock()
    for lock in (early_lock, new_lock):
        assert isinstance(lock, threading.Lock)
    for rlock in (early_rlock, new_rlock):
        assert not isinstance(rlock, threading.Lock)
    labotel.shutdown()
    if python.LOCK_IS_A_TYPE:  # the real type again
        assert threading.Lock is python.PLAIN_LOCK_TYPE
        assert isinstance(early_lock, threading.Lock)


def test_task_registries_per_version():
    registries = python.TASK_REGISTRIES
    assert registries is not None
    # 3.11: one weak set; 3.12+: eager tasks in their first step, then all the others
    assert len(registries) == (2 if VERSION >= (3, 12) else 1)


def _tasks_seen_from_another_thread(loop: asyncio.AbstractEventLoop) -> list[asyncio.Task]:
    seen: list[list[asyncio.Task]] = []
    reader = threading.Thread(target=lambda: seen.append(aio.all_tasks_by_loop().get(loop, [])))
    reader.start()
    reader.join()
    return seen[0]


def test_every_unfinished_task_is_found_from_another_thread(monitor):
    async def main():
        loop = asyncio.get_running_loop()
        await asyncio.sleep(0.05)  # loops.py registers the loop on its first iteration
        sleepers = [asyncio.create_task(asyncio.sleep(30), name=f"sleeper-{i}")
                    for i in range(3)]
        done = asyncio.create_task(asyncio.sleep(0))
        await done
        found = _tasks_seen_from_another_thread(loop)
        expected = asyncio.all_tasks(loop)
        for task in sleepers:
            task.cancel()
        return found, expected, sleepers, done

    found, expected, sleepers, done = asyncio.run(main())
    assert set(found) == expected and len(found) == len(expected) == 4  # + main
    assert set(sleepers) <= set(found) and done not in found


@pytest.mark.skipif(not hasattr(asyncio, "eager_task_factory"), reason="eager tasks: 3.12+")
def test_an_eager_task_in_its_first_step_is_found(monitor):
    seen_inside: list[list[asyncio.Task]] = []

    async def eager_body():
        me = asyncio.current_task()
        seen_inside.append([t for tasks in aio.all_tasks_by_loop().values() for t in tasks
                            if t is me])
        await asyncio.sleep(0)

    async def main():
        loop = asyncio.get_running_loop()
        await asyncio.sleep(0.05)
        loop.set_task_factory(asyncio.eager_task_factory)
        task = loop.create_task(eager_body())
        loop.set_task_factory(None)
        await task
        return task

    task = asyncio.run(main())
    assert seen_inside == [[task]]  # counted while it ran eagerly, before any suspension


def test_gil_answers_on_this_build():
    if not python.free_threaded_build():
        assert python.gil_enabled() is True
    if not hasattr(sys, "_is_gil_enabled"):  # before 3.13 every build has a GIL
        assert VERSION < (3, 13) and python.gil_enabled() is True


def test_without_the_gil_the_race_detector_refuses_and_the_rest_runs(monkeypatch, caplog):
    """What a free-threaded 3.13t would do: simulated through the capability module."""
    monkeypatch.setattr(python, "gil_enabled", lambda: False)
    labotel.shutdown()
    lock_factory = threading.Lock
    with caplog.at_level(logging.WARNING, logger="labotel"):
        monitor = labotel.start(admin_address="127.0.0.1:0", race_detection=True,
                                service_name="free-threaded")
    refusals = [r for r in caplog.records if "detect.races is off" in r.getMessage()]
    assert len(refusals) == 1 and "PYTHON_GIL=1" in refusals[0].getMessage()
    assert threading.Lock is lock_factory  # no lock was patched
    assert monitor.component("detect.races") is None
    assert monitor.component("runtime.process") is not None
    assert monitor.component("detect.threads") is not None

    _, _, body = fetch(monitor.admin_url + "/admin/monitoring/")
    components = json.loads(body)["components"]
    assert "detect.races" in components["unavailable"]
    assert "GIL" in components["unavailable"]["detect.races"]
    assert "runtime.process" in components["running"]
    _, _, body = fetch(monitor.admin_url + "/admin/monitoring/races")
    races = json.loads(body)
    assert races["enabled"] is False and "free-threaded" in races["hint"]

    def racy():
        labotel.record_access("counter", write=True)

    threads = [threading.Thread(target=racy) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert labotel.detections("race_condition") == []
    status, _, _ = fetch(monitor.admin_url + "/metrics")
    assert status == 200


def test_with_the_gil_the_race_detector_starts(monitor_with_races_factory):
    monitor = monitor_with_races_factory()
    assert monitor.component("detect.races") is not None
    assert monitor.unavailable == {}


@pytest.fixture
def monitor_with_races_factory():
    labotel.shutdown()
    yield lambda: labotel.start(admin_address="", race_detection=True, runtime_metrics=False,
                                leak_detection=False)
    labotel.shutdown()
