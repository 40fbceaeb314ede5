"""The debug server against hostile and sloppy clients, over real loopback TCP: framing,
size limits, timeouts, connection and concurrency caps, HEAD, unknown methods, errors."""

import socket
import threading
import time
import urllib.request

import pytest

import labotel
from labotel.server.debug_server import DebugServer
from labotel.server.http import Router, text_response
from labotel.server.limits import ServerLimits
from tests.metrics_helpers import scrape, value
from tests.unit.raw_http import exchange, read, request, split


@pytest.fixture
def monitor():
    started = labotel.start(admin_address="127.0.0.1:0", leak_detection=False,
                            admin_header_timeout=1.0, admin_body_timeout=1.0,
                            admin_idle_timeout=2.0, profile_max_seconds=5)
    yield started
    labotel.shutdown()


def internal_errors(monitor) -> float:
    return sum(v for (name, _), v in scrape(monitor.admin_url).items()
               if name == "labotel_internal_errors_total")


def test_chunked_body_is_refused_and_never_read_as_a_request(monitor):
    smuggled = b"GET /debug/pprof/cmdline HTTP/1.1\r\nHost: x\r\n\r\n"
    body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(smuggled), smuggled)
    reply = exchange(monitor.server.address, request(
        "POST", "/debug/pprof/symbol", {"Transfer-Encoding": "chunked"}, body))
    [answer] = split(reply.data)  # one answer: the body was not taken for a second request
    assert answer.status == 411 and b"Content-Length" in answer.body
    assert answer.headers["connection"] == "close" and reply.closed


@pytest.mark.parametrize("length", ["abc", "-1", "1, 2", "0x10"])
def test_invalid_content_length_is_400_and_closes(monitor, length, capfd):
    reply = exchange(monitor.server.address, request(
        "POST", "/debug/pprof/symbol", {"Content-Length": length}, b"0x1"))
    [answer] = split(reply.data)
    assert answer.status == 400 and b"Content-Length" in answer.body
    assert answer.headers["content-type"].startswith("text/plain") and reply.closed
    assert "Traceback" not in capfd.readouterr().err
    assert internal_errors(monitor) == 0  # the client's fault, not labotel's


def test_every_refusal_is_a_short_plain_text_answer(monitor):
    address = monitor.server.address
    cases = {
        b"GET /\r\n\r\n": 400,  # HTTP/0.9
        bytes([0x16, 3, 1, 0, 200]) + b"\x01" * 60: 400,  # a TLS ClientHello
        b"GET / HTTP/2.0\r\nHost: x\r\n\r\n": 505,
        request("GET", "/" + "a" * 9000): 414,
        request("GET", "/healthz", {"X-Big": "b" * 17000}): 431,
        request("POST", "/debug/pprof/symbol", {"Content-Length": str(2 << 20)}): 413,
        request("POST", "/debug/pprof/symbol", {"Transfer-Encoding": "gzip"}): 501,
        b"GET /healthz HTTP/1.1\r\n\r\n": 400,  # no Host
    }
    for data, status in cases.items():
        reply = exchange(address, data)
        [answer] = split(reply.data)
        assert answer.status == status, data[:40]
        assert answer.headers["content-type"] == "text/plain; charset=utf-8"
        assert 0 < len(answer.body) < 200 and b"<" not in answer.body
        assert reply.closed
    assert internal_errors(monitor) == 0


@pytest.mark.parametrize("method", ["OPTIONS", "TRACE", "PATCH", "get", "BREW", "DELETE"])
def test_unknown_methods_get_405_in_plain_text(monitor, method):
    reply = exchange(monitor.server.address, request(method, "/metrics",
                                                     {"Connection": "close"}))
    [answer] = split(reply.data)
    assert answer.status == 405 and answer.headers["allow"] == "GET, HEAD"
    assert answer.headers["content-type"].startswith("text/plain")
    assert answer.body == f"method {method} not allowed on /metrics\n".encode()


@pytest.mark.parametrize("path", ["/healthz", "/debug/pprof/", "/debug/pprof/cmdline",
                                  "/debug/pprof/goroutine?debug=x", "/nope", "/metrics"])
def test_head_answers_with_the_headers_of_get(monitor, path):
    def headers(method):
        with socket.create_connection(monitor.server.address, timeout=5) as sock:
            sock.sendall(request(method, path, {"Connection": "close"}))
            data, _ = read(sock, time.monotonic() + 5)
        [answer] = split(data, head_request=method == "HEAD")
        return answer, data

    get, _ = headers("GET")
    head, raw = headers("HEAD")
    assert head.status == get.status
    if path == "/metrics":  # its series and values move between the two requests
        assert int(head.headers["content-length"]) > 1000  # was "Content-Length: 0"
    else:
        assert head.headers["content-length"] == str(len(get.body)) != "0"
    assert head.headers["content-type"] == get.headers["content-type"]
    assert raw.endswith(b"\r\n\r\n")  # and no body


