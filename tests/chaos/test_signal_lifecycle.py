"""``start()``/``shutdown()`` called by a signal handler (a SIGTERM handler stopping
telemetry, a daemon forking a worker on SIGUSR1) or cut short by Ctrl-C, at a moment the
main thread is inside labotel's own code.

Each scenario runs in a child process; the signal is sent from inside the labotel function
named, so the handler runs at that function's next check point, every time. Before:
a handler's ``shutdown()`` inside ``start()`` found nothing to stop and ``start()`` then
left labotel running; a handler's ``start()`` inside ``shutdown()`` was torn down again
by it (patches gone, "running" said); Ctrl-C in ``shutdown()`` left the patches, threads
and race detector in place with no monitor to stop them; a handler's ``shutdown()`` while
the loop registry held its lock hung; a handler's ``shutdown()`` during labotel's import
raised ``AttributeError``; a handler's ``fork()`` inside ``start()`` gave the child a
``RuntimeError``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_PRELUDE = r"""
import faulthandler, json, os, signal, sys, threading, time
faulthandler.dump_traceback_later(30, exit=True)  # a hang fails the test, saying where
import labotel
OPTIONS = dict(admin_address="", metrics_exporter="none", traces_exporter="none",
               leak_detection=False, race_detection=True)
PLAIN_LOCK = threading.Lock

def signal_inside(module, name, signum, once=True):
    original = getattr(module, name)
    def send(*args, **kwargs):
        if once:
            setattr(module, name, original)
        os.kill(os.getpid(), signum)  # the handler runs at the next check point
        return original(*args, **kwargs)
    setattr(module, name, send)

def state():
    from labotel import monitor
    from labotel.detect import races
    current = monitor.current()
    return {"running": bool(current and current.running),
            "lock_patched": threading.Lock is not PLAIN_LOCK,
            "detector": races.active() is not None,
            "threads": sorted(t.name for t in threading.enumerate()
                              if t.name.startswith("labotel"))}
"""

_SHUTDOWN_IN_START = _PRELUDE + r"""
from labotel import log_relay
signal.signal(signal.SIGTERM, lambda *_: labotel.shutdown())
signal_inside(log_relay, "start", signal.SIGTERM)
labotel.start(**OPTIONS)
print(json.dumps(state()))
"""

_START_IN_SHUTDOWN = _PRELUDE + r"""
from labotel import descriptors
signal.signal(signal.SIGUSR2, lambda *_: labotel.start(**OPTIONS))
labotel.start(**OPTIONS)
signal_inside(descriptors, "forget", signal.SIGUSR2)  # the stop's first steps
labotel.shutdown()
after = state()
after["status"] = labotel.monitor.current().status()["components"]["running"]
lock = threading.Lock()
after["new_lock_instrumented"] = type(lock).__name__ == "InstrumentedLock"
labotel.shutdown()
after["then_stopped"] = state()
print(json.dumps(after))
"""

_CTRL_C_IN_SHUTDOWN = _PRELUDE + r"""
from labotel import descriptors
labotel.start(**OPTIONS)
original = descriptors.forget
def interrupted(*args):
    descriptors.forget = original
    raise KeyboardInterrupt  # as a Ctrl-C at this call's check point
descriptors.forget = interrupted
try:
    labotel.shutdown()
    raised = None
except KeyboardInterrupt:
    raised = "KeyboardInterrupt"
time.sleep(0.2)  # threads told to stop are gone
after = state()
after["raised"] = raised
print(json.dumps(after))
"""

_SHUTDOWN_WHILE_A_LOOP_REGISTERS = _PRELUDE + r"""
import asyncio
from labotel.runtime import loops
def handler(*_):
    labotel.shutdown()
    sys.exit(3)
signal.signal(signal.SIGTERM, handler)
labotel.start(**OPTIONS)
signal_inside(loops, "_known", signal.SIGTERM)  # under the loop registry's lock
async def main():
    await asyncio.sleep(10)
asyncio.run(main())
"""

_SHUTDOWN_ASIDE = _PRELUDE + r"""
import asyncio
from labotel import monitor
from labotel.runtime import loops
signal.signal(signal.SIGTERM, lambda *_: labotel.shutdown())
later_start = sys.argv[1] == "later-start"

async def main():
    pass

labotel.start(**OPTIONS)
with monitor._lock:  # the handler's stop, on a thread of its own, waits for this block
    signal_inside(loops, "_known", signal.SIGTERM)  # under the loop registry's lock
    asyncio.run(main())
    if later_start:
        labotel.start(**OPTIONS)  # a later call: it decides the state
