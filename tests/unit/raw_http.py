"""Raw HTTP/1.1 over a loopback socket: send exact bytes, read what comes back, split it
into responses. For the tests that must send what no well-behaved client would."""

from __future__ import annotations

import dataclasses
import re
import socket
import time

STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3}) [^\r\n]*\r\n")


@dataclasses.dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


@dataclasses.dataclass
class Exchange:
    data: bytes  # everything the server sent
    closed: bool  # the server closed the connection (EOF or reset) before the timeout
    seconds: float


def exchange(address: tuple[str, int], request: bytes, timeout: float = 5.0,
             half_close: bool = False, read_until_close: bool = True) -> Exchange:
    """Send ``request`` on a new connection and read until the server closes it (or, with
    ``read_until_close=False``, until one whole response arrived), at most ``timeout``."""
    started = time.monotonic()
    with socket.create_connection(address, timeout=timeout) as sock:
        try:
            sock.sendall(request)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may already have answered and closed
        data, closed = read(sock, started + timeout,
                            None if read_until_close else 1)
    return Exchange(data, closed, time.monotonic() - started)


def read(sock: socket.socket, deadline: float, responses: int | None = None,
         head_request: bool = False) -> tuple[bytes, bool]:
    data = b""
    while time.monotonic() < deadline:
        if responses is not None and len(split(data, head_request)) >= responses:
            return data, False
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except OSError:  # reset: closed
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


def split(data: bytes, head_request: bool = False) -> list[Reply]:
    """The whole responses at the start of ``data`` (bodies framed by Content-Length)."""
    replies = []
    while True:
        match = STATUS_LINE.match(data)
        end = data.find(b"\r\n\r\n")
        if match is None or end < 0:
            return replies
        headers = {}
        for line in data[match.end():end].split(b"\r\n"):
            if line:
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
        status = int(match.group(1))
        length = 0 if head_request or status in (100, 204, 304) else int(
            headers.get("content-length", "0"))
        if len(data) < end + 4 + length:
            return replies
        replies.append(Reply(status, headers, data[end + 4:end + 4 + length]))
        data = data[end + 4 + length:]


def request(method: str, path: str, headers: dict[str, str] | None = None,
            body: bytes = b"", version: str = "HTTP/1.1") -> bytes:
    lines = [f"{method} {path} {version}", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
