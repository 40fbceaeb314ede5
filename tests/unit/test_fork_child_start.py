"""What labotel's fork hook does in the child before the child's own code runs.

A pre-fork server's worker or a multiprocessing child runs nothing of its own until every
after-fork hook returned. The hook restarts labotel's threads; a sampler that sampled at
once (the task sampler walking 100 000 tasks) held the GIL while the hook waited for each
next thread to start: the child's code began ~100 ms after fork instead of ~9 ms.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# argv[1]: "app-logs" sets an SDK LoggerProvider of the application's before start()
CHILD_START = r"""
import json, os, sys, time
if sys.argv[1] == "app-logs":
    from opentelemetry._logs import set_logger_provider
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk.resources import Resource
    set_logger_provider(LoggerProvider(resource=Resource({"service.name": "app"})))
import labotel
monitor = labotel.start(admin_address="", leak_sample_interval=0.5)
calls = []  # (pid, name, time) of every sample
for component in monitor.components:
    sampler = getattr(component, "_sampler", None)
    if sampler is None:
        continue
    def recorded(function=sampler._function, name=sampler.name):
        calls.append((os.getpid(), name, time.perf_counter()))
        function()
    sampler._function = recorded
time.sleep(1.2)  # the parent's samplers have sampled
parent_logs = "opentelemetry._logs" in sys.modules
reader, writer = os.pipe()
pid = os.fork()
if pid == 0:
    back = time.perf_counter()  # the child's own code: every fork hook has returned
    time.sleep(1.5)
    mine = [(name, at - back) for who, name, at in calls if who == os.getpid()]
    logs_api = sys.modules.get("opentelemetry._logs")
    attributes = (dict(logs_api.get_logger_provider().resource.attributes)
                  if sys.argv[1] == "app-logs" else None)
    os.write(writer, json.dumps({
        "samplers": sorted({name for _, name, _ in calls}),
        "first_in_child": {name: min(t for n, t in mine if n == name)
                           for name in {n for n, _ in mine}},
        "logs_api_in_child": logs_api is not None, "logs_api_in_parent": parent_logs,
        "logger_resource": attributes, "parent": os.getppid()}).encode())
    os._exit(0)
os.close(writer)
chunks = []
while chunk := os.read(reader, 65536):
    chunks.append(chunk)
os.waitpid(pid, 0)
print(b"".join(chunks).decode())
labotel.shutdown()
"""


def child_start(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD_START, mode], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_samplers_restarted_in_a_child_first_sample_one_interval_after_fork():
    report = child_start("no-logs")
    assert {"labotel-thread-leak", "labotel-memory-leak"} <= set(report["samplers"]), report
    first = report["first_in_child"]
    assert set(first) == set(report["samplers"]), report  # every sampler samples in the child
    for name, after_fork in first.items():
        # not inside the fork hook (negative: before the child's code began), and not at
        # once after it either: one leak_sample_interval (0.5 s) later, as the parent's
        # next sample would have come
        assert after_fork >= 0.45, (name, report)


def test_a_child_does_not_import_the_logs_api_nobody_imported():
    report = child_start("no-logs")
    assert report["logs_api_in_parent"] is False, report
    assert report["logs_api_in_child"] is False, report


def test_the_applications_logger_provider_names_the_child():
    report = child_start("app-logs")
    attributes = report["logger_resource"]
    assert attributes["service.name"] == "app"
    assert attributes["process.parent_pid"] == report["parent"]  # labotel's, not the SDK's
    assert attributes["process.pid"] != report["parent"]
    assert attributes.get("service.instance.id")
