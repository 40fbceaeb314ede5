"""Where leak attribution's walk starts: the application's threads and tasks before its
modules, labotel's own threads not at all.

Under a tracemalloc that was already running (the application's own, or heap profiling),
every allocation of the walk is traced and its budget covered about 2 000 objects; in a
process with many modules (a test suite) a breadth-first walk from threads and modules
together never reached a list handed to a leaking thread, and the leak was reported as
native growth. The visit budget stands in for that here, so the tests do not depend on
the machine's speed.
"""

from __future__ import annotations

import sys
import threading
import types

import pytest

import labotel
from labotel.detect import census

MODULES = 60  # application modules...
GLOBALS = 100  # ...each with this many globals, walked before anything deeper


@pytest.fixture
def big_application(monkeypatch):
    """``MODULES`` application modules (their files under tests/) of ``GLOBALS`` small
    dicts each: their first level alone is more than the visit budget below."""
    for index in range(MODULES):
        module = types.ModuleType(f"big_app_{index}")
        module.__file__ = f"{__file__[:-3]}_big_app_{index}.py"
        for name in range(GLOBALS):
            setattr(module, f"setting_{name}", {"value": name})
        monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(census, "MAX_VISITS", 2000)


def worker(stop: threading.Event, jobs: list) -> None:
    stop.wait(30)


@pytest.fixture
def running_worker():
    """A thread handed a list of 50 jobs (the list is kept nowhere else)."""
    stop = threading.Event()
    jobs = [{"job": n} for n in range(50)]
    thread = threading.Thread(target=worker, args=(stop, jobs), name="job-worker",
                              daemon=True)
    thread.start()
    yield thread, jobs
    stop.set()
    thread.join(5)


def found(walk: census.Census, container: object) -> census.Found | None:
    return next((f for f in walk.containers if f.container is container), None)


def test_a_list_handed_to_a_thread_is_found_before_the_modules_use_up_the_budget(
        big_application, running_worker):
    _, jobs = running_worker
    walk = census.take_census()
    assert walk.truncated  # the budget ran out in the modules...
    held = found(walk, jobs)
    assert held is not None  # ...after the thread's arguments were walked
    assert held.held_by() == "an argument of thread 'job-worker'"


def test_a_thread_kept_in_a_global_is_still_named_as_the_holder(running_worker):
    thread, jobs = running_worker
    module = types.ModuleType("app_with_a_thread_global")
    module.__file__ = f"{__file__[:-3]}_app_with_a_thread_global.py"
    module.the_worker = thread
    sys.modules[module.__name__] = module
    try:
        held = found(census.take_census(), jobs)
    finally:
        del sys.modules[module.__name__]
    assert held is not None
    assert held.held_by() == "an argument of thread 'job-worker'"


def test_labotels_own_threads_are_not_roots(running_worker):
    labotel.start(admin_address="", runtime_metrics=False, leak_detection=True,
                  leak_sample_interval=0.2)
    try:
        own = [t.name for t in threading.enumerate() if t.name.startswith("labotel-")]
        assert own  # the memory sampler, at least
        roots = [label for _, label in census._roots()[0]]
    finally:
        labotel.shutdown()
    assert ("thread", "job-worker") in roots
    assert not [name for kind, name in roots if name in own], roots