def test_keep_alive_serves_many_requests_on_one_connection(monitor):
    with socket.create_connection(monitor.server.address, timeout=5) as sock:
        for _ in range(20):
            sock.sendall(request("GET", "/healthz"))
            data, closed = read(sock, time.monotonic() + 5, responses=1)
            assert split(data)[0].body == b"ok\n" and not closed
        # pipelined: three requests in one write, three answers in order
        sock.sendall(request("GET", "/healthz") + request("GET", "/debug/pprof/cmdline")
                     + request("GET", "/healthz", {"Connection": "close"}))
        data, closed = read(sock, time.monotonic() + 5)
    assert [r.status for r in split(data)] == [200, 200, 200] and closed


def test_a_client_that_writes_its_whole_body_reads_the_413():
    limits = ServerLimits.from_settings(max_body_bytes=1000)
    router = Router(max_body_bytes=1000)
    router.add("/echo", lambda r: text_response(f"{len(r.body)}\n"), methods=("POST",))
    server = DebugServer("127.0.0.1:0", router, limits=limits)
    server.start()
    try:
        url = server.url + "/echo"
        with urllib.request.urlopen(urllib.request.Request(url, b"x" * 1000), timeout=5) as ok:
            assert ok.read() == b"1000\n"  # exactly the limit
        with pytest.raises(urllib.error.HTTPError) as refused:  # not a broken pipe
            urllib.request.urlopen(urllib.request.Request(url, b"x" * (10 << 20)), timeout=10)
        assert refused.value.code == 413 and b"over the limit" in refused.value.read()
    finally:
        server.stop()


def test_slow_heads_and_bodies_get_408_and_idle_connections_are_closed(monitor):
    address = monitor.server.address
    started = time.monotonic()
    partial_head = exchange(address, b"GET /healthz HTTP/1.1\r\nHo", timeout=5)
    partial_body = exchange(address, request("POST", "/debug/pprof/symbol",
                                             {"Content-Length": "10"}, b"0x1"), timeout=5)
    idle = exchange(address, b"", timeout=5)
    for reply, status in ((partial_head, 408), (partial_body, 408)):
        [answer] = split(reply.data)
        assert answer.status == status and b"timed out" in answer.body and reply.closed
    assert idle.data == b"" and idle.closed
    assert 0.9 < partial_head.seconds < 3 and 1.9 < idle.seconds < 4
    assert time.monotonic() - started < 12


def test_expect_100_continue_is_answered_before_the_body(monitor):
    with socket.create_connection(monitor.server.address, timeout=5) as sock:
        sock.sendall(request("POST", "/debug/pprof/symbol",
                             {"Expect": "100-continue", "Content-Length": "3"}))
        data, _ = read(sock, time.monotonic() + 5, responses=1)
        assert data == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"0x1")
        data, _ = read(sock, time.monotonic() + 5, responses=1)
    assert split(data)[0].status == 200


def test_connection_cap_replaces_idle_connects_first_then_answers_503():
    router = Router()
    router.add("/healthz", lambda _: text_response("ok\n"))
    limits = ServerLimits.from_settings(max_connections=3, header_timeout=30)
    server = DebugServer("127.0.0.1:0", router, limits=limits)
    server.start()
    sockets = []
    try:
        scraper = socket.create_connection(server.address, timeout=5)  # keep-alive, used
        scraper.sendall(request("GET", "/healthz"))
        assert split(read(scraper, time.monotonic() + 5, responses=1)[0])[0].status == 200
        idle = [socket.create_connection(server.address, timeout=5) for _ in range(2)]
        sockets += [scraper, *idle]
        wait_for(lambda: server.open_connections == 3)
        served = exchange(server.address, request("GET", "/healthz", {"Connection": "close"}))
        assert split(served.data)[0].status == 200
        assert idle[0].recv(10) == b""  # the oldest never-used connection made room
        scraper.sendall(request("GET", "/healthz"))  # the scraper's is still there
        assert split(read(scraper, time.monotonic() + 5, responses=1)[0])[0].status == 200
        slow = []
        for _ in range(3):  # requests in progress are not idle: they are not replaced
            sock = socket.create_connection(server.address, timeout=5)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost")
            slow.append(sock)
            time.sleep(0.05)
        sockets += slow
        wait_for(lambda: server.connection_states() == {"head": 3})
        refused = exchange(server.address, request("GET", "/healthz"))
        [answer] = split(refused.data)
        assert answer.status == 503 and answer.headers["retry-after"] == "1"
        assert answer.headers["content-type"].startswith("text/plain") and refused.closed
    finally:
        for sock in sockets:
            sock.close()
        server.stop()


