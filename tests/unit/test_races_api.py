"""The race detector's API, report, endpoint, bounds, failure containment and patching."""

from __future__ import annotations

import _thread
import json
import logging
import os
import queue
import subprocess
import sys
import textwrap
import threading
import urllib.error
import urllib.request
from collections import defaultdict
from threading import Lock as ImportedLock  # bound by name before any start()

import pytest

import labotel
from labotel import log_relay
from labotel.compat import python
from labotel.config import Settings
from labotel.detect import races, vectorclock
from labotel.hooks import adopt
from labotel.hooks.primitives import InstrumentedLock
from labotel.runtime import origins
from tests.unit.race_support import races_on, run_all, spawn, start_detector, wait_until

_MODULE_LOCK = threading.Lock()  # created at import time, before any start()
_MODULE_LOCK_ALIAS = _MODULE_LOCK  # another name for it (`from state import LOCK`)
# what the import above bound: _thread.allocate_lock, or from 3.13 the lock type itself
_ORIGINAL_LOCK_FACTORY = ImportedLock


def test_lock_factory_imported_by_name_is_rebound():
    start_detector()
    lock = ImportedLock()
    assert type(lock) is InstrumentedLock

    def bump():
        with lock:
            labotel.record_access("imported-lock", write=True)

    run_all(bump, bump)
    assert not races_on("imported-lock")
    labotel.shutdown()
    assert ImportedLock is _ORIGINAL_LOCK_FACTORY
    assert ImportedLock is (python.PLAIN_LOCK_TYPE if python.LOCK_IS_A_TYPE
                            else _thread.allocate_lock)


def bump_under_module_lock() -> None:
    with _MODULE_LOCK:
        labotel.record_access("module-locked", write=True)


@pytest.mark.parametrize("adopt", [True, False])
def test_module_level_lock_created_before_start(adopt):
    start_detector(race_adopt_locks=adopt)
    run_all(bump_under_module_lock, bump_under_module_lock)
    if adopt:
        assert not races_on("module-locked")
        assert type(_MODULE_LOCK) is InstrumentedLock
    else:  # invisible to the detector: the correctly locked program looks racy
        assert races_on("module-locked")
    labotel.shutdown()
    assert type(_MODULE_LOCK) is type(_thread.allocate_lock())


class _HostileModule:
    @property
    def __dict__(self):
        raise RuntimeError("no namespace here")


def test_every_name_of_an_adopted_lock_gets_the_same_wrapper():
    """A lock records its holder on its wrapper and lends itself to that holder's
    handler or finalizer (hooks/primitives._lend): with one wrapper per global, a signal
    handler taking the lock under one name while the main thread let it go under the other
    waited for ever for its own thread."""
    start_detector()
    try:
        assert type(_MODULE_LOCK) is InstrumentedLock
        assert _MODULE_LOCK_ALIAS is _MODULE_LOCK
    finally:
        labotel.shutdown()
    assert type(_MODULE_LOCK_ALIAS) is type(_thread.allocate_lock())
    assert _MODULE_LOCK_ALIAS is _MODULE_LOCK


def test_adoption_resolves_the_path_only_of_modules_holding_a_lock_or_a_factory(monkeypatch):
    """Resolving a module's real path is a dozen syscalls, each a GIL hand-off that takes
    milliseconds while the application's threads are busy: asked of every module, it made
    start() take 26 s in a harm scenario. Only modules whose globals hold a plain lock or a
    lock factory are asked about (this one holds both); objects in sys.modules that are no
    module, or refuse their namespace, are passed over."""
    asked = []
    real = adopt.is_application_module
    monkeypatch.setattr(adopt, "is_application_module", lambda m: asked.append(m) or real(m))
    monkeypatch.setitem(sys.modules, "labotel_test_not_a_module", object())
    monkeypatch.setitem(sys.modules, "labotel_test_hostile_module", _HostileModule())
    start_detector()
    try:
        assert type(_MODULE_LOCK) is InstrumentedLock
        assert sys.modules[__name__] in asked
        modules = [module for module in list(sys.modules.values()) if module is not None]
        assert len(asked) < len(modules) / 4, (len(asked), len(modules))
    finally:
        labotel.shutdown()


def racy_pair(resource: str) -> None:
    """Write from a thread, then read here without any synchronization."""
    done = []

    def writer():
        labotel.record_access(resource, write=True)
        done.append(True)

    thread = spawn(writer, name="writer-thread")
    wait_until(done)
    labotel.record_access(resource)
    thread.join()


