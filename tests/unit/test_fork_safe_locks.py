"""A forked child gets labotel's locks back unlocked, whatever other threads held at fork.

Only the forking thread lives on in the child. Forked while application threads counted
races in a storm, 4 of 40 children stopped for good at their first race report: a storm
thread had held the reporter's lock at that moment (and the relay's byte count, the
descriptor canary's lock, the event-loop registry's are held the same way, briefly).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_child_script(script: str, timeout: float = 90) -> dict:
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", script], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()  # none: the child hung, stderr says where
    return json.loads(lines[-1]) if lines else {"stderr": done.stderr[-3000:]}


STORM = r"""
import itertools, json, os, threading, time
import labotel
labotel.start(admin_address="", metrics_exporter="none", traces_exporter="none",
              race_detection=True, leak_detection=False)
counter = itertools.count()

def storm(tag):  # new races all the time: most are only counted, under the reporter's lock
    while True:
        i = next(counter) % 5000
        labotel.record_access(f"r-{i}", write=True, location=f"/srv/{tag}.py:{i}")

for tag in range(3):
    threading.Thread(target=storm, args=(tag,), daemon=True).start()
time.sleep(1)
hung = 0
for _ in range(40):
    pid = os.fork()
    if pid == 0:  # races of its own: two threads of the child, and the parent's resources
        helper = threading.Thread(target=lambda: [labotel.record_access(
            f"c-{i}", write=True, location=f"/srv/c1.py:{i}") for i in range(200)])
        helper.start()
        helper.join()
        for i in range(200):
            labotel.record_access(f"c-{i}", write=True, location=f"/srv/c2.py:{i}")
            labotel.record_access(f"r-{i}", write=True, location=f"/srv/c3.py:{i}")
        os._exit(0)
    deadline = time.monotonic() + 5
    while not os.waitpid(pid, os.WNOHANG)[0]:
        if time.monotonic() > deadline:
            hung += 1
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            break
        time.sleep(0.01)
print(json.dumps({"hung": hung}), flush=True)
os._exit(0)
"""


def test_children_forked_during_a_race_storm_report_their_own_races():
    assert run_child_script(STORM) == {"hung": 0}


# The start of a child script: fork_while_held(getters) forks while another thread holds
# each lock the getters return, as threads in the middle of their work at that moment.
# Signalled with raw locks: with the race detector's locks held, an Event's hooks would
# wait on them.
HOLDING = r"""
import _thread, os, threading
go, held, release = (_thread.allocate_lock() for _ in range(3))
go.acquire()
held.acquire()
release.acquire()

def _hold(getters):
    go.acquire()  # once start() has returned: it waits on an Event
    taken = [get() for get in getters]
    for lock in taken:
        lock.acquire()
    held.release()
    release.acquire()
    for lock in taken:
        lock.release()

def fork_while_held(getters):
    threading.Thread(target=_hold, args=(getters,), daemon=True).start()
    go.release()
    held.acquire()
    return os.fork()
"""


HELD = HOLDING + r"""
import _thread, faulthandler, json, logging, os, sys, threading, time
import labotel
from labotel import collector_check, descriptors, log_relay
from labotel.detect import races, vectorclock
from labotel.hooks import layer, primitives
from labotel.profile import heap as heap_profile, stacks, symbols
from labotel.runtime import heap, loop_classes, loops, origins
monitor = labotel.start(admin_address="127.0.0.1:0", metrics_exporter="none",
                        traces_exporter="none", race_detection=True,
                        contention_profiling=True, leak_sample_interval=0.2)
by_name = {component.name: component for component in monitor.components}
# each lock looked up where labotel uses it, in the parent and again in the child
locks = {"reporter": lambda: monitor.reporter._lock,
         "relay's byte count": lambda: log_relay._bytes_lock,
         "canary": lambda: descriptors._lock, "loop registry": lambda: loops._lock,
         "loop classes": lambda: loop_classes._lock,
         "origins install": lambda: origins._install_lock,
         "origins loops": lambda: origins._loop_patcher_lock,
         "gc pauses": lambda: by_name["runtime.gc"].recorder._drain_lock,
         "symbols": lambda: symbols._lock, "goroutine ids": lambda: stacks._ids_lock,
         "profile waits": lambda: by_name["profile"]._waiting_lock,
         "hooks layer": lambda: layer._lock,
         "waiting lists": lambda: primitives._waiting_lists_lock,
         "clock registry": lambda: vectorclock._registry_mu,
         "accumulated clocks": lambda: vectorclock.AccumulatedClock._mu,
         "race detector": lambda: races._detector.mu,
         "contention recorder": lambda: by_name["profile.contention"].recorder._lock,
         "cpu profile slot": lambda: by_name["profile"].cpu._lock,
         "profile backends": lambda: by_name["profile"].backends._lock,
         "py-spy rates": lambda: by_name["profile"].backends.pyspy_rates._lock,
         "heap profile leases": lambda: heap_profile._lock,
         "event loop probe": lambda: by_name["runtime.asyncio"].probe._lock,
         "memory leak samples": lambda: by_name["detect.memory"]._lock,
         "thread leak samples": lambda: by_name["detect.threads"]._lock,
         "heap reading": lambda: heap._blocks._lock,
         "footprint": lambda: monitor.footprint._lock,
         "collector lookups": lambda: collector_check._lookups_lock,
         # the parent's server: the child only closes its copies of the sockets
         "debug server loop": lambda loop=monitor.server._loop: loop._lock,
         # an Event's lock: a profile request's thread at the edge of its wait
         "profile stopping": lambda: by_name["profile"].stopping._cond,
         # start()/shutdown()'s: the child's shutdown takes it
         "lifecycle": lambda: sys.modules["labotel.monitor"]._lock}
