"""The question labotel asks an OTLP/gRPC collector before an export attempt while it is
down (HTTP/2's preface, or a TLS hello), against real servers on loopback: gRPC servers
with and without TLS, a port that accepts and never answers, a refused port, an HTTP/1
server, and an abort from another thread."""

from __future__ import annotations

import http.server
import os
import socket
import threading
import time
from concurrent import futures

import grpc
import pytest

from labotel import collector_check, collector_target
from tests.fault_support import descriptors_past_1024
from tests.tls_support import self_signed_certificate


@pytest.mark.parametrize(("endpoint", "address"), [
    ("127.0.0.1:4317", ("127.0.0.1", 4317)),
    ("collector.internal:4317", ("collector.internal", 4317)),
    ("[::1]:4317", ("::1", 4317)),
    ("localhost", None),  # no port: gRPC's default is not guessed
    ("unix:///run/collector.sock", None),
    ("dns:///collector:4317", None),
    ("::1:4317", None),  # ambiguous without brackets
    ("collector:http", None),
    (":4317", None),
    ("collector:\u00b9", None),  # a digit to str.isdigit(), not to int()
    ("collector:99999", None),  # past 65535 (the socket would ask 99999 % 65536)
    ("collector:0", None),
])
def test_host_and_port_reads_only_host_and_port(endpoint, address):
    assert collector_target.host_and_port(endpoint) == address


@pytest.mark.parametrize(("target", "address"), [
    ("127.0.0.1:4317", ("127.0.0.1", 4317)),
    ("[::1]:4317", ("::1", 4317)),
    ("unix:///run/collector.sock", "/run/collector.sock"),
    ("unix:/run/collector.sock", "/run/collector.sock"),
    ("unix:collector.sock", "collector.sock"),  # relative to the working directory
    ("unix-abstract:otel", "\0otel"),
    ("dns:///collector:4317", ("collector", 4317)),
    ("dns://8.8.8.8/collector:4317", ("collector", 4317)),  # the DNS server is gRPC's
    ("dns:collector:4317", ("collector", 4317)),
    ("ipv4:10.0.0.1:4317", ("10.0.0.1", 4317)),
    ("ipv6:[::1]:4317", ("::1", 4317)),
    ("ipv4:10.0.0.1:4317,10.0.0.2:4317", None),  # several: which one is gRPC's choice
    ("dns:///collector", None),  # no port
    ("localhost", None),
    ("unix:", None),
    ("unix:bad\0path", None),
    ("xds:///collector", None),  # another resolver
    ("collector:http", None),
    # gRPC parses targets as URIs: %-escapes decoded, query and fragment not the address
    ("unix:/run/my%20dir/collector.sock", "/run/my dir/collector.sock"),
    ("unix:///run/collector.sock?x=1#y", "/run/collector.sock"),
    ("unix-abstract:otel%00x", "\0otel\0x"),
    ("ipv6:[fe80::1%25eth0]:4317", ("fe80::1%eth0", 4317)),
    ("dns:///collector%2Einternal:4317", ("collector.internal", 4317)),
    ("unix:/run/bad%zzescape", None),  # gRPC refuses the target
    ("unix:/run/%ff%fe", None),  # not UTF-8: not asked
    ("localhost:99999999999999999999", None),
])
def test_which_grpc_targets_are_asked_and_where(target, address):
    assert collector_target.socket_address(target) == address


@pytest.fixture
def grpc_server_port():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))  # no service at all
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(0)


