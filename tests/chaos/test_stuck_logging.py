"""A logging handler that never returns (a stderr pipe whose reader stopped, a syslog host
that hangs): application threads that never log must keep running.

labotel logged each race it found on the application thread that found it, so once the
handler stuck, that thread stopped for good inside labotel's report (and every other
thread behind the handler's lock). Detections are now logged from labotel's relay thread.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_CHILD = r"""
import itertools, json, logging, os, threading, time
never = threading.Event()
handled = [0]

class Stuck(logging.Handler):
    def emit(self, record):
        handled[0] += 1
        if handled[0] > 3:
            never.wait()  # every thread that logs from now on waits for ever

logging.getLogger().addHandler(Stuck())
import labotel
labotel.start(admin_address="", race_detection=True, leak_detection=False)
progress = {}
counter = itertools.count()

def writer(name):
    while True:
        i = next(counter)
        labotel.record_access(f"r-{i}", write=True, location=f"/srv/a.py:{i}")
        progress[name] = time.monotonic()
        time.sleep(0.001)

def reader(name):
    while True:
        i = next(counter) - 1
        labotel.record_access(f"r-{i}", location=f"/srv/b.py:{i}")
        progress[name] = time.monotonic()
        time.sleep(0.001)

for name, target in (("writer", writer), ("reader", reader)):
    threading.Thread(target=target, args=(name,), name=name, daemon=True).start()
time.sleep(3)
now = time.monotonic()
print(json.dumps({"handled": handled[0], "idle": {k: now - v for k, v in progress.items()}}),
      flush=True)
os._exit(0)  # shutdown() would log a line itself, into the stuck handler
"""


def test_application_threads_run_on_while_the_logging_handler_is_stuck():
    done = subprocess.run([sys.executable, "-c", _CHILD], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["handled"] > 3, result  # the handler did get stuck
    assert set(result["idle"]) == {"writer", "reader"}, result
    for name, idle in result["idle"].items():
        assert idle < 1.0, (name, result)  # still running a moment ago
