"""labotel's canary descriptor: a number the application closed, or closed and reused, is
noticed once, and each registered owner is told on the thread that noticed it."""

from __future__ import annotations

import os
import threading

import pytest

import labotel
from labotel import descriptors, monitor


@pytest.fixture
def canary(monkeypatch):
    """A canary of this test's own (the process's real one is left alone)."""
    monkeypatch.setattr(descriptors, "_canary", None)
    monkeypatch.setattr(descriptors, "_reactions", {})
    monkeypatch.setattr(descriptors, "losses", 0)
    descriptors.watch()
    yield descriptors._canary
    if descriptors._canary is not None:
        os.close(descriptors._canary[0])


def test_an_intact_canary_says_nothing(canary):
    told = []
    descriptors.on_lost("owner", lambda: told.append(1))
    assert descriptors.check() is False
    assert told == [] and descriptors.losses == 0


def test_a_closed_and_reused_number_is_noticed_once(canary, tmp_path):
    told = []
    descriptors.on_lost("owner", lambda: told.append(threading.get_ident()))
    os.close(canary[0])
    reused = os.open(tmp_path / "app.log", os.O_WRONLY | os.O_CREAT)  # takes the number
    try:
        assert reused == canary[0]
        assert descriptors.check() is True
        assert told == [threading.get_ident()]
        assert descriptors.check() is False  # a new canary: the loss is told once
        assert descriptors.losses == 1
        os.write(reused, b"still the application's")  # the number was not closed
    finally:
        os.close(reused)
    assert (tmp_path / "app.log").read_bytes() == b"still the application's"


def test_a_failing_owner_does_not_stop_the_others(canary):
    told = []

    def broken() -> None:
        raise RuntimeError("owner broke")

    descriptors.on_lost("broken", broken)
    descriptors.on_lost("fine", lambda: told.append(1))
    os.close(canary[0])
    assert descriptors.check() is True
    assert told == [1]


def test_a_forgotten_owner_is_not_told(canary):
    told = []
    descriptors.on_lost("owner", lambda: told.append(1))
    descriptors.forget("owner")
    os.close(canary[0])
    assert descriptors.check() is True
    assert told == []


def test_a_loss_noticed_by_shutdown_opens_no_server_only_to_stop_it(canary, monkeypatch):
    """shutdown() looks at the canary first: a loss it finds lets the server's descriptors
    go, and opens no new server (the running monitor's reaction would have)."""
    opened_here = []

    class CountedServer(monitor.DebugServer):
        def __init__(self, *args, **kwargs) -> None:
            opened_here.append(threading.current_thread() is threading.main_thread())
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(monitor, "DebugServer", CountedServer)
    labotel.start(admin_address="127.0.0.1:0", metrics_exporter="none",
                  traces_exporter="none", leak_detection=False)
    try:
        assert opened_here == [True]
        os.close(canary[0])
    finally:
        labotel.shutdown()
    assert descriptors.losses == 1
    assert opened_here.count(True) == 1, opened_here  # the server start()ed, none since


def test_a_failing_replacement_is_counted_and_the_old_servers_thread_ends_quietly(canary):
    """What the orphaned server runs once it let go of its listener (the monitor's new
    server) failing: counted as the server's error, never an exception out of its
    thread (the application's threading.excepthook would hear of it)."""
    from labotel.server.debug_server import DebugServer
    from labotel.server.http import Router

    errors: list[int] = []
    hooked: list[object] = []
    previous_hook = threading.excepthook
    threading.excepthook = hooked.append
    try:
        server = DebugServer("127.0.0.1:0", Router(), on_error=lambda: errors.append(1))
        server.start()
        registered = server.when_released(lambda: 1 / 0)  # first: orphan() wakes it
        server.orphan()
        server._thread.join(5)
    finally:
        threading.excepthook = previous_hook
    assert not server._thread.is_alive()  # woken at once: its waker was still its own
    assert (registered, errors, hooked) == (True, [1], [])