@pytest.fixture
def silent_port():
    """Accepts connections (the kernel's backlog does) and never reads nor answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


def test_a_grpc_server_answers_even_with_no_service(grpc_server_port):
    began = time.monotonic()
    assert collector_check.Check(("127.0.0.1", grpc_server_port), wait=5).answers()
    assert time.monotonic() - began < 0.5


def test_a_server_answers_a_process_that_holds_over_1024_descriptors(
        grpc_server_port, silent_port):
    """select() cannot watch a descriptor past 1023: the question failed at once, as if
    refused, and a collector that answers was taken for one that is down."""
    with descriptors_past_1024():
        assert collector_check.Check(("127.0.0.1", grpc_server_port), wait=5).answers()
        silent = collector_check.Check(("127.0.0.1", silent_port), wait=0.3)
        assert not silent.answers() and silent.ran_out  # waited, not failed at once


@pytest.fixture
def grpc_server_socket(tmp_path):
    """A gRPC server (no service) on a Unix socket: its path."""
    path = str(tmp_path / "collector.sock")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    server.add_insecure_port("unix:" + path)
    server.start()
    try:
        yield path
    finally:
        server.stop(0)


def test_a_grpc_server_on_a_unix_socket_answers(grpc_server_socket):
    assert collector_check.Check(grpc_server_socket, wait=5).answers()


def test_a_unix_socket_that_accepts_and_never_answers_does_not_answer(tmp_path):
    path = str(tmp_path / "silent.sock")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        listener.listen(16)
        check = collector_check.Check(path, wait=0.3)
        began = time.monotonic()
        assert not check.answers()
        assert 0.25 <= time.monotonic() - began < 2 and check.ran_out


def test_a_unix_socket_nobody_listens_on_does_not_answer_at_once(tmp_path):
    for path in (str(tmp_path / "missing.sock"), f"\0labotel-test-nobody-{os.getpid()}"):
        check = collector_check.Check(path, wait=5)
        began = time.monotonic()
        assert not check.answers()
        assert time.monotonic() - began < 0.5 and not check.ran_out


def test_a_port_that_accepts_and_never_answers_does_not_answer_within_the_wait(silent_port):
    began = time.monotonic()
    assert not collector_check.Check(("127.0.0.1", silent_port), wait=0.3).answers()
    took = time.monotonic() - began
    assert 0.25 <= took < 1.5, took


def test_a_refused_port_does_not_answer_at_once():
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        began = time.monotonic()
        refused = collector_check.Check(("127.0.0.1", closed.getsockname()[1]), wait=5)
        assert not refused.answers()
    assert time.monotonic() - began < 0.5


def test_an_http1_server_is_not_taken_for_a_collector():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert not collector_check.Check(("127.0.0.1", server.server_address[1]),
                                          wait=5).answers()
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(params=[False, True], ids=["server-auth", "mutual-tls"])
def tls_grpc_server_port(request, tmp_path):
    """A gRPC server with no service over TLS; ``mutual-tls`` also demands a client
    certificate, which the question never has."""
    certificate, key = self_signed_certificate(tmp_path)
    credentials = grpc.ssl_server_credentials(
        [(key.read_bytes(), certificate.read_bytes())],
        root_certificates=certificate.read_bytes() if request.param else None,
        require_client_auth=request.param)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        yield port
    finally:
        server.stop(0)


def test_a_tls_grpc_server_on_a_unix_socket_answers_the_tls_hello(tmp_path):
    certificate, key = self_signed_certificate(tmp_path)
    credentials = grpc.ssl_server_credentials([(key.read_bytes(), certificate.read_bytes())])
    path = str(tmp_path / "tls.sock")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    server.add_secure_port("unix:" + path, credentials)
    server.start()
    try:
        assert collector_check.Check(path, wait=5, tls=True).answers()
        assert not collector_check.Check(path, wait=0.5, tls=False).answers()  # not HTTP/2
    finally:
        server.stop(0)


def test_a_tls_grpc_server_answers_the_tls_hello(tls_grpc_server_port):
    """Its certificate is not checked (the attempt does that with the exporter's own
    credentials), and a server that wants a client certificate answers the hello too."""
    began = time.monotonic()
    assert collector_check.Check(("127.0.0.1", tls_grpc_server_port), wait=5,
                                 tls=True).answers()
    assert time.monotonic() - began < 0.5


def test_each_protocol_is_asked_of_its_own_kind_of_server(grpc_server_port, tmp_path):
    """A plaintext gRPC server does not answer a TLS hello as TLS, nor a TLS server the
    HTTP/2 preface as HTTP/2: the attempt would fail, so there is no point starting it."""
    assert not collector_check.Check(("127.0.0.1", grpc_server_port), wait=2,
                                     tls=True).answers()
    certificate, key = self_signed_certificate(tmp_path)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials(
        [(key.read_bytes(), certificate.read_bytes())]))
    server.start()
    try:
        assert not collector_check.Check(("127.0.0.1", port), wait=2).answers()
    finally:
        server.stop(0)


def test_a_silent_port_does_not_answer_a_tls_hello_within_the_wait(silent_port):
    began = time.monotonic()
    assert not collector_check.Check(("127.0.0.1", silent_port), wait=0.3, tls=True).answers()
    assert 0.25 <= time.monotonic() - began < 1.5


def test_the_tls_hello_offers_http2_and_names_the_server():
    hello = collector_check.client_hello("collector.internal")
    assert hello[0] == 22 and hello[5] == 1  # a handshake record holding a ClientHello
    assert b"\x02h2" in hello and b"collector.internal" in hello  # ALPN and SNI


@pytest.mark.parametrize("name", ["a..b", "x" * 64 + ".example", "bad\x00name"])
def test_a_name_a_tls_hello_cannot_carry_is_not_asked(name):
    """A server name ssl will not put in a hello is left to the attempt (True, at once, no
    connection tried), as a Unix socket is: taking it for a silent collector would keep
    the exporter from ever trying it."""
    began = time.monotonic()
    assert collector_check.Check((name, 4317), wait=5, tls=True).answers()
    assert time.monotonic() - began < 0.5


def test_abort_ends_a_check_waiting_on_a_silent_port(silent_port):
    check = collector_check.Check(("127.0.0.1", silent_port), wait=30)
    outcome: list[tuple[bool, float]] = []

    def ask() -> None:
        began = time.monotonic()
        outcome.append((check.answers(), time.monotonic() - began))

    asker = threading.Thread(target=ask)
    asker.start()
    time.sleep(0.3)
    check.abort()
    asker.join(5)
    assert not asker.is_alive()
    assert outcome and outcome[0][0] is False and outcome[0][1] < 2, outcome


def test_abort_ends_a_check_whose_connection_is_still_being_made():
    """A listener whose backlog is full drops new SYNs, as a firewalled host does: the
    connection itself hangs, and abort() still ends the check (before: a blocking
    connect() ran out the whole wait, and a shutdown left the export thread behind)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(listener.getsockname())
        fillers.append(filler)
    time.sleep(0.2)
    check = collector_check.Check(listener.getsockname(), wait=30)
    outcome: list[tuple[bool, float]] = []

    def ask() -> None:
        began = time.monotonic()
        outcome.append((check.answers(), time.monotonic() - began))

    asker = threading.Thread(target=ask)
    try:
        asker.start()
        time.sleep(0.5)
        assert asker.is_alive()  # still connecting
        check.abort()
        asker.join(5)
        assert not asker.is_alive()
        assert outcome and outcome[0][0] is False and outcome[0][1] < 2, outcome
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def test_an_aborted_check_asks_nothing(grpc_server_port):
    check = collector_check.Check(("127.0.0.1", grpc_server_port), wait=5)
    check.abort()
    assert not check.answers()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_closes_its_copy_of_a_check_the_parent_is_running(silent_port):
    """labotel's after-fork hook closes the child's copy of the socket (the asking thread
    is not in the child) and leaves the parent's question running."""
    import labotel

    labotel.start(admin_address="", runtime_metrics=False, leak_detection=False)
    check = collector_check.Check(("127.0.0.1", silent_port), wait=10)
    asker = threading.Thread(target=check.answers)
    asker.start()
    try:
        give_up = time.monotonic() + 5
        while not check._sockets and time.monotonic() < give_up:
            time.sleep(0.01)
        fd = check._sockets[0].fileno()
        pid = os.fork()
        if pid == 0:
            try:
                os.fstat(fd)
            except OSError:
                os._exit(0)  # closed in the child
            os._exit(1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert os.fstat(fd) is not None and asker.is_alive()  # the parent's is still open
    finally:
        check.abort()
        asker.join(5)
        labotel.shutdown()
    assert not asker.is_alive()


# A server's first flight: HTTP/2 SETTINGS with a payload, its ACK of the client's SETTINGS
# and a WINDOW_UPDATE; for TLS, a handshake record with more behind it (certificates).
SETTINGS_AND_MORE = (b"\x00\x00\x06\x04\x00\x00\x00\x00\x00" + b"\x00\x03\x00\x00\x00\x64"
                     + b"\x00\x00\x00\x04\x01\x00\x00\x00\x00"
                     + b"\x00\x00\x04\x08\x00\x00\x00\x00\x00" + b"\x00\x0f\x00\x01")
HANDSHAKE_AND_MORE = b"\x16\x03\x03\x07\xd0" + bytes(2000)


@pytest.mark.parametrize(("tls", "reply"), [(False, SETTINGS_AND_MORE),
                                            (True, HANDSHAKE_AND_MORE)],
                         ids=["http2", "tls"])
def test_an_answered_question_ends_with_a_clean_close_not_a_reset(tls, reply):
    """The check reads only the first bytes of the answer; closing with the rest unread
    would reset the connection, which a collector may log as an error at every question
    (grpc-go: "connection reset by peer" at warning). It closes its side first and reads
    until the server closes, so the server reads a clean end of stream."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    ending: list[str] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(reply)
            try:
                while conn.recv(65536):
                    pass
                ending.append("end of stream")
            except ConnectionResetError:
                ending.append("reset")

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        check = collector_check.Check(("127.0.0.1", listener.getsockname()[1]), 2.0, tls=tls)
        assert check.answers()
        assert not check.ran_out
        server.join(5)
        assert ending == ["end of stream"]
    finally:
        listener.close()


@pytest.mark.parametrize(("environment", "host", "proxied"), [
    ({}, "collector", False),
    ({"grpc_proxy": "http://proxy:3128"}, "collector", True),
    ({"https_proxy": "http://proxy:3128"}, "collector", True),
    ({"HTTP_PROXY": "http://proxy:3128"}, "collector", True),
    ({"grpc_proxy": "http://proxy:3128", "no_proxy": "collector"}, "collector", False),
    ({"grpc_proxy": "http://proxy:3128", "no_proxy": ".internal"}, "c.internal", False),
    ({"grpc_proxy": "http://proxy:3128", "no_proxy": "*.internal"}, "c.internal", False),
    ({"grpc_proxy": "http://proxy:3128", "no_proxy": "*"}, "collector", False),
    ({"grpc_proxy": "http://proxy:3128", "no_proxy": "other"}, "collector", True),
    # gRPC reads the first of no_grpc_proxy, no_proxy that has a value
    ({"grpc_proxy": "http://p:1", "no_grpc_proxy": "x", "no_proxy": "collector"},
     "collector", True),
    # an address range is not read: not asked, which costs only the fast answer
    ({"grpc_proxy": "http://p:1", "no_proxy": "10.0.0.0/8"}, "10.0.0.1", True),
])
def test_a_collector_grpc_reaches_through_a_proxy_is_known_as_proxied(
        monkeypatch, environment, host, proxied):
    for name in ("grpc_proxy", "https_proxy", "http_proxy", "no_grpc_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert collector_target.proxied(host) is proxied


@pytest.fixture
def resolver(monkeypatch):
    """Names the test gives addresses to, or a lookup time (a name server that is slow
    or does not answer); every other lookup is the system's."""
    names: dict[str, object] = {}
    system = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        found = names.get(host)
        if kwargs.get("flags", 0) & socket.AI_NUMERICHOST:  # no name server is asked
            return system(host, port, *args, **kwargs)
        if isinstance(found, float):
            time.sleep(found)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        if found is not None:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))
                    for address in found]
        return system(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return names


def test_every_address_of_a_name_is_tried_not_only_the_first(resolver):
    """A name with two addresses, the first refusing (a collector on ``localhost``
    listening on IPv4 only, where ``::1`` comes first): gRPC goes on to the next, and so
    does the question. Before, only the first was asked: taken for a down collector."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    port = server.add_insecure_port("127.0.0.2:0")  # nothing at 127.0.0.1 on that port
    server.start()
    try:
        resolver["collector.test"] = ["127.0.0.1", "127.0.0.2"]
        assert collector_check.Check(("collector.test", port), wait=5).answers()
        resolver["collector.test"] = ["127.0.0.1"]
        check = collector_check.Check(("collector.test", port), wait=5)
        assert not check.answers() and not check.ran_out  # refused, not silent
    finally:
        server.stop(0)


def test_a_name_server_that_does_not_answer_holds_a_question_no_longer_than_its_wait(
        resolver):
    """``getaddrinfo`` cannot be interrupted, and a name server that does not answer holds
    it 5 s or more per try: the lookup runs on a thread of its own, and the question ends at
    its wait, or at once when aborted, while a later question waits for the same lookup
    instead of starting another."""
    resolver["slow.test"] = 2.0
    began = time.monotonic()
    check = collector_check.Check(("slow.test", 4317), wait=0.3)
    assert not check.answers() and check.ran_out
    assert time.monotonic() - began < 1.0
    lookups = [t for t in threading.enumerate() if t.name == "labotel-collector-lookup"]
    assert len(lookups) == 1
    check = collector_check.Check(("slow.test", 4317), wait=10)
    threading.Timer(0.2, check.abort).start()
    began = time.monotonic()
    assert not check.answers()
    assert time.monotonic() - began < 1.0
    assert [t for t in threading.enumerate()
            if t.name == "labotel-collector-lookup"] == lookups  # the same lookup waited for
    lookups[0].join(5)


def test_an_address_of_a_family_the_host_has_not_is_passed_over(resolver, monkeypatch):
    """A name with an IPv6 address first, on a host with IPv6 turned off (the socket
    cannot even be made): the next address is asked, as gRPC does."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    system_socket = socket.socket

    def no_ipv6(family=socket.AF_INET, *args, **kwargs):
        if family == socket.AF_INET6:
            raise OSError(97, "Address family not supported by protocol")
        return system_socket(family, *args, **kwargs)

    monkeypatch.setattr(socket, "socket", no_ipv6)
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, port, *a, **k: [
        (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", port, 0, 0)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))])
    try:
        assert collector_check.Check(("collector.test", port), wait=5).answers()
    finally:
        server.stop(0)
