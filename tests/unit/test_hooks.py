"""The shared primitive hooks: either subscriber alone or both, each primitive patched
once, and the application never hurt by them (errors, timeouts, foreign releases, fork,
shutdown while threads wait)."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import queue
import re
import sys
import threading
import time
from collections import Counter

import pytest

import labotel
from labotel import log_relay
from labotel.hooks import layer, patches
from labotel.hooks.primitives import InstrumentedLock, InstrumentedRLock
from tests.unit.race_support import races_on, run_all
from tests.unit.test_contention import (
    contended_program,
    samples,
    start,
    wait_on_event,
    waits_in,
)
from tests.unit.test_pprof_support import get

# An exception a hook lets into an application thread must fail the test, not warn.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")

ORIGINALS = (threading.Lock, threading.RLock, threading.Condition.wait, threading.Thread.join,
             threading.Event.set, queue.Queue.put, queue.Queue.__init__, queue.SimpleQueue,
             asyncio.BaseEventLoop.create_future, asyncio.BaseEventLoop.call_soon_threadsafe)


def current_primitives() -> tuple:
    return (threading.Lock, threading.RLock, threading.Condition.wait, threading.Thread.join,
            threading.Event.set, queue.Queue.put, queue.Queue.__init__, queue.SimpleQueue,
            asyncio.BaseEventLoop.create_future, asyncio.BaseEventLoop.call_soon_threadsafe)


def patched_names() -> Counter:
    """How often each attribute is patched (``asyncio.locks.Event.wait`` ...)."""
    return Counter((f"{owner.__module__}.{owner.__qualname__}" if isinstance(owner, type)
                    else owner.__name__, name)
                   for owner, name, _ in layer._patcher._saved)  # noqa: SLF001


def racy_bump(counter: list) -> None:
    for _ in range(3):
        labotel.record_access("hooks-test-counter", write=True)
        counter[0] += 1
        time.sleep(0.001)


def locked_bump(lock, counter: list) -> None:
    for _ in range(3):
        with lock:
            labotel.record_access("hooks-test-locked", write=True)
            counter[0] += 1


# -- either alone, or both --------------------------------------------------------------------
def test_contention_alone_installs_only_what_waits_need():
    start()
    try:
        assert threading.Lock is InstrumentedLock
        assert queue.Queue.put is ORIGINALS[5]  # an edges-only patch stays out
        assert type(queue.Queue().mutex) is not InstrumentedLock  # see queue_mutex
        assert asyncio.BaseEventLoop.create_future is not ORIGINALS[8]
        counter = [0]
        run_all(lambda: racy_bump(counter), lambda: racy_bump(counter))
        assert not labotel.detections("race_condition")  # no race detector, no report
    finally:
        labotel.shutdown()
    assert current_primitives() == ORIGINALS


def test_race_detection_alone_leaves_asyncio_futures_and_queue_mutexes_alone():
    labotel.shutdown()
    labotel.start(race_detection=True, admin_address="", runtime_metrics=False,
                  leak_detection=False, loop_block_detection=False)
    try:
        assert asyncio.BaseEventLoop.create_future is ORIGINALS[8]
        assert type(queue.Queue().mutex) is InstrumentedLock
        assert labotel.monitor.current().component("profile.contention") is None
    finally:
        labotel.shutdown()
    assert current_primitives() == ORIGINALS


def test_both_share_one_patch_per_primitive_and_both_work():
    monitor = start(race_detection=True)
    try:
        assert all(count == 1 for count in patched_names().values()), patched_names()
        assert type(queue.Queue().mutex) is InstrumentedLock  # the race detector needs it
        lock, counter = threading.Lock(), [0]
        run_all(lambda: locked_bump(lock, counter), lambda: locked_bump(lock, counter))
        assert counter[0] == 6 and not races_on("hooks-test-locked")
        run_all(lambda: racy_bump(counter), lambda: racy_bump(counter))
        assert races_on("hooks-test-counter")
        contended_program(threading.Lock(), waiting_threads=1)
        assert waits_in(monitor.component("profile.contention"), "mutex", "hold_lock")
    finally:
        labotel.shutdown()
    assert current_primitives() == ORIGINALS


def test_one_subscriber_leaving_keeps_the_hooks_for_the_other():
    start(race_detection=True)
    try:
        layer.unsubscribe("detect.races")  # the race detector goes first
        assert threading.Lock is InstrumentedLock and patched_names()
        contended_program(threading.Lock(), waiting_threads=1)
        profiler = labotel.monitor.current().component("profile.contention")
        assert waits_in(profiler, "mutex", "hold_lock")
    finally:
        labotel.shutdown()
    assert current_primitives() == ORIGINALS and not patched_names()


def test_a_second_subscriber_of_a_kind_is_refused():
    start()
    try:
        with pytest.raises(ValueError, match="profile.contention already receives"):
            layer.subscribe("another.profiler", waits=object())
    finally:
        labotel.shutdown()


# -- never hurt the application -------------------------------------------------------------------
class Broken:
    """A subscriber whose every hook raises."""

    def __init__(self) -> None:
        self.failures = 0

    def failed(self) -> None:
        self.failures += 1

    def __getattr__(self, name: str):
        def hook(*args, **kwargs):
            raise RuntimeError(f"injected failure in {name}")
        return hook


def test_failing_subscribers_are_counted_and_the_primitives_go_ahead():
    labotel.shutdown()
    edges, waits = Broken(), Broken()
    layer.subscribe("test.edges", edges=edges)
    layer.subscribe("test.waits", waits=waits)
    try:
        lock = threading.Lock()
        contended_program(lock, waiting_threads=1)  # acquire, release, waits: all raise
        event, items = threading.Event(), queue.SimpleQueue()
        threading.Thread(target=lambda: (time.sleep(0.02), event.set(), items.put(1))).start()
        assert event.wait(5) and items.get(timeout=5) == 1
        assert not lock.locked() and edges.failures > 0 and waits.failures > 0

        async def main() -> int:
            future = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_later(0.02, future.set_result, 7)
            return await future

        assert asyncio.run(main()) == 7
    finally:
        layer.unsubscribe("test.waits")
        layer.unsubscribe("test.edges")
    assert current_primitives() == ORIGINALS


def test_a_failing_profiler_is_counted_once_in_the_logs(caplog):
    monitor = start(admin_address="127.0.0.1:0")
    try:
        profiler = monitor.component("profile.contention")

        def broken(*args):
            raise RuntimeError("injected")

        for method in ("stack", "block", "blocked", "handed_off"):
            setattr(profiler.recorder, method, broken)
        with caplog.at_level(logging.ERROR, logger="labotel"):
            for _ in range(3):
                event = threading.Event()
                threading.Timer(0.01, event.set).start()
                assert event.wait(5)
        metrics = get(monitor.admin_url + "/metrics").text
        failures = re.search(r'labotel_internal_errors_total\{labotel_component='
                             r'"profile.contention"\} ([0-9.]+)', metrics)
        assert failures and float(failures.group(1)) >= 3  # every Event.wait at least
        assert log_relay.flush()  # the record is handled on labotel's relay thread
        assert len([r for r in caplog.records if "profile.contention failed" in
                    r.getMessage()]) == 1
    finally:
        labotel.shutdown()


def test_a_lock_released_by_another_thread():
    start()
    try:
        lock = threading.Lock()
        lock.acquire()
        got: list = []
        waiter = threading.Thread(target=lambda: got.append(lock.acquire(timeout=5)))
        waiter.start()
        time.sleep(0.05)
        threading.Thread(target=lock.release).start()  # legal for a Lock: not the owner
        waiter.join(5)
        assert got == [True]
        lock.release()
        with pytest.raises(RuntimeError):  # and releasing an unlocked lock is still an error
            lock.release()
    finally:
        labotel.shutdown()


def test_timeouts_and_argument_errors_behave_as_the_plain_lock():
    monitor = start()
    try:
        for make in (threading.Lock, threading.RLock):
            lock = make()
            holder = threading.Thread(target=lambda lk=lock: (lk.acquire(), time.sleep(0.3),
                                                              lk.release()))
            holder.start()
            time.sleep(0.05)
            started = time.monotonic()
            assert lock.acquire(timeout=0.1) is False
            assert 0.08 < time.monotonic() - started < 1
            assert lock.acquire(False) is False
            assert lock.acquire(True, 0) is False
            with pytest.raises(ValueError):
                lock.acquire(False, 1)
            with pytest.raises(ValueError):
                lock.acquire(True, -5)
            holder.join()
        profiler = monitor.component("profile.contention")
        timed_out = [s for s in samples(profiler, "block") if s[2] >= 0.08e9
                     and s[0][0] in ("threading.Lock.acquire", "threading.RLock.acquire")]
        assert len(timed_out) == 2  # the two 0.1 s timeouts blocked, the others never waited
        assert not samples(profiler, "mutex")  # nobody handed the lock to a timed-out waiter
    finally:
        labotel.shutdown()


def test_shutdown_while_threads_wait_leaves_them_working():
    start(race_detection=True)
    lock, cond, event = threading.Lock(), threading.Condition(), threading.Event()
    items, simple = queue.Queue(), queue.SimpleQueue()
    errors: list = []
    results: list = []
    previous_hook = threading.excepthook
    threading.excepthook = lambda args: errors.append(args.exc_value)
    lock.acquire()

    def waiting_for(name, action):
        def run():
            results.append((name, action()))
        return threading.Thread(target=run, name=name)

    def on_condition():
        with cond:
            return cond.wait(5)

    threads = [waiting_for("lock", lambda: lock.acquire(timeout=5)),
               waiting_for("condition", on_condition),
               waiting_for("event", lambda: event.wait(5)),
               waiting_for("queue", lambda: items.get(timeout=5)),
               waiting_for("simple", lambda: simple.get(timeout=5))]
    try:
        for thread in threads:
            thread.start()
        time.sleep(0.1)
        labotel.shutdown()  # undoes every patch while they wait in patched code
        assert current_primitives() == ORIGINALS
        lock.release()
        with cond:
            cond.notify_all()
        event.set()
        items.put("q")
        simple.put("s")
        for thread in threads:
            thread.join(5)
    finally:
        threading.excepthook = previous_hook
    assert not errors
    assert sorted(results) == [("condition", True), ("event", True), ("lock", True),
                               ("queue", "q"), ("simple", "s")]


def test_start_and_shutdown_while_threads_hammer_the_primitives():
    labotel.shutdown()
    stop = threading.Event()
    errors: list = []
    lock, totals = threading.Lock(), [0]

    def hammer():
        try:
            items = queue.Queue()
            while not stop.is_set():
                local = threading.Lock()  # plain or instrumented, whichever is current
                with lock, local:
                    totals[0] += 1
                items.put(1)
                items.get()
                threading.Event().wait(0.0005)
        except BaseException as error:  # noqa: BLE001 - the test reports it
            errors.append(error)

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        for round_number in range(10):
            start(race_detection=round_number % 2 == 0)
            time.sleep(0.02)
            labotel.shutdown()
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert not errors and totals[0] > 0
    assert current_primitives() == ORIGINALS


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_while_a_lock_is_held_and_waited_for():
    monitor = start()
    wait_on_event()  # a wait of the parent's, which the child's profile must not show
    lock = threading.Lock()
    lock.acquire()
    waiter = threading.Thread(target=lambda: lock.acquire(timeout=5) and lock.release())
    waiter.start()
    deadline = time.monotonic() + 5
    while not lock._waiting and time.monotonic() < deadline:  # noqa: SLF001
        time.sleep(0.001)
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only this thread exists; the waiter's mark is the parent's
        code = 0
        try:
            profiler = labotel.monitor.current().component("profile.contention")
            inherited = [s for s in samples(profiler, "block")
                         if "tests.unit.test_contention.wait_on_event" in s[0]]
            lock.release()  # the holder is gone: release it from here
            with lock:
                pass
            contended_program(threading.Lock(), waiting_threads=1)
            report = {"inherited": inherited, "stale_marks": len(lock._waiting or []),
                      "holders": [s[0][1] for s in samples(profiler, "mutex")]}
        except BaseException as error:  # noqa: BLE001 - reported to the parent
            report, code = {"error": repr(error)}, 1
        os.write(writer, json.dumps(report).encode())
        os._exit(code)
    os.close(writer)
    with os.fdopen(reader) as pipe:
        report = json.loads(pipe.read())
    os.waitpid(pid, 0)
    lock.release()
    waiter.join(5)
    labotel.shutdown()
    assert "error" not in report, report
    assert report["inherited"] == []  # the parent's waits are not the child's
    assert report["stale_marks"] == 0
    assert "tests.unit.test_contention.hold_lock" in report["holders"]
    assert isinstance(monitor, labotel.Monitor)


def test_instrumented_rlock_keeps_the_rlock_api():
    start()
    try:
        rlock = threading.RLock()
        assert isinstance(rlock, InstrumentedRLock)
        with rlock:
            with rlock:
                assert rlock._is_owned()  # noqa: SLF001
                assert rlock._recursion_count() == 2  # noqa: SLF001
        cond = threading.Condition(rlock)
        with cond:
            assert not cond.wait(0.01)
        assert not rlock._is_owned()  # noqa: SLF001
    finally:
        labotel.shutdown()


def test_hooked_asyncio_methods_still_look_like_coroutine_functions():
    start()
    try:
        assert asyncio.Lock.acquire.__name__ == "acquire"
        if sys.version_info >= (3, 12):  # inspect.markcoroutinefunction came in 3.12
            assert inspect.iscoroutinefunction(asyncio.Lock.acquire)
            assert inspect.iscoroutinefunction(asyncio.Queue.get)
    finally:
        labotel.shutdown()


def test_patch_groups_name_the_subscribers_they_serve():
    for name, needs, *_ in patches.GROUPS + patches.LOOP_GROUPS:
        assert needs and needs <= {patches.EDGES, patches.WAITS}, name


class RecordsEveryWait:
    """A wait subscriber keeping every wait (rate 1 ns), recording nothing."""

    rate_ns = 1

    def stack(self, *args):
        return "a key"

    def failed(self) -> None:
        pass

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def test_an_acquire_interrupted_right_after_it_took_the_lock_leaves_it_unlent(monkeypatch):
    """The lock names the thread while labotel's bookkeeping holds it (a finalizer run
    there gets it lent); a signal handler's exception in that bookkeeping (here: at the
    clock read right after a contended acquire) must not leave that mark, or a later
    acquire by that thread, with the lock held elsewhere, would be lent too."""
    from labotel.hooks import active

    labotel.shutdown()
    clock, countdown = active.clock, [0]

    def interrupted_clock() -> int:
        if countdown[0] and threading.current_thread() is threading.main_thread():
            countdown[0] -= 1
            if not countdown[0]:  # the read right after the lock was taken
                raise KeyboardInterrupt  # as a pending Ctrl-C at this call's check point
        return clock()

    layer.subscribe("test.waits", waits=RecordsEveryWait())
    monkeypatch.setattr(active, "clock", interrupted_clock)
    try:
        lock = threading.Lock()
        holding, release = threading.Event(), threading.Event()

        def hold() -> None:
            with lock:
                holding.set()
                release.wait(5)

        holder = threading.Thread(target=hold)
        holder.start()
        holding.wait(5)
        threading.Timer(0.05, release.set).start()
        countdown[0] = 2  # the wait's start, then its end
        with pytest.raises(KeyboardInterrupt):
            with lock:  # contended: the clock is read again once the lock is ours
                pass
        assert countdown[0] == 0
        holder.join(5)
        assert not lock.locked()  # the interrupted acquire let the lock go
        holding.clear()
        release.clear()
        holder = threading.Thread(target=hold)
        holder.start()
        holding.wait(5)
        assert lock.acquire(timeout=0.2) is False  # held by the holder: not lent to us
        release.set()
        holder.join(5)
    finally:
        layer.unsubscribe("test.waits")
    assert current_primitives() == ORIGINALS


_AT_THE_START_OF = r"""
import json, sys, threading
import labotel
from labotel.hooks.primitives import InstrumentedLock
feature, method = sys.argv[1], sys.argv[2]
labotel.start(admin_address="", metrics_exporter="none", traces_exporter="none",
              leak_detection=False, runtime_metrics=False,
              contention_profiling=feature == "contention", race_detection=feature == "races")