def test_concurrency_cap_answers_503_with_retry_after():
    release = threading.Event()
    router = Router()
    router.add("/slow", lambda _: (release.wait(10), text_response("done\n"))[1])
    router.add("/healthz", lambda _: text_response("ok\n"))
    server = DebugServer("127.0.0.1:0", router,
                         limits=ServerLimits.from_settings(max_concurrent_requests=2))
    server.start()
    try:
        with socket.create_connection(server.address) as a, \
                socket.create_connection(server.address) as b:
            a.sendall(request("GET", "/slow"))
            b.sendall(request("GET", "/slow"))
            wait_for(lambda: server.requests_in_progress == 2)
            busy = exchange(server.address, request("GET", "/healthz"))
            [answer] = split(busy.data)
            assert answer.status == 503 and answer.headers["retry-after"] == "1"
            release.set()
            for sock in (a, b):
                assert split(read(sock, time.monotonic() + 5, responses=1)[0])[0].body == b"done\n"
        # a worker frees its slot just after its last write, so a client can read "done"
        # a moment before the slot is free: the cap is free again once both have finished
        wait_for(lambda: server.requests_in_progress == 0, timeout=5)
        ok = exchange(server.address, request("GET", "/healthz", {"Connection": "close"}))
        assert split(ok.data)[0].status == 200
    finally:
        release.set()
        server.stop()


def test_a_client_that_does_not_read_is_dropped_after_the_write_timeout():
    router = Router()
    router.add("/big", lambda _: text_response("x" * (64 << 20)))
    router.add("/healthz", lambda _: text_response("ok\n"))
    limits = ServerLimits.from_settings(max_concurrent_requests=1, write_timeout=0.2)
    server = DebugServer("127.0.0.1:0", router, limits=limits)
    server.start()
    try:
        with socket.create_connection(server.address) as reader:
            reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            reader.sendall(request("GET", "/big"))
            time.sleep(0.3)  # the one worker is stuck writing
            assert split(exchange(server.address, request("GET", "/healthz")).data)[0].status \
                == 503
            wait_for(lambda: server.requests_in_progress == 0, timeout=5)  # dropped after ~1 s
        ok = exchange(server.address, request("GET", "/healthz", {"Connection": "close"}))
        assert split(ok.data)[0].status == 200
    finally:
        server.stop()


def test_backlog_holds_a_burst_of_connections_before_accept():
    server = DebugServer("127.0.0.1:0", Router())  # bound and listening, not yet accepting
    try:
        sockets = [socket.create_connection(server.address, timeout=1) for _ in range(300)]
        for sock in sockets:
            sock.close()
    finally:
        server.stop()


def test_a_failing_route_is_a_500_counted_once(monitor):
    def broken(_):
        raise RuntimeError("injected")

    monitor.router.add("/broken", broken)
    reply = exchange(monitor.server.address, request("GET", "/broken", {"Connection": "close"}))
    [answer] = split(reply.data)
    assert answer.status == 500 and answer.headers["content-type"].startswith("text/plain")
    samples = scrape(monitor.admin_url)
    assert value(samples, "labotel_internal_errors_total", labotel_component="server") == 1


def wait_for(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_the_portable_poller_serves_the_same(monkeypatch):
    """Where there is no epoll (macOS), poll(2) is used: no hang-up watch, same answers."""
    from labotel.server import connections
    from labotel.server.poller import PortablePoller

    monkeypatch.setattr(connections, "new_poller", PortablePoller)
    router = Router()
    router.add("/healthz", lambda _: text_response("ok\n"))
    server = DebugServer("127.0.0.1:0", router,
                         limits=ServerLimits.from_settings(header_timeout=0.5))
    server.start()
    try:
        with socket.create_connection(server.address, timeout=5) as sock:
            for _ in range(5):  # keep-alive: handed back to the selector after each answer
                time.sleep(0.02)  # past the worker's wait for a next request
                sock.sendall(request("GET", "/healthz"))
                data, _ = read(sock, time.monotonic() + 5, responses=1)
                assert split(data)[0].body == b"ok\n"
            sock.sendall(request("GET", "/healthz") + request("GET", "/nope",
                                                              {"Connection": "close"}))
            data, closed = read(sock, time.monotonic() + 5)
            assert [r.status for r in split(data)] == [200, 404] and closed
        slow = exchange(server.address, b"GET /healthz HTTP/1.1\r\n", timeout=5)
        assert split(slow.data)[0].status == 408 and slow.closed
    finally:
        server.stop()
