"""An application's finalizer that takes a lock, run by a garbage collection that labotel's
own bookkeeping started while it held that lock on the same thread.

With the C lock, ``with lock: count += 1`` allocates nothing, so no collection (and no
finalizer) can start inside it. labotel's instrumented lock runs Python code while it holds
the raw lock (joining the last releaser's clock after the acquire, publishing this
thread's clock before the release, recording a contended acquire's wait): a collection
started there ran a ``__del__`` that takes the same lock, which then waited for ever for
its own thread (a pool's finalizer putting a connection back is the usual shape). The
lock is now lent to the finalizer while labotel's bookkeeping holds it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_APP = r"""
import faulthandler, gc, json, sys, threading, time
import labotel
race = sys.argv[1] == "race"
labotel.start(admin_address="", metrics_exporter="none", traces_exporter="none",
              leak_detection=False, race_detection=race, contention_profiling=not race,
              contention_profile_rate=1)
faulthandler.dump_traceback_later(20, exit=True)  # a hang fails the test, saying where
lock = threading.Lock()
count = 0
finalized = 0

class Pooled:
    def __init__(self):
        self.me = self  # a cycle: only a collection frees it
    def __del__(self):
        global count, finalized
        with lock:  # the finalizer takes the lock its thread may hold
            count -= 1
            finalized += 1

def contend():  # another thread holds the lock, so the acquire below waits (recorded)
    held = threading.Event()
    def hold():
        with lock:
            held.set()
            time.sleep(0.002)
    holder = threading.Thread(target=hold)
    holder.start()
    held.wait()
    return holder

gc.set_threshold(1)  # a collection at (almost) every allocation: inside labotel's too
for _ in range(300):
    holder = contend() if not race else None
    Pooled()  # garbage now: the next allocation collects it
    lock.acquire()  # (``with`` would allocate its bound __exit__ first, outside the lock)
    count += 1
    lock.release()
    if holder is not None:
        holder.join()
gc.set_threshold(700, 10, 10)
gc.collect()
print(json.dumps({"finalized": finalized, "count": count}), flush=True)
"""


@pytest.mark.parametrize("feature", ["race", "contention"])
def test_a_finalizer_taking_the_lock_its_thread_holds_in_labotels_bookkeeping(feature):
    """race: publishing this thread's clock before the release allocates with the lock
    held, and the collection runs the finalizer there: the code before hung at the first
    one. contention: the wait of a
    contended acquire is recorded with the lock held; the collection rarely falls there
    (no hang before either in a 10 s storm), so this checks that lending breaks nothing."""
    done = subprocess.run([sys.executable, "-c", _APP, feature], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome == {"finalized": 300, "count": 0}, outcome


_POOL = r"""
import faulthandler, gc, json, queue, sys, threading, time
pool = queue.Queue()  # made before start(): plain locks inside, seen through their
permits = threading.Semaphore(1 << 30)  # Conditions' hooks
import labotel
labotel.start(admin_address="", metrics_exporter="none", traces_exporter="none",
              leak_detection=False, race_detection=True)
faulthandler.dump_traceback_later(40, exit=True)  # a hang fails the test, saying where
kind = sys.argv[1]
returned = [0]

class Connection:
    def __init__(self):
        self.me = self  # a cycle: only a collection frees it
    def __del__(self):  # gives its slot back, wherever the collection runs
        returned[0] += 1
        if kind == "queue":
            pool.put(1)
        else:
            permits.release()

for _ in range(10):
    pool.put(1)
gc.set_threshold(5)
made = 0
end = time.monotonic() + 2
while time.monotonic() < end:
    if kind == "queue":
        try:
            pool.get_nowait()
        except queue.Empty:
            pass
    else:
        permits.acquire(blocking=False)
    Connection()
    made += 1
gc.set_threshold(700, 10, 10)
deadline = time.monotonic() + 10
while returned[0] < made and time.monotonic() < deadline:
    gc.collect()  # (does nothing while another thread's collection runs)
    time.sleep(0.01)
print(json.dumps({"made": made, "returned": returned[0]}), flush=True)
"""


@pytest.mark.parametrize("kind", ["semaphore", "queue"])
def test_a_finalizer_giving_back_to_a_pool_made_before_start(kind):
    """A Semaphore or queue made before start() holds a plain lock, and the race
    detector records its edges while that lock is held: a collection there ran a
    finalizer that gave its slot back to the same pool and waited for ever for its own
    thread (every run hung). And a finalizer run while the detector held its lock for
    an Event's or queue's clock, blocked on a pool lock whose holder waited for that
    lock, stopped both threads (1 run in 20)."""
    done = subprocess.run([sys.executable, "-c", _POOL, kind], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["made"] > 1000 and outcome["returned"] == outcome["made"], outcome