pid = fork_while_held(list(locks.values()))
if pid == 0:
    faulthandler.dump_traceback_later(20, exit=True)  # a hung child says where
    taken = [name for name, lock in locks.items() if not lock().acquire(False)]
    for name, lock in locks.items():
        if name not in taken:
            lock().release()
    def racy():
        labotel.record_access("shared", write=True, location="/srv/a.py:1")
    other = threading.Thread(target=racy)
    other.start()
    other.join()
    racy()  # a report: the reporter's lock, the relay's count
    log_relay.flush(5)
    labotel.shutdown()  # the canary's lock, the profile's waiting list, the loop registry
    print(json.dumps({"held_in_child": taken}), flush=True)
    os._exit(0)
os.waitpid(pid, 0)
release.release()
os._exit(0)
"""


def test_labotels_locks_held_by_another_thread_at_fork_are_free_in_the_child():
    """Each lock held by a parent thread at the fork; the child takes every one of them,
    reports a race and shuts labotel down."""
    assert run_child_script(HELD) == {"held_in_child": []}


RELAY = r"""
import json, logging, os, threading
import labotel
from labotel import log_relay
parent = os.getpid()
gate = threading.Event()
seen = []

class Handler(logging.Handler):
    def emit(self, record):
        if os.getpid() == parent:
            gate.wait(10)  # the parent's relay is stuck: its records stay queued
        seen.append((record.getMessage(), record.process))

logger = logging.getLogger("labotel.test_relay_fork")
logger.propagate = False
logger.addHandler(Handler())
labotel.start(admin_address="", metrics_exporter="none", traces_exporter="none",
              leak_detection=False)
for n in range(5):
    log_relay.log(logger, logging.WARNING, "parent record %d", n)
pid = os.fork()
if pid == 0:
    log_relay.log(logger, logging.WARNING, "child record")
    log_relay.flush(5)
    print(json.dumps({"seen": seen, "pid": os.getpid()}), flush=True)
    os._exit(0)
os.waitpid(pid, 0)
gate.set()
os._exit(0)
"""


def test_a_child_logs_its_own_records_not_those_its_parent_had_queued():
    outcome = run_child_script(RELAY)
    assert outcome["seen"] == [["child record", outcome["pid"]]], outcome


WATCH = HOLDING + r"""
import _thread, faulthandler, json, os, socket, threading
import labotel
from labotel import exporting, sdk
refusing = socket.socket()
refusing.bind(("127.0.0.1", 0))  # bound, never listening: every export is refused
port = refusing.getsockname()[1]
monitor = labotel.start(admin_address="", otlp_endpoint=f"http://127.0.0.1:{port}",
                        otlp_protocol="http/protobuf", leak_detection=False,
                        shutdown_timeout=2)
watches = [exporting.watch_of(e) for e in sdk._owned_exporters(monitor.providers)]
watches = [w for w in watches if w is not None]
# as an exporter thread at the edge of its back-off's wait
pid = fork_while_held([lambda w=w: w._stopped._cond for w in watches])
if pid == 0:
    faulthandler.dump_traceback_later(20, exit=True)  # a hung child says where
    labotel.shutdown()  # aborts each watch's question: sets its event
    print(json.dumps({"watches": len(watches), "shut_down": True}), flush=True)
    os._exit(0)
os.waitpid(pid, 0)
release.release()
os._exit(0)
"""


def test_a_child_shuts_down_when_an_export_backoff_was_at_its_waits_edge_at_fork():
    assert run_child_script(WATCH) == {"watches": 2, "shut_down": True}


HOOK_BEFORE_START = HOLDING + r"""
import json, faulthandler, time
import labotel
from labotel.detect import races
# a library imported after labotel, before start(), registers an after-fork hook that
# takes one of the application's locks (instrumented once labotel runs)
pool_lock = None
def reset_pool_in_child():
    with pool_lock:
        labotel.record_access("pool", write=True, location="/srv/pool.py:1")
os.register_at_fork(after_in_child=reset_pool_in_child)
labotel.start(admin_address="", metrics_exporter="none", traces_exporter="none",
              race_detection=True, leak_detection=False)
pool_lock = threading.Lock()
pid = fork_while_held([lambda: races._detector.mu])
if pid == 0:
    os._exit(0)  # the hook ran (or hung) before this line
release.release()
deadline = time.monotonic() + 10
while not os.waitpid(pid, os.WNOHANG)[0]:
    if time.monotonic() > deadline:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        print(json.dumps({"child": "hung in the application's after-fork hook"}))
        os._exit(0)
    time.sleep(0.01)
print(json.dumps({"child": "exited"}), flush=True)
os._exit(0)
"""


def test_an_after_fork_hook_registered_before_start_finds_labotels_locks_unlocked():
    """A child runs its after-fork hooks in the order they were registered: a hook of the
    application's registered after labotel's import but before start() ran before labotel
    unlocked its locks, and hung on the race detector's lock a parent thread held."""
    assert run_child_script(HOOK_BEFORE_START) == {"child": "exited"}