def test_disabled_detection_records_nothing_and_patches_nothing():
    labotel.shutdown()
    assert races.active() is None
    original_lock = threading.Lock
    labotel.start(admin_address="", runtime_metrics=False, leak_detection=False)
    assert threading.Lock is original_lock
    racy_pair("off")
    proxy = labotel.shared({"a": 1}, "off-proxy")
    proxy["b"] = 2
    assert dict(proxy.items()) == {"a": 1, "b": 2}
    assert labotel.detections("race_condition") == []


def test_env_var_turns_detection_on(monkeypatch):
    monkeypatch.setenv("LABOTEL_RACE_DETECTION", "1")
    labotel.shutdown()
    labotel.start(admin_address="", runtime_metrics=False, leak_detection=False)
    assert races.active() is not None
    racy_pair("from-env")
    assert races_on("from-env")


@pytest.mark.parametrize("option,value", [("race_max_resources", 0), ("race_max_threads", -1),
                                          ("race_stack_depth", "deep")])
def test_bad_options_name_the_option(option, value):
    with pytest.raises(ValueError, match=option):
        Settings.load({option: value})


def test_report_carries_both_accesses(caplog):
    start_detector()
    caplog.set_level(logging.WARNING, logger="labotel")
    racy_pair("user_cache")
    [detection] = races_on("user_cache")
    attrs = detection.attributes
    assert detection.kind == "race_condition"
    assert attrs["code.filepath"] == __file__
    assert attrs["labotel.race.previous.code.filepath"] == __file__
    assert attrs["code.function"] == "racy_pair"
    assert attrs["labotel.race.previous.code.function"] == "racy_pair.<locals>.writer"
    assert attrs["labotel.race.write"] is False
    assert attrs["labotel.race.previous.write"] is True
    assert attrs["thread.name"] == "MainThread"
    assert attrs["labotel.race.previous.thread.name"] == "writer-thread"
    assert attrs["thread.id"] != attrs["labotel.race.previous.thread.id"]
    assert attrs["labotel.race.elapsed_seconds"] >= 0
    assert attrs["code.lineno"] > attrs["labotel.race.previous.code.lineno"]
    current, previous = detection.stacks
    assert current.frames[0][2] == "racy_pair" and "test_report_carries" in current.frames[1][2]
    assert previous.frames[0][2].endswith("writer")
    assert log_relay.flush()  # the record is handled on labotel's relay thread
    message = caplog.records[-1].getMessage()
    for text in ("RACE CONDITION DETECTED", "Resource: user_cache", "Write: true",
                 "Write: false", "writer-thread", "ACTION REQUIRED"):
        assert text in message


def test_explicit_location_is_reported():
    start_detector()

    def writer():
        labotel.record_access("explicit", write=True, location="service.go:42")

    run_all(writer, lambda: labotel.record_access("explicit", location="service.go:55"))
    [detection] = races_on("explicit")
    linenos = {detection.attributes["code.lineno"],
               detection.attributes["labotel.race.previous.code.lineno"]}
    assert linenos == {42, 55}
    assert detection.attributes["code.filepath"] == "service.go"


def test_a_location_whose_line_is_not_ascii_digits_is_kept_as_written():
    """³ passes str.isdigit() and int() refuses it: the location is kept whole, and
    nothing raises in the application's threads."""
    start_detector()
    run_all(lambda: labotel.record_access("odd", write=True, location="a.py:³"),
            lambda: labotel.record_access("odd", location="b.py:٣"))
    [detection] = races_on("odd")
    paths = {detection.attributes["code.filepath"],
             detection.attributes["labotel.race.previous.code.filepath"]}
    assert paths == {"a.py:³", "b.py:٣"}


def test_a_location_pair_is_reported_once_then_counted():
    start_detector()
    for _ in range(3):
        racy_pair("repeated")  # the same two lines race three times
    [detection] = races_on("repeated")
    assert detection.count == 3
    assert races.active().stats()["races_seen"] == 3


def test_races_endpoint_lists_newest_first_and_validates(monitor_with_server):
    base = monitor_with_server.admin_url
    racy_pair("first")
    labotel.record_access("second", write=True)

    def late():
        labotel.record_access("second", write=True)

    run_all(late)  # ordered by start/join: not a race
    racy_other_lines("second-race")
    with urllib.request.urlopen(base + "/admin/monitoring/races") as response:
        body = json.load(response)
    assert body["enabled"] is True
    resources = [r["attributes"]["labotel.race.resource"] for r in body["races"]]
    assert resources == ["second-race", "first"]
    assert body["stats"]["resources_tracked"] >= 3
    with urllib.request.urlopen(base + "/admin/monitoring/races?limit=1") as response:
        assert json.load(response)["count"] == 1
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(base + "/admin/monitoring/races?limit=abc")
    assert error.value.code == 400 and b"limit" in error.value.read()


