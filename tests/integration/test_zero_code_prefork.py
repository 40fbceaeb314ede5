"""gunicorn with two workers under ``opentelemetry-instrument``, with and without --preload.

labotel starts in the gunicorn master (the launcher's sitecustomize runs there); each forked
worker must then be a process of its own: its own pid and service.instance.id on its
telemetry, its own export thread and debug server (master on P, workers on P+1, P+2).
"""

from __future__ import annotations

import textwrap

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.zero_code_support import (
    GrpcOTLPReceiver,
    free_port_run,
    get,
    get_json,
    launch,
    launcher_env,
    terminate,
    wait_for,
)

WSGI_APP = """
import os

def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(os.getpid()).encode()]
"""


def target_info(base_url: str) -> dict[str, str]:
    status, body = get(base_url + "/metrics")
    assert status == 200, body
    for family in text_string_to_metric_families(body):
        if family.name == "target_info":
            return family.samples[0].labels
    raise AssertionError("no target_info on " + base_url)


def debug_view(port: int) -> dict | None:
    try:
        return get_json(f"http://127.0.0.1:{port}/admin/monitoring/goroutines")
    except OSError:
        return None


@pytest.mark.parametrize("preload", [False, True], ids=["no-preload", "preload"])
def test_gunicorn_workers_are_each_seen(tmp_path, preload):
    (tmp_path / "wsgiapp.py").write_text(textwrap.dedent(WSGI_APP))
    admin, app_port = free_port_run(4), free_port_run(1)
    with GrpcOTLPReceiver() as receiver:
        env = launcher_env(OTEL_SERVICE_NAME="gunicorn-app", OTEL_TRACES_EXPORTER="none",
                           OTEL_METRICS_EXPORTER="otlp",
                           OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
                           LABOTEL_ADMIN_ADDRESS=f"127.0.0.1:{admin}")
        args = ["gunicorn", "-w", "2", "-b", f"127.0.0.1:{app_port}", "--no-control-socket",
                *(["--preload"] if preload else []), "wsgiapp:app"]
        master = launch(args, tmp_path, env)  # the launcher execs: same pid as gunicorn
        try:
            views = wait_for(lambda: [v for v in map(debug_view, range(admin, admin + 3)) if v]
                             if all(map(debug_view, range(admin, admin + 3))) else None,
                             timeout=60)
            assert views, f"debug servers on {admin}..{admin + 2} did not all answer"
            master_view, *worker_views = views
            worker_pids = {view["pid"] for view in worker_views}
            assert master_view["pid"] == master.pid
            assert len(worker_pids) == 2 and master.pid not in worker_pids
            assert worker_pids == {c.pid for c in psutil.Process(master.pid).children()}
            assert int(get(f"http://127.0.0.1:{app_port}/")[1]) in worker_pids

            infos = [target_info(f"http://127.0.0.1:{port}") for port in range(admin, admin + 3)]
            assert [int(info["process_pid"]) for info in infos] == [
                view["pid"] for view in views]
            assert len({info["service_instance_id"] for info in infos}) == 3
            assert all(info["process_parent_pid"] == str(master.pid) for info in infos[1:])

            master_threads = {t["name"] for t in master_view["threads"]["items"]
                              if t["name"].startswith(("labotel-", "Otel"))}
            assert {"labotel-debug-server", "OtelPeriodicExportingMetricReader"} <= master_threads
            for view in worker_views:  # the worker's own background threads run
                names = {thread["name"] for thread in view["threads"]["items"]}
                assert master_threads <= names, (master_threads, names)

            def pushed_by_workers():
                pushed = {int(resource["process.pid"]): resource["service.instance.id"]
                          for resource, names in receiver.metric_resources("labotel")
                          if "process.thread.count" in names}
                return pushed if worker_pids <= set(pushed) else None

            pushed = wait_for(pushed_by_workers, timeout=45)
            seen = sorted({r["process.pid"] for r, _ in receiver.metric_resources("labotel")})
        finally:
            err = terminate(master)
        # the master's log says whether a silent worker died or was replaced
        assert pushed, (f"OTLP metrics from workers {worker_pids}: pushes seen from {seen}\n"
                        + err[-3000:])
        for info in infos[1:]:
            assert pushed[int(info["process_pid"])] == info["service_instance_id"]
        assert master.returncode == 0, err[-3000:]
        assert "Traceback" not in err, err[-3000:]
