"""A client that hangs up on a ?seconds= profile ends it at once, as Go's handlers stop
with their request's context: the next profile is not refused as busy."""

import socket
import threading
import time
import tracemalloc

import pytest

import labotel
from tests.unit.raw_http import read, request, split
from tests.unit.test_pprof_support import py_spy_children


def alive(name: str) -> bool:
    return any(t.name == name for t in threading.enumerate())


def wait_until(condition, timeout: float) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, "condition not reached"
        time.sleep(0.01)
    return time.monotonic() - started


def abandon(address, path: str, wait_for) -> float:
    """Request ``path``, hang up after ~1 s; seconds until ``wait_for()`` held again."""
    sock = socket.create_connection(address, timeout=5)
    sock.sendall(request("GET", path))
    time.sleep(1.0)
    sock.close()
    return wait_until(wait_for, timeout=5)


def get(address, path: str, timeout: float = 10):
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(request("GET", path, {"Connection": "close"}))
        data, _ = read(sock, time.monotonic() + timeout)
    return split(data)[0]


def slot_of(monitor, profile: str):
    """The profile component's slot for ``/debug/pprof/<profile>``."""
    component = monitor.component("profile")
    return component.cpu if profile == "profile" else component.wall


@pytest.fixture
def monitor():
    started = labotel.start(admin_address="127.0.0.1:0", leak_detection=False,
                            profile_backend="in-process")  # its sampler is a named thread
    yield started
    labotel.shutdown()


@pytest.mark.parametrize("profile, thread", [("profile", "labotel-cpu-profiler"),
                                             ("wall", "labotel-wall-profiler")])
def test_a_dropped_sampled_profile_stops_its_sampler_at_once(monitor, profile, thread):
    address = monitor.server.address
    sock = socket.create_connection(address, timeout=5)
    sock.sendall(request("GET", f"/debug/pprof/{profile}?seconds=20"))
    wait_until(lambda: alive(thread), timeout=5)
    time.sleep(1.0)
    sock.close()
    stopped_after = wait_until(lambda: not alive(thread), timeout=5)
    assert stopped_after < 1.0  # was 19 s: the sampler ran the whole 20 s
    # the slot is free once stop() has also built the dropped profile (its thread ended
    # first: on a loaded 3.12 the next request came in between and was refused as busy)
    slot = slot_of(monitor, profile)
    wait_until(lambda: slot.running is None, timeout=5)
    answer = get(address, f"/debug/pprof/{profile}?seconds=1")
    assert answer.status == 200 and answer.body.startswith(b"\x1f\x8b")  # not 500 "in use"


@pytest.mark.parametrize("profile", ["profile", "wall"])
def test_a_dropped_profile_stops_py_spy_at_once(profile):
    started = labotel.start(admin_address="127.0.0.1:0", leak_detection=False,
                            profile_backend="py-spy")
    try:
        address = started.server.address
        sock = socket.create_connection(address, timeout=5)
        sock.sendall(request("GET", f"/debug/pprof/{profile}?seconds=20"))
        wait_until(py_spy_children, timeout=5)
        time.sleep(1.0)
        sock.close()
        slot = slot_of(started, profile)
        assert wait_until(lambda: not py_spy_children(), timeout=5) < 1.0
        wait_until(lambda: slot.running is None, timeout=5)  # its output converted
        answer = get(address, f"/debug/pprof/{profile}?seconds=1")
        assert answer.status == 200 and answer.body.startswith(b"\x1f\x8b")
    finally:
        labotel.shutdown()


def test_a_dropped_heap_window_stops_tracing(monitor):
    assert not tracemalloc.is_tracing()
    address = monitor.server.address
    sock = socket.create_connection(address, timeout=5)
    sock.sendall(request("GET", "/debug/pprof/heap?seconds=20"))
    wait_until(tracemalloc.is_tracing, timeout=5)
    time.sleep(1.0)
    sock.close()
    assert wait_until(lambda: not tracemalloc.is_tracing(), timeout=5) < 1.0


def test_a_dropped_goroutine_delta_frees_its_worker(monitor):
    freed_after = abandon(monitor.server.address, "/debug/pprof/goroutine?seconds=20",
                          lambda: monitor.server.requests_in_progress == 0)
    assert freed_after < 1.0


def test_a_client_that_waits_gets_the_whole_profile(monitor):
    address = monitor.server.address
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(request("GET", "/debug/pprof/profile?seconds=1"))
        data, _ = read(sock, time.monotonic() + 10, responses=1)
    assert split(data)[0].status == 200


def test_asgi_app_under_uvicorn_stops_a_dropped_profile():
    uvicorn = pytest.importorskip("uvicorn")
    from starlette.applications import Starlette
    from starlette.routing import Mount

    labotel.start(admin_address="", leak_detection=False, profile_backend="in-process")
    app = Starlette(routes=[Mount("/ops", app=labotel.asgi_app())])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, timeout=10)
        address = ("127.0.0.1", port)
        sock = socket.create_connection(address, timeout=5)
        sock.sendall(request("GET", "/ops/debug/pprof/profile?seconds=20"))
        wait_until(lambda: alive("labotel-cpu-profiler"), timeout=5)
        time.sleep(1.0)
        sock.close()
        assert wait_until(lambda: not alive("labotel-cpu-profiler"), timeout=5) < 1.0
        answer = get(address, "/ops/debug/pprof/profile?seconds=1")
        assert answer.status == 200
    finally:
        server.should_exit = True
        thread.join(10)
        labotel.shutdown()


def test_a_request_sent_with_the_hang_up_is_cancelled_too(monitor):
    """A second request and the client's FIN right after the first answer: the worker
    still waiting on the connection takes that request itself, and the one-shot hang-up
    watch may fire before it does; the 20 s profile must end at once all the same."""
    address = monitor.server.address
    for _ in range(5):
        with socket.create_connection(address, timeout=5) as sock:
            sock.sendall(request("GET", "/healthz"))
            data, _ = read(sock, time.monotonic() + 5, responses=1)
            sock.sendall(request("GET", "/debug/pprof/wall?seconds=20"))
            sock.shutdown(socket.SHUT_WR)
            started = time.monotonic()
            data, closed = read(sock, started + 10)
        assert split(data)[0].status == 200 and closed
        assert time.monotonic() - started < 3
