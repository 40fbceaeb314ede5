"""HTTP/1.1 on the wire, strictly, for the subset the debug server implements.

A request head is parsed from bytes already buffered (the server reads without blocking
a thread per client), following RFC 9112 where it says MUST: token methods and field
names, field values without control characters, no whitespace before the colon, no
obsolete line folding, one Host on HTTP/1.1, one unambiguous Content-Length. Bodies are
only ever framed by Content-Length: any Transfer-Encoding is refused (411 for chunked,
501 for the rest), so a body can never be read as another request. Lines may end in
CRLF or bare LF (RFC 9112 section 2.2 allows it); a bare CR is an error.

Everything malformed raises ``ProtocolError`` with the status to answer; the connection
is then closed, since what follows on it can no longer be framed.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Iterable
from http import HTTPStatus
from urllib.parse import unquote, urlsplit

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/([0-9])\.([0-9])")
# A field value is visible ASCII, obs-text, spaces and tabs; stripped afterwards (a regex
# that trimmed it would backtrack quadratically on long runs of blanks).
_FIELD_LINE = re.compile(rb"(" + _TOKEN + rb"):([\t \x21-\x7e\x80-\xff]*)")
_DIGITS = re.compile(r"[0-9]{1,18}")
MAX_HEADER_COUNT = 100
TLS_HANDSHAKE = 0x16  # first byte of a TLS ClientHello


class ProtocolError(Exception):
    """A request the server will not serve: answer ``status`` with ``message``, then close."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


@dataclasses.dataclass
class RequestHead:
    method: str
    path: str  # percent-decoded, as ASGI's scope["path"] and WSGI's PATH_INFO are
    query: str
    version: tuple[int, int]
    headers: dict[str, str]  # lower-case names; repeated fields joined with ", "
    content_length: int
    keep_alive: bool
    expect_continue: bool


def head_end(buffer: bytes | bytearray, start: int = 0) -> int:
    """The offset just past the blank line that ends the head, or -1 while incomplete."""
    crlf = buffer.find(b"\n\r\n", start)
    lf = buffer.find(b"\n\n", start)
    if crlf < 0 and lf < 0:
        return -1
    if lf < 0 or 0 <= crlf < lf:
        return crlf + 3
    return lf + 2


def check_incomplete(buffer: bytes | bytearray, max_request_line: int,
                     max_header_bytes: int) -> None:
    """Refuse a head still incomplete once it already exceeds a limit (414, 431)."""
    line_end = buffer.find(b"\n", 0, max_request_line + 2)
    if line_end < 0 and len(buffer) > max_request_line + 1:
        raise ProtocolError(414, f"request line longer than {max_request_line} bytes")
    if len(buffer) > max_header_bytes:
        raise ProtocolError(431, f"request line and headers longer than {max_header_bytes} bytes")


def parse_head(head: bytes, max_request_line: int, max_header_bytes: int,
               max_body_bytes: int) -> RequestHead:
    """The request in ``head`` (request line through the blank line), checked strictly."""
    lines = head.split(b"\n")
    del lines[-2:]  # the blank line and what follows its LF
    lines = [line[:-1] if line.endswith(b"\r") else line for line in lines]
    if len(lines[0]) > max_request_line:
        raise ProtocolError(414, f"request line longer than {max_request_line} bytes")
    if len(head) > max_header_bytes:
        raise ProtocolError(431, f"request line and headers longer than {max_header_bytes} bytes")
    if len(lines) - 1 > MAX_HEADER_COUNT:
        raise ProtocolError(431, f"more than {MAX_HEADER_COUNT} header fields")
    match = _REQUEST_LINE.fullmatch(lines[0])
    if match is None:
        raise ProtocolError(400, "malformed request line (expected: METHOD /path HTTP/1.1)")
    version = (int(match.group(3)), int(match.group(4)))
    if version not in ((1, 1), (1, 0)):
        raise ProtocolError(505, "only HTTP/1.1 and HTTP/1.0 are served")
    method = match.group(1).decode("ascii")
    path, query = _split_target(match.group(2).decode("ascii"), method)
    headers, lengths, hosts = _fields(lines[1:])
    if version == (1, 1) and hosts != 1:
        raise ProtocolError(400, "an HTTP/1.1 request needs exactly one Host header"
                            if hosts else "missing required Host header")
    if "transfer-encoding" in headers:
        codings = [c.strip().lower() for c in headers["transfer-encoding"].split(",")]
        if codings[-1] == "chunked":
            raise ProtocolError(411, "chunked request bodies are not accepted: send the body "
                                     "with a Content-Length")
        raise ProtocolError(501, f"Transfer-Encoding {headers['transfer-encoding']!r} is not "
                                 "implemented")
    content_length = _content_length(lengths, max_body_bytes)
    connection = {token.strip().lower() for token in headers.get("connection", "").split(",")}
    keep_alive = "close" not in connection if version == (1, 1) else "keep-alive" in connection
    expect = headers.get("expect")
    if expect is not None and expect.lower() != "100-continue":
        raise ProtocolError(417, f"unsupported Expect: {expect!r}")
    return RequestHead(method, path, query, version, headers, content_length, keep_alive,
                       expect is not None and version == (1, 1) and content_length > 0)


