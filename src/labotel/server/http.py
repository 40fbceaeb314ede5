"""Framework-free request/response types and the router every transport shares."""

from __future__ import annotations

import dataclasses
import hmac
import json
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qs

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Mapping[str, str]  # lower-case names
    body: bytes = b""
    # Set when the client goes away (or the server stops) before the answer is sent: a
    # handler that waits (a profile's ?seconds=) stops waiting, as Go's request context ends.
    cancelled: threading.Event = dataclasses.field(default_factory=threading.Event)

    @classmethod
    def build(cls, method: str, path: str, query_string: str, headers: Mapping[str, str],
              body: bytes = b"", cancelled: threading.Event | None = None) -> Request:
        """A request as a transport sees it. Method names are case-sensitive (RFC 9110)."""
        query = parse_qs(query_string, keep_blank_values=True) if query_string else {}
        return cls(method, path or "/", query, {k.lower(): v for k, v in headers.items()},
                   body, cancelled or threading.Event())

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default

    def int_arg(self, name: str, default: int, minimum: int | None = None,
                maximum: int | None = None) -> int:
        """An integer query parameter; HTTPError 400 naming it when malformed or out of range."""
        raw = self.arg(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise HTTPError(400, f"invalid value for {name}: {_echo(repr(raw))} is not an "
                                 "integer") from None
        if minimum is not None and value < minimum:
            raise HTTPError(400, f"invalid value for {name}: {value} is below {minimum}")
        if maximum is not None and value > maximum:
            raise HTTPError(400, f"invalid value for {name}: {value} exceeds the maximum {maximum}")
        return value


@dataclasses.dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = dataclasses.field(default_factory=dict)

    def header_items(self) -> list[tuple[str, str]]:
        items = [("Content-Type", self.content_type), ("Content-Length", str(len(self.body)))]
        items.extend(self.headers.items())
        return items


class HTTPError(Exception):
    """Raised by a handler to answer ``status`` with a plain-text ``message``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def json_response(data: Any, status: int = 200) -> Response:
    body = json.dumps(data, indent=2, default=str).encode() + b"\n"
    return Response(status, body, "application/json")


def text_response(text: str, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(status, text.encode(), "text/plain; charset=utf-8", headers or {})


Handler = Callable[[Request], Response]
UNAUTHENTICATED_PATHS = frozenset({"/healthz"})
DEFAULT_MAX_BODY_BYTES = 1 << 20


class Router:
    """Exact-path and prefix routes, bearer-token check, errors turned into responses.

    Every transport (the debug server, ASGI, WSGI) hands it whole requests and sends what
    it returns; for HEAD the transport sends the headers of the GET answer without its
    body. ``max_body_bytes`` is the request-body limit every transport applies (413).
    """

    def __init__(self, token: str | None = None, on_error: Callable[[str], None] | None = None,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES):
        self._exact: dict[str, tuple[Handler, tuple[str, ...]]] = {}
        self._prefixes: list[tuple[str, Handler, tuple[str, ...]]] = []
        self._token = token
        self._on_error = on_error
        self.max_body_bytes = max_body_bytes

    def report_error(self, component: str) -> None:
        """Count a labotel failure in ``component`` (``labotel.internal.errors``, logged
        once by the reporter); without a reporter (the webhook receiver), log it."""
        if self._on_error:
            self._on_error(component)
        else:
            log.exception("labotel: %s failed", component)

    def add(self, path: str, handler: Handler, *, prefix: bool = False,
            methods: tuple[str, ...] = ("GET", "HEAD")) -> None:
        # Two owners of one path is a programming error: say so now, not by serving
        # whichever registered last.
        if prefix:
            if any(taken == path for taken, _, _ in self._prefixes):
                raise ValueError(f"labotel route {path}* is registered already")
            self._prefixes.append((path, handler, methods))
            self._prefixes.sort(key=lambda item: -len(item[0]))
        else:
            if path in self._exact:
                raise ValueError(f"labotel route {path} is registered already")
            self._exact[path] = (handler, methods)

    def has(self, path: str) -> bool:
        return path in self._exact or any(p == path for p, _, _ in self._prefixes)

    def paths(self) -> list[str]:
        return sorted(self._exact) + sorted(p + "*" for p, _, _ in self._prefixes)

    def handle(self, request: Request) -> Response:
        try:
            self._authorize(request)
            handler, methods = self._find(request.path)
            if request.method not in methods:
                raise HTTPError(405, f"method {_echo(request.method)} not allowed on "
                                     f"{_echo(request.path)}",
                                {"Allow": ", ".join(methods)})
            response = handler(request)
        except HTTPError as error:
            response = text_response(error.message + "\n", error.status, error.headers)
        except Exception:
            self.report_error("server")
            response = text_response("internal error in labotel debug route\n", 500)
        return response

    def _authorize(self, request: Request) -> None:
        if not self._token or request.path in UNAUTHENTICATED_PATHS:
            return
        supplied = request.headers.get("authorization", "")
        scheme, _, credential = supplied.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
                credential.strip().encode(), self._token.encode()):
            raise HTTPError(401, "missing or wrong bearer token (set Authorization: Bearer ...)",
                            {"WWW-Authenticate": 'Bearer realm="labotel"'})

    def _find(self, path: str) -> tuple[Handler, tuple[str, ...]]:
        if path in self._exact:
            return self._exact[path]
        for prefix, handler, methods in self._prefixes:
            if path.startswith(prefix):
                return handler, methods
        raise HTTPError(404, f"no such labotel endpoint: {_echo(path)}")


ECHO_CHARS = 100  # of the client's own input an error message repeats


def _echo(text: str) -> str:
    """The client's input as an error message repeats it: cut, so a pipelined request of
    3 KB does not come back whole in the answer (the fuzz test found a 3.4 KB method)."""
    return text if len(text) <= ECHO_CHARS else text[:ECHO_CHARS] + "..."
