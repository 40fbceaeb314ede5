"""The debug server over real loopback HTTP: routes, status codes, content types, auth."""

import json
import logging

import pytest

import labotel
from tests.metrics_helpers import fetch


def test_metrics_text_and_openmetrics(monitor):
    status, content_type, body = fetch(monitor.admin_url + "/metrics")
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    assert b"process_cpu_time_seconds_total" in body
    status, content_type, body = fetch(monitor.admin_url + "/metrics",
                                       {"Accept": "application/openmetrics-text; version=1.0.0"})
    assert status == 200 and content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")


def test_admin_views_are_json(monitor):
    for path in ("/admin/monitoring/goroutines", "/admin/monitoring/threads",
                 "/admin/monitoring/heap", "/admin/monitoring/gc",
                 "/admin/monitoring/detections", "/admin/monitoring/"):
        status, content_type, body = fetch(monitor.admin_url + path)
        assert (status, content_type) == (200, "application/json"), path
        json.loads(body)
    _, _, body = fetch(monitor.admin_url + "/admin/monitoring/races")
    races = json.loads(body)
    assert races["enabled"] is False and "LABOTEL_RACE_DETECTION=1" in races["hint"]
    _, _, body = fetch(monitor.admin_url + "/admin/monitoring/goroutines?stacks=1")
    threads = json.loads(body)["threads"]["items"]
    server_thread = next(t for t in threads if t["name"] == "labotel-debug-server")
    assert server_thread["daemon"] is True and server_thread["stack"]
    _, _, body = fetch(monitor.admin_url + "/admin/monitoring/heap")
    heap = json.loads(body)
    assert heap["rss_bytes"] > 0 and heap["small_object_blocks"] > 0
    status, _, body = fetch(monitor.admin_url + "/healthz")
    assert (status, body) == (200, b"ok\n")


@pytest.mark.parametrize("path, status, message", [
    ("/nope", 404, b"no such labotel endpoint"),
    ("/admin/monitoring/detections?kind=bogus", 400, b"invalid value for kind"),
    ("/admin/monitoring/detections?limit=abc", 400, b"invalid value for limit"),
    ("/admin/monitoring/detections?limit=-3", 400, b"below 1"),
    ("/admin/monitoring/goroutines?stacks=maybe", 400, b"invalid value for stacks"),
])
def test_bad_requests_get_clear_errors(monitor, path, status, message):
    got, content_type, body = fetch(monitor.admin_url + path)
    assert got == status and content_type.startswith("text/plain") and message in body


def test_detections_route_lists_reported_detections(monitor):
    from labotel.detect.detection import Detection

    monitor.reporter.report(Detection(kind="thread_leak", summary="42 threads stuck",
                                      attributes={"labotel.leak.site": "app.py:7"},
                                      fingerprint=("app.py:7",)))
    _, _, body = fetch(monitor.admin_url + "/admin/monitoring/detections?kind=thread_leak")
    data = json.loads(body)
    assert data["count"] == 1
    assert data["detections"][0]["attributes"]["labotel.leak.site"] == "app.py:7"
    assert labotel.detections("thread_leak")[0].summary == "42 threads stuck"
    assert labotel.detections("memory_leak") == []


def test_token_is_required_when_set():
    labotel.start(admin_address="127.0.0.1:0", admin_token="s3cret")
    url = labotel.monitor.current().admin_url
    status, _, body = fetch(url + "/metrics")
    assert status == 401 and b"bearer token" in body
    assert fetch(url + "/metrics", {"Authorization": "Bearer wrong"})[0] == 401
    assert fetch(url + "/metrics", {"Authorization": "Bearer s3cret"})[0] == 200
    assert fetch(url + "/healthz")[0] == 200  # liveness probes carry no token


def test_non_loopback_bind_needs_token_or_opt_out(caplog):
    with pytest.raises(ValueError, match="admin_address.*not a loopback"):
        labotel.start(admin_address="0.0.0.0:0")
    assert labotel.monitor.current() is None
    with caplog.at_level(logging.WARNING, logger="labotel"):
        labotel.start(admin_address="0.0.0.0:0", admin_allow_insecure=True)
    assert "WITHOUT a token" in caplog.text


def test_port_in_use_does_not_take_the_app_down(caplog):
    import socket

    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    try:
        with caplog.at_level(logging.ERROR, logger="labotel"):
            monitor = labotel.start(admin_address=f"127.0.0.1:{port}")
        assert monitor.running and monitor.admin_url is None
        assert "could not listen" in caplog.text
    finally:
        blocker.close()


def test_debug_server_disabled_with_empty_address():
    monitor = labotel.start(admin_address="")
    assert monitor.admin_url is None
    assert monitor.router.handle  # routes still usable by the ASGI/WSGI adapters


def test_100_continue_is_not_held_back_by_the_write_buffer(monitor):
    import socket
    from urllib.parse import urlsplit

    address = urlsplit(monitor.admin_url)
    # 5 s of patience for a loaded machine: a held-back answer never comes at all
    with socket.create_connection((address.hostname, address.port), timeout=5) as client:
        body = b"x" * 5000
        client.sendall(b"POST /healthz HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
                       b"Content-Length: %d\r\n\r\n" % len(body))
        # the interim answer arrives before the body is sent (curl would wait 1 s for it)
        assert client.recv(100).startswith(b"HTTP/1.1 100 Continue")
        client.sendall(body)
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += client.recv(4096)
        assert answer.startswith(b"HTTP/1.1 405")


def test_error_answers_repeat_at_most_a_bounded_part_of_the_request():
    """A 3.4 KB method (a pipelined request the fuzz test sent) came back whole in the
    405's body; the client's input is cut to ECHO_CHARS in every error message."""
    from labotel.server.http import ECHO_CHARS, Request, Router, text_response

    router = Router()
    router.add("/x", lambda _: text_response("ok\n"))
    long = "M" * 3400
    for method, path in ((long, "/x"), ("GET", "/" + "p" * 3400)):
        response = router.handle(Request.build(method, path, "", {}))
        assert response.status in (404, 405)
        assert len(response.body) < ECHO_CHARS + 100, response.body[:200]
