"""The same routes mounted in real frameworks, served over real loopback HTTP."""

import socket
import threading
import time
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest

import labotel
from tests.metrics_helpers import fetch


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def started():
    monitor = labotel.start(admin_address="")
    yield monitor
    labotel.shutdown()


def test_asgi_app_mounted_in_starlette_under_uvicorn(started):
    uvicorn = pytest.importorskip("uvicorn")
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route

    async def home(request):
        return PlainTextResponse("app")

    app = Starlette(routes=[Route("/", home), Mount("/ops", app=labotel.asgi_app())])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        base = f"http://127.0.0.1:{port}"
        assert fetch(base + "/")[2] == b"app"
        status, content_type, body = fetch(base + "/ops/metrics")
        assert status == 200 and b"process_cpu_time_seconds_total" in body
        status, content_type, _ = fetch(base + "/ops/admin/monitoring/gc")
        assert (status, content_type) == (200, "application/json")
        assert fetch(base + "/ops/admin/monitoring/detections?kind=x")[0] == 400
        assert fetch(base + "/ops/nope")[0] == 404
    finally:
        server.should_exit = True
        thread.join(10)


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass


def test_wsgi_app_mounted_in_flask(started):
    flask = pytest.importorskip("flask")
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    app = flask.Flask("shop")

    @app.route("/")
    def home():
        return "app"

    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/ops": labotel.wsgi_app()})
    server = make_server("127.0.0.1", 0, app, handler_class=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        assert fetch(base + "/")[2] == b"app"
        status, _, body = fetch(base + "/ops/metrics")
        assert status == 200 and b"cpython_gc_collections_total" in body
        status, content_type, _ = fetch(base + "/ops/admin/monitoring/heap")
        assert (status, content_type) == (200, "application/json")
        assert fetch(base + "/ops/admin/monitoring/goroutines?stacks=2")[0] == 400
    finally:
        server.shutdown()
        server.server_close()


def test_adapters_answer_503_before_start():
    labotel.shutdown()
    app = labotel.wsgi_app()
    seen = {}

    def start_response(status, headers):
        seen["status"] = status

    import io

    body = b"".join(app({"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics",
                         "wsgi.input": io.BytesIO()}, start_response))
    assert seen["status"].startswith("503") and b"labotel.start()" in body


def _wsgi_call(app, method, path, body=b"", **environ):
    import io

    seen = {}

    def start_response(status, headers):
        seen["status"], seen["headers"] = status, dict(headers)

    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "wsgi.input": io.BytesIO(body),
               "CONTENT_LENGTH": str(len(body)) if body else "", **environ}
    data = b"".join(app(environ, start_response))
    return int(seen["status"].split()[0]), seen["headers"], data


def test_wsgi_head_has_gets_headers_and_framing_errors_are_400_or_413(started):
    app = labotel.wsgi_app()
    status, headers, body = _wsgi_call(app, "GET", "/debug/pprof/cmdline")
    head_status, head_headers, head_body = _wsgi_call(app, "HEAD", "/debug/pprof/cmdline")
    assert (head_status, head_headers, head_body) == (status, headers, b"")
    assert headers["Content-Length"] == str(len(body)) != "0"
    for length in ("abc", "-1", "\u00b3"):  # "³" passed isdigit() and then raised in int()
        status, headers, body = _wsgi_call(app, "POST", "/debug/pprof/symbol",
                                           CONTENT_LENGTH=length)
        assert status == 400 and b"Content-Length" in body
    status, _, body = _wsgi_call(app, "POST", "/debug/pprof/symbol", b"x" * (2 << 20))
    assert status == 413 and b"over the limit" in body
    assert _wsgi_call(app, "get", "/metrics")[0] == 405  # methods are case-sensitive


def test_asgi_head_has_gets_headers_and_a_big_body_is_413(started):
    import asyncio

    app = labotel.asgi_app()

    def call(method, path, chunks=(b"",)):
        sent = []
        messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
                    for i, c in enumerate(chunks)]

        async def receive():
            if messages:
                return messages.pop(0)
            await asyncio.sleep(30)  # a client that stays: no disconnect

        async def send(message):
            sent.append(message)

        asyncio.run(app({"type": "http", "method": method, "path": path, "headers": []},
                        receive, send))
        return sent[0]["status"], dict(sent[0]["headers"]), sent[1]["body"]

    status, headers, body = call("GET", "/debug/pprof/cmdline")
    assert call("HEAD", "/debug/pprof/cmdline") == (status, headers, b"")
    assert headers[b"content-length"] == str(len(body)).encode()
    status, _, body = call("POST", "/debug/pprof/symbol", [b"x" * (1 << 20), b"y"])
    assert status == 413 and b"over the limit" in body