time.sleep(0.5)
print(json.dumps(state()))
"""


_SHUTDOWN_DURING_IMPORT = r"""
import builtins, faulthandler, json, os, signal
faulthandler.dump_traceback_later(30, exit=True)
import labotel
seen = {}
def handler(*_):
    try:
        labotel.shutdown()
        seen["handler"] = "returned"
    except BaseException as error:
        seen["handler"] = repr(error)
        raise
signal.signal(signal.SIGTERM, handler)
real_import = builtins.__import__
def importing(name, *args, **kwargs):
    if name == "labotel.sdk" or (name == "labotel" and len(args) > 2 and args[2]
                                 and "sdk" in args[2]):
        builtins.__import__ = real_import
        os.kill(os.getpid(), signal.SIGTERM)  # while labotel.monitor is half imported
    return real_import(name, *args, **kwargs)
builtins.__import__ = importing
try:
    monitor = labotel.start(admin_address="", metrics_exporter="none",
                            traces_exporter="none", leak_detection=False)
    seen["start"] = "running" if monitor.running else "not running"
except BaseException as error:
    seen["start"] = repr(error)
labotel.shutdown()
print(json.dumps(seen))
"""

_FORK_IN_START = _PRELUDE + r"""
from labotel import log_relay
children = []
def handler(*_):
    pid = os.fork()
    if pid:
        children.append(pid)
signal.signal(signal.SIGUSR1, handler)
signal_inside(log_relay, "start", signal.SIGUSR1)
parent = os.getpid()
try:
    labotel.start(**OPTIONS)
    outcome = "running" if labotel.monitor.current().running else "not running"
except BaseException as error:
    outcome = repr(error)
if os.getpid() != parent:  # the child: goes on from inside start(), as its parent
    try:
        with threading.Lock():
            pass
        labotel.shutdown()
    except BaseException as error:
        outcome = repr(error)
    print(json.dumps({"child": outcome}), flush=True)
    os._exit(0)
for pid in children:
    os.waitpid(pid, 0)
labotel.shutdown()
print(json.dumps({"parent": outcome}), flush=True)
"""


def _run(script: str, *args: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    done = subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return done, lines


def test_a_handlers_shutdown_inside_start_leaves_labotel_stopped():
    done, lines = _run(_SHUTDOWN_IN_START)
    assert done.returncode == 0, done.stderr[-3000:]
    assert lines == [{"running": False, "lock_patched": False, "detector": False,
                      "threads": []}], done.stderr[-3000:]


def test_a_handlers_start_inside_shutdown_leaves_labotel_running_whole():
    done, lines = _run(_START_IN_SHUTDOWN)
    assert done.returncode == 0, done.stderr[-3000:]
    after = lines[0]
    assert after["running"] and after["lock_patched"] and after["detector"], after
    assert after["new_lock_instrumented"] and "detect.races" in after["status"], after
    assert after["then_stopped"] == {"running": False, "lock_patched": False,
                                     "detector": False, "threads": []}, after


def test_ctrl_c_inside_shutdown_still_undoes_everything_then_raises():
    done, lines = _run(_CTRL_C_IN_SHUTDOWN)
    assert done.returncode == 0, done.stderr[-3000:]
    assert lines == [{"running": False, "lock_patched": False, "detector": False,
                      "threads": [], "raised": "KeyboardInterrupt"}], done.stderr[-3000:]


def test_a_handlers_shutdown_while_labotels_code_holds_its_lock_does_not_hang():
    """The handler interrupted the loop registry holding its lock, which the stop takes:
    labotel stops on a thread of its own once the handler returns, and the exit (the
    handler's ``sys.exit(3)``) is not held."""
    done, _ = _run(_SHUTDOWN_WHILE_A_LOOP_REGISTERS)
    assert done.returncode == 3, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]


@pytest.mark.parametrize("then", ["nothing", "later-start"])
def test_a_handlers_shutdown_set_aside_stops_labotel_unless_a_later_call_came(then):
    """The stop a handler asked for inside labotel's code runs on a thread of its own
    once the lifecycle lock is free; a start() made after the handler's call decides."""
    done, lines = _run(_SHUTDOWN_ASIDE, then)
    assert done.returncode == 0, done.stderr[-3000:]
    running = then == "later-start"
    assert lines == [{"running": running, "lock_patched": running, "detector": running,
                      "threads": lines[0]["threads"]}], done.stderr[-3000:]
    assert bool(lines[0]["threads"]) == running, lines


def test_a_handlers_shutdown_while_labotel_is_first_imported():
    done, lines = _run(_SHUTDOWN_DURING_IMPORT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert lines == [{"handler": "returned", "start": "running"}], done.stderr[-3000:]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_handlers_fork_inside_start_gives_the_child_a_working_labotel():
    done, lines = _run(_FORK_IN_START)
    assert done.returncode == 0, done.stderr[-3000:]
    assert {"child": "running"} in lines and {"parent": "running"} in lines, \
        (lines, done.stderr[-3000:])
