"""A finalizer or a signal handler in an instrumented module (``race_instrument``) that
runs while labotel's race detector, on the same thread, records a write of that module.

The detector records a located write under its own lock, and that bookkeeping allocates
(weak references, stacks): a collection there ran the application's ``__del__``, whose
instrumented ``stats.freed += 1`` took the detector's lock again and waited for ever for
its own thread; a signal handler's did the same at any check point there. Without labotel
(or with the module not instrumented) both programs run to their end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_MODULE = textwrap.dedent("""
    import threading

    class Counter:
        def __init__(self):
            self.n = 0

    freed = Counter()
    signals = Counter()
    lock = threading.Lock()

    class Box:
        pass

    class Pooled:
        def __init__(self):
            self.me = self  # a cycle: freed by a collection, which runs __del__
        def __del__(self):
            freed.n += 1  # an instrumented read-modify-write

    def on_signal(signum, frame):
        signals.n += 1

    def work(rounds):
        for i in range(rounds):
            Pooled()
            box = Box()
            box.x = i  # a write of a new location, recorded under the detector's lock
            with lock:
                pass  # a release: the next write starts a new epoch
""")

_APP = r"""
import faulthandler, gc, json, signal, sys
faulthandler.dump_traceback_later(40, exit=True)  # a hang fails the test, saying where
sys.path.insert(0, sys.argv[2])
import labotel
labotel.start(admin_address="", metrics_exporter="none", traces_exporter="none",
              leak_detection=False, race_detection=True, race_instrument="reentry_app",
              race_sample_floor=1)
import reentry_app
if sys.argv[1] == "finalizer":
    gc.set_threshold(1)  # a collection at (almost) every allocation: inside labotel's too
    reentry_app.work(20000)
    gc.set_threshold(700, 10, 10)
else:
    signal.signal(signal.SIGALRM, reentry_app.on_signal)
    signal.setitimer(signal.ITIMER_REAL, 0.0005, 0.0005)
    reentry_app.work(200000)
    signal.setitimer(signal.ITIMER_REAL, 0, 0)
gc.collect()
print(json.dumps({"freed": reentry_app.freed.n, "signals": reentry_app.signals.n}))
"""


@pytest.mark.parametrize("interruption", ["finalizer", "signal"])
def test_an_instrumented_finalizer_or_handler_inside_the_detectors_bookkeeping(
        interruption, tmp_path):
    (tmp_path / "reentry_app.py").write_text(_MODULE)
    done = subprocess.run([sys.executable, "-c", _APP, interruption, str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.splitlines()[-1])
    if interruption == "finalizer":
        assert seen["freed"] == 20000, seen
    else:
        assert seen["signals"] >= 100, seen


_COUNTERS = textwrap.dedent("""
    class Counter:
        def __init__(self):
            self.n = 0

    counter = Counter()
    by_kind = {"all": 0}

    def on_signal(signum, frame):
        counter.n += 1
        by_kind["all"] += 1

    def work(loops):
        for _ in range(loops):
            counter.n += 1  # no check point between the read and the write, as written
            by_kind["all"] += 1
""")

_BUMPS = r"""
import faulthandler, json, signal, sys
faulthandler.dump_traceback_later(60, exit=True)
sys.path.insert(0, sys.argv[1])
import labotel
labotel.start(admin_address="", metrics_exporter="none", traces_exporter="none",
              leak_detection=False, race_detection=True, race_instrument="bumps_app",
              race_sample_floor=1)
import bumps_app
calls = [0]
def handler(signum, frame):
    calls[0] += 1
    bumps_app.on_signal(signum, frame)
signal.signal(signal.SIGALRM, handler)
signal.setitimer(signal.ITIMER_REAL, 0.0002, 0.0002)
bumps_app.work(300000)
signal.setitimer(signal.ITIMER_REAL, 0, 0)
expected = 300000 + calls[0]
print(json.dumps({"handler_calls": calls[0],
                  "attribute_lost": expected - bumps_app.counter.n,
                  "item_lost": expected - bumps_app.by_kind["all"]}))
"""


def test_an_instrumented_read_modify_write_loses_no_handlers_bump(tmp_path):
    """``counter.n += 1`` has no check point between its read and its write, so a signal
    handler's own ``counter.n += 1`` never lands in between and no bump is lost. The
    instrumented form read, called the detector, then wrote: a handler ran in between,
    and its bump was overwritten (about 1 in 6 of them)."""
    (tmp_path / "bumps_app.py").write_text(_COUNTERS)
    done = subprocess.run([sys.executable, "-c", _BUMPS, str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen["handler_calls"] >= 200, seen
    assert seen["attribute_lost"] == 0 and seen["item_lost"] == 0, seen
