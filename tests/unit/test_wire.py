"""The strict HTTP/1.1 head parser and response writer (server/wire.py), without sockets."""

import pytest

from labotel.server import wire

LIMITS = dict(max_request_line=8192, max_header_bytes=16384, max_body_bytes=1 << 20)


def parse(head: bytes, **limits) -> wire.RequestHead:
    return wire.parse_head(head, **{**LIMITS, **limits})


def test_a_plain_request():
    head = parse(b"GET /debug/pprof/profile?seconds=5&x=%41 HTTP/1.1\r\nHost: h\r\n"
                 b"Accept:  text/plain \r\nX-A: 1\r\nx-a: 2\r\n\r\n")
    assert (head.method, head.path, head.query) == ("GET", "/debug/pprof/profile",
                                                     "seconds=5&x=%41")
    assert head.headers == {"host": "h", "accept": "text/plain", "x-a": "1, 2"}
    assert (head.version, head.content_length, head.keep_alive) == ((1, 1), 0, True)


@pytest.mark.parametrize("head, keep_alive", [
    (b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", False),
    (b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Keep-Alive, CLOSE\r\n\r\n", False),
    (b"GET / HTTP/1.0\r\n\r\n", False),
    (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", True),
])
def test_keep_alive_follows_the_version_and_connection_header(head, keep_alive):
    assert parse(head).keep_alive is keep_alive


def test_bare_lf_line_ends_and_absolute_targets_are_accepted():
    head = parse(b"GET http://h:6060/metrics%2Fx?a=1 HTTP/1.1\nHost: h\n\n")
    assert (head.path, head.query) == ("/metrics/x", "a=1")
    assert wire.head_end(b"GET / HTTP/1.1\nHost: h\n\nrest") == len(b"GET / HTTP/1.1\nHost: h\n\n")


@pytest.mark.parametrize("head, status, words", [
    (b"GET /\r\n\r\n", 400, "malformed request line"),  # HTTP/0.9
    (b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n", 400, "malformed request line"),
    (b"GET / HTTP/1.1 \r\nHost: h\r\n\r\n", 400, "malformed request line"),
    (b"G(T / HTTP/1.1\r\nHost: h\r\n\r\n", 400, "malformed request line"),
    (b"GET /\x7f HTTP/1.1\r\nHost: h\r\n\r\n", 400, "malformed request line"),
    (b"GET /\xff HTTP/1.1\r\nHost: h\r\n\r\n", 400, "malformed request line"),
    (b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505, "HTTP/1.1"),
    (b"GET / HTTP/1.2\r\nHost: h\r\n\r\n", 505, "HTTP/1.1"),
    (b"GET metrics HTTP/1.1\r\nHost: h\r\n\r\n", 400, "request target"),
    (b"GET * HTTP/1.1\r\nHost: h\r\n\r\n", 400, "request target"),
    (b"GET / HTTP/1.1\r\n\r\n", 400, "missing required Host"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "exactly one Host"),
    (b"GET / HTTP/1.1\r\nHost : h\r\n\r\n", 400, "malformed header line"),
    (b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n", 400, "line folding"),
    (b"GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n", 400, "malformed header line"),
    (b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n", 400, "malformed header line"),
    (b"GET / HTTP/1.1\r\nHost: h\r\nno colon\r\n\r\n", 400, "malformed header line"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: abc\r\n\r\n", 400, "invalid Content-Length"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n", 400, "invalid Content-Length"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\n", 400, "invalid Content-Length"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1e3\r\n\r\n", 400, "invalid Content-Length"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999\r\n\r\n", 400,
     "invalid Content-Length"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400,
     "conflicting"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 6\r\n\r\n", 400, "conflicting"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n", 411, "chunked"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3"
     b"\r\n\r\n", 411, "chunked"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n", 501, "not implemented"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1048577\r\n\r\n", 413, "over the limit"),
    (b"GET / HTTP/1.1\r\nHost: h\r\nExpect: 200-ok\r\n\r\n", 417, "Expect"),
    (b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X: y\r\n" * 101 + b"\r\n", 431, "header fields"),
])
def test_what_the_server_refuses(head, status, words):
    with pytest.raises(wire.ProtocolError) as error:
        parse(head)
    assert error.value.status == status and words in error.value.message


def test_duplicate_equal_content_lengths_are_one():
    head = parse(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\ncontent-length: 5, 5\r\n\r\n")
    assert head.content_length == 5


def test_expect_100_continue_only_with_a_body_on_http_1_1():
    assert parse(b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n"
                 b"Content-Length: 3\r\n\r\n").expect_continue
    assert not parse(b"GET / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n").expect_continue


def test_limits_on_line_and_head_while_incomplete():
    wire.check_incomplete(b"GET /" + b"a" * 100, max_request_line=200, max_header_bytes=400)
    with pytest.raises(wire.ProtocolError) as error:
        wire.check_incomplete(b"GET /" + b"a" * 300, max_request_line=200, max_header_bytes=400)
    assert error.value.status == 414
    with pytest.raises(wire.ProtocolError) as error:
        wire.check_incomplete(b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 100, max_request_line=200,
                              max_header_bytes=400)
    assert error.value.status == 431
    with pytest.raises(wire.ProtocolError) as error:
        parse(b"GET /" + b"a" * 300 + b" HTTP/1.1\r\nHost: h\r\n\r\n", max_request_line=200)
    assert error.value.status == 414


def test_long_runs_of_blanks_parse_in_linear_time():
    import time

    blanks = b" \t" * 8000
    started = time.process_time()
    head = parse(b"GET / HTTP/1.1\r\nHost: h\r\nX: a" + blanks + b"b" + blanks + b"\r\n\r\n",
                 max_header_bytes=40000)
    assert head.headers["x"].startswith("a ") and head.headers["x"].endswith("b")
    assert time.process_time() - started < 1  # a backtracking regex takes minutes here


def test_response_head_writes_each_header_once_and_never_a_line_break():
    data = wire.response_head(200, [("Content-Type", "text/plain"), ("Content-Length", "3"),
                                    ("content-length", "0"), ("X-Bad", "a\r\nSet-Cookie: x")],
                              keep_alive=False)
    lines = data.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 200 OK"
    assert "Content-Length: 3" in lines and "content-length: 0" not in lines
    assert not any("Set-Cookie" in line for line in lines)
    assert "Connection: close" in lines and data.endswith(b"\r\n\r\n")
    http10 = wire.response_head(200, [("Content-Length", "0")], keep_alive=True, version=(1, 0))
    assert b"Connection: keep-alive" in http10


def test_error_response_is_short_plain_text():
    data = wire.error_response(503, "busy", {"Retry-After": "1"})
    head, body = data.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 503 Service Unavailable")
    assert b"Content-Type: text/plain; charset=utf-8" in head and b"Retry-After: 1" in head
    assert body == b"busy\n" and b"Content-Length: 5" in head