def _split_target(target: str, method: str) -> tuple[str, str]:
    if target.startswith("/"):
        path, _, query = target.partition("?")
        path = path.partition("#")[0]
        query = query.partition("#")[0]
    elif target.lower().startswith(("http://", "https://")):  # absolute form (RFC 9112 3.2.2)
        parts = urlsplit(target)
        path, query = parts.path or "/", parts.query
    elif target == "*" and method == "OPTIONS":
        return "*", ""
    else:
        raise ProtocolError(400, "malformed request target (expected a path such as /metrics)")
    return unquote(path, errors="replace"), query


def _fields(lines: list[bytes]) -> tuple[dict[str, str], list[str], int]:
    headers: dict[str, str] = {}
    lengths: list[str] = []
    hosts = 0
    for line in lines:
        match = _FIELD_LINE.fullmatch(line)
        if match is None:
            if line[:1] in (b" ", b"\t"):
                raise ProtocolError(400, "obsolete line folding in a header is not accepted")
            raise ProtocolError(400, "malformed header line (expected: Name: value)")
        name = match.group(1).decode("ascii").lower()
        value = match.group(2).strip(b" \t").decode("latin-1")
        if name == "content-length":
            lengths.extend(item.strip() for item in value.split(","))
        elif name == "host":
            hosts += 1
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers, lengths, hosts


def _content_length(values: list[str], max_body_bytes: int) -> int:
    if not values:
        return 0
    if any(_DIGITS.fullmatch(value) is None for value in values):
        raise ProtocolError(400, "invalid Content-Length (expected a non-negative integer)")
    if len(set(map(int, values))) != 1:
        raise ProtocolError(400, "conflicting Content-Length values")
    length = int(values[0])
    if length > max_body_bytes:
        raise ProtocolError(413, f"request body over the limit of {max_body_bytes} bytes "
                                 f"(Content-Length: {length})")
    return length


# -- responses ------------------------------------------------------------------------
_REASONS = {status.value: status.phrase for status in HTTPStatus}
_date = (0, b"")  # (second, formatted): the Date header changes once a second
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def http_date() -> bytes:
    global _date
    second = int(time.time())
    if second != _date[0]:
        _date = (second, time.strftime("%a, %d %b %Y %H:%M:%S GMT",
                                       time.gmtime(second)).encode("ascii"))
    return _date[1]


def response_head(status: int, headers: Iterable[tuple[str, str]], keep_alive: bool,
                  version: tuple[int, int] = (1, 1)) -> bytes:
    """Status line and header block; ``headers`` must include Content-Length.

    A later header of the same name as an earlier one is dropped, and a value with a
    line break or control character is never written (it could split the response).
    """
    lines = [b"HTTP/1.1 %d %s" % (status, _REASONS.get(status, "Unknown").encode("ascii"))]
    seen: set[str] = set()
    for name, value in headers:
        key = name.lower()
        if key in seen or _BAD_VALUE.search(name) or _BAD_VALUE.search(value):
            continue
        seen.add(key)
        lines.append(f"{name}: {value}".encode("latin-1", "replace"))
    lines.append(b"Date: " + http_date())
    lines.append(b"Server: labotel")
    if not keep_alive:
        lines.append(b"Connection: close")
    elif version == (1, 0):
        lines.append(b"Connection: keep-alive")
    lines.append(b"\r\n")
    return b"\r\n".join(lines)


def error_response(status: int, message: str, headers: dict[str, str] | None = None,
                   keep_alive: bool = False, head_request: bool = False) -> bytes:
    """A whole short plain-text answer (status, one line of explanation); to a HEAD
    request, its headers only."""
    body = (message.rstrip("\n") + "\n").encode("utf-8", "replace")
    items = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))),
             ("X-Content-Type-Options", "nosniff"), *(headers or {}).items()]
    return response_head(status, items, keep_alive) + (b"" if head_request else body)