def racy_other_lines(resource: str) -> None:
    done = []

    def writer():
        labotel.record_access(resource, write=True)
        done.append(True)

    thread = spawn(writer)
    wait_until(done)
    labotel.record_access(resource, write=True)
    thread.join()


@pytest.fixture
def monitor_with_server():
    monitor = start_detector(admin_address="127.0.0.1:0")
    yield monitor
    labotel.shutdown()


def test_resource_memory_is_bounded_least_recent_forgotten_first():
    start_detector(race_max_resources=100)
    racy_pair("old")  # reported while still tracked
    for i in range(10_000):
        labotel.record_access(f"item-{i}", write=True)
    stats = races.active().stats()
    assert stats["resources_tracked"] == 100
    assert stats["resources_forgotten"] >= 9_900
    shadow = races.active().shadow.table
    assert "item-9999" in shadow and "item-0" not in shadow and "old" not in shadow


def test_exited_threads_are_bounded_and_forgotten_silently():
    start_detector(race_max_threads=8)
    done = []

    def early_writer():
        labotel.record_access("ancient", write=True)
        done.append(True)

    spawn(early_writer)
    wait_until(done)
    for _ in range(10):  # 100 threads exit after early_writer: it falls out of memory
        run_all(*[lambda: labotel.record_access("noise")] * 10)
    counts = vectorclock.thread_counts()
    assert counts["exited_threads_remembered"] <= 8
    labotel.record_access("ancient")  # unordered, but its partner is forgotten: no guess
    assert not races_on("ancient")
    main_vc = vectorclock.current().vc  # joined all 100, but keeps only remembered ones
    assert len(main_vc) <= 8 + counts["live_threads"] + 64


def test_failing_hook_never_breaks_locking(monkeypatch, caplog):
    start_detector()
    errors = []

    def broken(self, snapshot):
        errors.append(1)
        raise RuntimeError("hook bug")

    monkeypatch.setattr(vectorclock.ThreadState, "acquire", broken)
    lock = threading.Lock()
    counter = [0]

    def worker():
        for _ in range(200):
            with lock:
                counter[0] += 1

    run_all(worker, worker)
    assert counter[0] == 400
    assert errors
    assert log_relay.flush()
    failures = [r for r in caplog.records if "detect.races failed" in r.getMessage()]
    assert len(failures) == 1  # logged once, then only counted


def test_uninstall_restores_primitives_and_chains_with_origins():
    labotel.shutdown()
    originals = (threading.Lock, threading.RLock, threading.Thread.start, threading.Event.set,
                 queue.SimpleQueue, queue.Queue.put)
    monitor = start_detector()
    assert threading.Lock is InstrumentedLock
    # origins wrapped Thread.start first; ours wraps theirs, so creation sites still work.
    thread = threading.Thread(target=lambda: None)
    thread.start()
    thread.join()
    assert origins.thread_origin(thread)[0][0] == __file__
    assert monitor.component("detect.races") is not None
    labotel.shutdown()
    assert (threading.Lock, threading.RLock, threading.Thread.start, threading.Event.set,
            queue.SimpleQueue, queue.Queue.put) == originals
    assert races.active() is None


def test_locks_made_while_on_keep_working_after_shutdown():
    start_detector()
    lock, rlock, cond = threading.Lock(), threading.RLock(), threading.Condition()
    labotel.shutdown()
    with lock, rlock, rlock:
        assert lock.locked()
    with cond:
        cond.notify_all()
        assert cond.wait(timeout=0.01) is False


