"""The stdlib debug HTTP server on ``admin_address`` (a daemon thread)."""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from labotel.config import parse_address
from labotel.server.http import Request, Router

log = logging.getLogger("labotel")
MAX_BODY = 1 << 20


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(address: str, token: str | None, allow_insecure: bool) -> None:
    """Refuse a non-loopback bind without a token unless explicitly allowed."""
    host, _ = parse_address(address)
    if is_loopback(host):
        return
    if token:
        log.warning("labotel: debug server on %s (not loopback); bearer token required", address)
    elif allow_insecure:
        log.warning("labotel: debug server on %s is reachable off this host WITHOUT a token "
                    "(admin_allow_insecure is set): anyone who can reach it can read "
                    "profiles and thread stacks", address)
    else:
        raise ValueError(
            f"admin_address: {address!r} is not a loopback address; set admin_token "
            "(LABOTEL_ADMIN_TOKEN) or admin_allow_insecure=True (LABOTEL_ADMIN_ALLOW_INSECURE=1)")


def make_handler(router: Router) -> type[BaseHTTPRequestHandler]:
    _date: list = [None, ""]  # (second, formatted) shared by the server's connections

    class Handler(BaseHTTPRequestHandler):
        server_version = "labotel"
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # keep-alive scrapes: no 40 ms delayed-ACK stall
        wbufsize = 1 << 16  # status, headers and body leave in one send, not two

        def handle_expect_100(self) -> bool:
            answered = super().handle_expect_100()
            self.wfile.flush()  # the client waits for this before sending its body
            return answered

        def date_time_string(self, timestamp: float | None = None) -> str:
            if timestamp is not None:
                return super().date_time_string(timestamp)
            second = int(time.time())  # the Date header changes once a second: format it once
            if second != _date[0]:
                _date[:] = [second, super().date_time_string(second)]
            return _date[1]

        def _serve(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self.send_error(413, "request body too large")
                return
            body = self.rfile.read(length) if length else b""
            request = Request.build(self.command, parts.path, parts.query, self.headers, body)
            response = router.handle(request)
            self.send_response(response.status)
            sent = set()
            for name, value in response.header_items():
                if name.lower() in sent:
                    continue
                sent.add(name.lower())
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(response.body)

        do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = _serve

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            log.debug("labotel debug server: " + format, *args)

    return Handler


class DebugServer:
    def __init__(self, address: str, router: Router, thread_name: str = "labotel-debug-server"):
        host, port = parse_address(address)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET

        class Server(ThreadingHTTPServer):
            address_family = family
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server((host, port), make_handler(router))
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.2},
                                        name=thread_name, daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return host, port

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def start(self) -> None:
        self._thread.start()

    def abandon(self) -> None:
        """In a forked child: close the child's copy of the parent's listening socket.

        The serving thread stayed in the parent; the child must not hold the port open.
        """
        self._server.socket.close()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
