"""Where an OTLP/gRPC exporter's target connects, read the way gRPC reads it, for
``collector_check`` to ask: a host and port, or a Unix socket's path; None where labotel
cannot tell (then the collector is not asked, and the export goes ahead over gRPC).

gRPC takes a target without a scheme it knows as ``dns:///<target>`` and parses every
target as a URI: the part after ``?`` or ``#`` is a query or fragment, not the address, and
``%XX`` escapes are decoded (``unix:/run/my%20dir/s`` is the socket ``/run/my dir/s``,
``ipv6:[fe80::1%25eth0]:4317`` an address with its zone). Read otherwise, a collector gRPC
reaches was taken for a down one, and every export to it was dropped unsent.

gRPC sends TCP targets through an HTTP CONNECT proxy when ``grpc_proxy``, ``https_proxy``
or ``http_proxy`` is set (the first with a value) and the host is not in
``no_grpc_proxy``/``no_proxy``: such a collector is not asked (a direct connection may
fail where gRPC's succeeds; the collector's name may resolve only at the proxy).
"""

from __future__ import annotations

import os
import re
from urllib.parse import unquote

from labotel.digits import ascii_digits

Address = tuple[str, int] | str  # a host and port, or a Unix socket's path

_SCHEMES = ("dns", "ipv4", "ipv6", "unix", "unix-abstract")
_PROXY_VARIABLES = ("grpc_proxy", "https_proxy", "http_proxy")  # gRPC's order
_NO_PROXY_VARIABLES = ("no_grpc_proxy", "no_proxy")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def host_and_port(endpoint: str) -> tuple[str, int] | None:
    """``host:port`` or ``[v6]:port`` as a socket address; None for anything else (no
    port, a port that is not 1-65535 in ASCII digits)."""
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or "/" in endpoint:
        return None
    if not ascii_digits(port) or not 0 < int(port) < 65536:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        return None  # an IPv6 address without brackets is ambiguous
    return host, int(port)


def socket_address(target: str) -> Address | None:
    """Where a gRPC target connects: ``host:port``; gRPC's URI forms for one address
    (``dns:[//authority/]host:port``, ``ipv4:addr:port``, ``ipv6:[addr]:port``); a Unix
    socket (``unix:path``, ``unix:///abs/path``, ``unix-abstract:name``, the path
    returned as text, an abstract name with its leading NUL). None for what cannot be
    asked: no port (gRPC's default is not guessed), several addresses, other schemes."""
    scheme, sep, rest = target.partition(":")
    if not sep or scheme not in _SCHEMES:
        scheme, rest = "dns", target  # what gRPC makes of it: dns:///<target>
    if scheme == "dns" and rest.startswith("//"):
        rest = rest[2:].partition("/")[2]  # a DNS server named as authority: not used
    elif scheme == "unix" and rest.startswith("//"):
        rest = rest[2:]  # unix:///abs -> /abs
    rest = rest.partition("?")[0].partition("#")[0]
    if _BAD_ESCAPE.search(rest):
        return None  # gRPC refuses the target itself
    try:
        rest = unquote(rest, errors="strict")
    except UnicodeDecodeError:  # a path of bytes that are not UTF-8: not asked
        return None
    if scheme == "unix":
        return rest if rest and "\0" not in rest else None
    if scheme == "unix-abstract":
        return "\0" + rest if rest else None
    if "," in rest:
        return None  # ipv4:a:1,b:2 lists several addresses: which one is used is gRPC's
    return host_and_port(rest)


def proxied(host: str) -> bool:
    """Whether gRPC would reach ``host`` through an HTTP CONNECT proxy (its environment
    variables, read as gRPC reads them; upper-case names too, where some tools set
    them). A ``no_proxy`` entry labotel cannot read (an address range) counts as not
    matching: the collector is then not asked, which costs only the fast answer."""
    if not _first_set(_PROXY_VARIABLES):
        return False
    exempt = _first_set(_NO_PROXY_VARIABLES)
    host = host.lower().rstrip(".")
    for entry in exempt.split(","):
        entry = entry.strip().lower()
        if entry == "*":
            return False  # nothing goes through the proxy
        entry = entry.lstrip("*").strip(".")  # *.example.com, .example.com
        if entry and (host == entry or host.endswith("." + entry)):
            return False
    return True


def _first_set(names: tuple[str, ...]) -> str:
    for name in names:
        value = os.environ.get(name) or os.environ.get(name.upper())
        if value:
            return value
    return ""