def test_shared_proxies_behave_like_their_targets():
    start_detector()
    data = labotel.shared({"a": 1}, "p-dict")
    assert isinstance(data, dict) and data["a"] == 1 and "a" in data and len(data) == 1
    data |= {"b": 2}
    assert isinstance(data, dict) and sorted(data) == ["a", "b"] and data == {"a": 1, "b": 2}
    items = labotel.shared([3, 1], "p-list")
    items += [2]
    items.sort()
    assert list(items) == [1, 2, 3] and items[-1] == 3 and isinstance(items, list)
    tags = labotel.shared({"x"}, "p-set")
    tags |= {"y"}
    assert tags == {"x", "y"} and "y" in tags
    counts = labotel.shared(defaultdict(int), "p-defaultdict")
    counts["k"] += 1
    assert counts["k"] == 1

    class Box:
        def __init__(self):
            self.value = 1

        def double(self):
            return self.value * 2

    box = labotel.shared(Box(), "p-object")
    box.value = 4
    assert box.double() == 8 and isinstance(box, Box) and repr(box).startswith("<")
    with pytest.raises(ValueError, match="immutable"):
        labotel.shared(5, "number")
    with pytest.raises(ValueError, match="name"):
        labotel.shared({}, "")


def test_defaultdict_lookups_count_as_writes():
    start_detector()
    counts = labotel.shared(defaultdict(int), "dd")
    run_all(lambda: counts["a"], lambda: counts["b"])  # both may insert
    assert races_on("dd")


def test_annotation_tokens_accept_unhashable_objects():
    start_detector()
    token = {"row": 42}  # unhashable: identity is the token
    done = []

    def writer():
        labotel.record_access("row-42", write=True)
        labotel.happens_before(token)
        done.append(True)

    thread = spawn(writer)
    wait_until(done)
    labotel.happens_after(token)
    labotel.record_access("row-42")
    thread.join()
    assert not races_on("row-42")


def test_fork_child_keeps_detecting():
    if not hasattr(os, "fork"):
        pytest.skip("no fork on this platform")
    script = textwrap.dedent("""
        import os, threading, labotel
        labotel.start(race_detection=True, admin_address="", runtime_metrics=False,
                      leak_detection=False)
        pid = os.fork()
        if pid == 0:
            lock = threading.Lock()
            def w():
                with lock:
                    labotel.record_access("child", write=True)
            t = threading.Thread(target=w); t.start()
            labotel.record_access("child", write=True)
            t.join()
            os._exit(0 if labotel.detections("race_condition") else 3)
        _, status = os.waitpid(pid, 0)
        print("child-exit", os.waitstatus_to_exitcode(status))
        labotel.shutdown()
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60)
    assert "child-exit 0" in result.stdout, result.stderr


def test_truth_of_a_shared_container_is_the_container_s_and_a_read():
    # list, dict and set have no __bool__ of their own: truth comes from __len__
    assert not labotel.shared([], "empty-list") and labotel.shared([1], "full-list")
    assert not labotel.shared({}, "empty-dict") and labotel.shared({"k": 1}, "full-dict")
    assert not labotel.shared(set(), "empty-set")

    class Plain:
        pass

    assert labotel.shared(Plain(), "plain")


def test_a_finalizer_run_by_gc_inside_the_detector_does_not_deadlock():
    """The GC runs finalizers on whichever thread allocates, also while it holds one of the
    detector's raw locks; one that synchronises (a gRPC channel's __del__ takes a Condition)
    hung the whole process there (seen in the suite on 3.13; this program hung on 3.11,
    3.12 and 3.13 alike)."""
    script = textwrap.dedent("""
        import faulthandler, gc, sys, threading, labotel
        faulthandler.dump_traceback_later(90, exit=True)  # a hang says where it hangs
        monitor = labotel.start(race_detection=True, admin_address="",
                                runtime_metrics=False, leak_detection=False)
        detector = monitor.component("detect.races").detector
        event, cond = threading.Event(), threading.Condition()
        # the finalizer's own Event: one that work() also sets can be collected while its
        # thread holds that Event's lock in set(), and the finalizer then waits on it
        # forever (a hazard of any finalizer taking a plain lock, labotel or not)
        finalizer_event = threading.Event()

        class Finalized:
            def __init__(self):
                self.cycle = self  # only the cyclic GC frees it, at any allocation
            def __del__(self):
                finalizer_event.set()
                with cond:
                    labotel.record_access("in-finalizer", write=True)
                labotel.happens_before("finalizer-token")

        def work():
            for i in range(2000):
                Finalized()
                event.set()
                event.wait()
                labotel.happens_before("token")
                labotel.happens_after("token")
                labotel.record_access("resource", write=True)
                if i % 100 == 0:
                    detector.stats()

        gc.set_threshold(1, 1, 1)
        threads = [threading.Thread(target=work) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        gc.set_threshold(700, 10, 10)
        labotel.shutdown()
        print("finished")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and "finished" in result.stdout, result.stderr[-2000:]