lock = threading.Lock()
seen = []
code = getattr(InstrumentedLock, method).__code__

def tracer(frame, event, arg):  # its call event runs where a handler would: the start
    if event == "call" and frame.f_code is code and not seen:
        seen.append(lock.acquire(False))
        if seen[-1]:
            lock.release()
        with lock:
            seen.append("handler")
    return None

def app():
    sys.settrace(tracer)
    try:
        if method == "__exit__":
            with lock:
                pass
        else:
            lock.acquire()
            lock.release()
    finally:
        sys.settrace(None)

worker = threading.Thread(target=app, daemon=True)
worker.start()
worker.join(5)
hung = worker.is_alive()
free = not lock.locked()
works = lock.acquire(False)
print(json.dumps({"hung": hung, "seen": seen, "free": free, "works": works}), flush=True)
"""


@pytest.mark.parametrize("feature", ["contention", "races"])
@pytest.mark.parametrize("method", ["__exit__", "release"])
def test_a_handler_at_the_start_of_the_release_gets_the_lock_its_thread_still_holds(
        feature, method):
    """Every Python function has a check point at its start, where a signal handler (or,
    from 3.12, a garbage collection's finalizer) runs: there labotel's ``__exit__`` still
    holds the lock, where the C lock's has no such point. A handler taking that lock waited
    for its own thread for ever; now it is lent the lock. A trace function's call event
    runs at that same place, on demand (in a child process: on 3.12 a trace function
    leaves the interpreter instrumented, which kept a later test's garbage alive)."""
    import subprocess

    done = subprocess.run([sys.executable, "-c", _AT_THE_START_OF, feature, method],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.splitlines()[-1])
    assert not seen["hung"], "the handler waited for its own thread"
    # lent at once, given back; the block let go; the lock works as before
    assert seen == {"hung": False, "seen": [True, "handler"], "free": True, "works": True}


def test_the_holders_own_block_still_cannot_take_its_lock():
    """Lending is for labotel's own methods only: the application's block, and what it
    calls, still finds its own lock taken (a non-reentrant lock's usual check)."""
    start(race_detection=True)
    try:
        lock = threading.Lock()

        def nested() -> tuple:
            return lock.acquire(False), lock.acquire(timeout=0.05)

        with lock:
            assert lock.acquire(False) is False
            assert nested() == (False, False)
        assert not lock.locked()
    finally:
        labotel.shutdown()


@pytest.mark.parametrize("feature", ["contention", "races"])
def test_ctrl_c_as_a_condition_wait_takes_its_lock_back_leaves_it_held_for_the_block(
        feature, monkeypatch):
    """Condition.wait() takes its lock back in a ``finally`` and returns into the block,
    whose exit lets the lock go. A Ctrl-C once the lock was taken back (here: in the race
    detector's join, or in the wait's timing) made labotel's acquire let it go, and the
    block's exit then released it again: the application saw ``RuntimeError: release
    unlocked lock`` instead of its KeyboardInterrupt (or released another thread's hold)."""
    from labotel.hooks import primitives

    if feature == "races":
        start(contention_profiling=False, race_detection=True)
    else:
        start()
    try:
        cond = threading.Condition(threading.Lock())
        armed = [True]

        def restoring() -> bool:
            return any(frame.f_code.co_name == "_acquire_restore"
                       for frame in map(sys._getframe, range(2, 8)))

        if feature == "races":
            edges = primitives._edges
            join = type(edges).join

            def interrupted_join(self, snapshot):
                if armed[0] and restoring():
                    armed[0] = False
                    raise KeyboardInterrupt  # as a Ctrl-C at this call's check point
                return join(self, snapshot)
            monkeypatch.setattr(type(edges), "join", interrupted_join)
            with cond:  # a first block, so that the lock has a releaser's clock to join
                pass
        else:
            from labotel.hooks import active
            clock = active.clock
            reads = [0]

            def interrupted_clock() -> int:
                if armed[0] and restoring():
                    reads[0] += 1
                    if reads[0] == 2:  # the wait's end: the lock was taken back
                        armed[0] = False
                        raise KeyboardInterrupt
                return clock()
            monkeypatch.setattr(active, "clock", interrupted_clock)

        def hold_then_notify() -> None:
            with cond:
                cond.notify()
                time.sleep(0.05)  # the waiter's taking back contends

        with pytest.raises(KeyboardInterrupt):
            with cond:
                threading.Thread(target=hold_then_notify).start()
                cond.wait(5)
        assert not armed[0], "the interruption never came"
        assert not cond._lock.locked()  # let go once, by the block's exit
    finally:
        labotel.shutdown()
