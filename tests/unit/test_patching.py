"""Patcher.undo gives back only what is still labotel's."""

from __future__ import annotations

import asyncio
import logging
import threading
import types

import labotel
from labotel.patching import Patcher, say_left_in_place
from tests.unit.test_loop_registry import labotel_started_then_wrapped_by_another


def test_undo_restores_what_is_still_ours():
    class Base:
        def name(self) -> str:
            return "base"

    class Child(Base):
        pass

    owner = types.SimpleNamespace(greet=lambda: "original")
    patcher = Patcher()
    patcher.replace(owner, "greet", lambda: "ours")
    patcher.replace(Child, "name", lambda self: "ours")  # inherited: undo deletes it
    assert owner.greet() == "ours" and Child().name() == "ours"
    patcher.undo()
    assert owner.greet() == "original"
    assert Child().name() == "base" and "name" not in Child.__dict__
    assert not patcher


def test_undo_leaves_a_later_replacement_in_place_and_says_so(caplog):
    owner = types.SimpleNamespace(greet=lambda: "original")
    patcher = Patcher()
    patcher.replace(owner, "greet", lambda: "ours")
    owner.greet = lambda: "theirs"  # another instrumentation wraps or replaces ours
    with caplog.at_level(logging.WARNING, logger="labotel"):
        left = patcher.undo()
        assert caplog.records == []  # said by the caller, once it holds no lock of its own
        say_left_in_place(left)
    assert owner.greet() == "theirs"
    assert [r.getMessage() for r in caplog.records if "greet" in r.getMessage()] == [
        "labotel: SimpleNamespace.greet was replaced by someone else after labotel patched it; "
        "leaving theirs in place"]


def test_shutdown_keeps_a_thread_start_the_app_installed_after_start():
    original = threading.Thread.start
    labotel.start(admin_address="", leak_detection=False)
    try:
        labotels = threading.Thread.start
        assert labotels is not original

        def apps_start(self: threading.Thread) -> None:
            labotels(self)

        threading.Thread.start = apps_start
    finally:
        labotel.shutdown()
    try:
        assert threading.Thread.start is apps_start
    finally:
        threading.Thread.start = original


class StartsAnEventLoop(logging.Handler):
    """A handler of the application's that sends each record from a coroutine."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        async def send() -> None:
            self.sent.append(record.getMessage())

        asyncio.run(send())


def test_shutdown_says_what_it_left_in_place_holding_no_lock_of_labotels():
    """Another instrumentation wrapped the loop's run_forever after labotel did; shutdown's
    warning about it went to the application's handlers under the loop registry's lock,
    and a handler starting an event loop (labotel's run_forever wrapper, still inside the
    other one, takes that lock) hung the shutdown for good."""
    handler = StartsAnEventLoop()
    logging.getLogger("labotel").addHandler(handler)
    try:
        with labotel_started_then_wrapped_by_another():
            stopping = threading.Thread(target=labotel.shutdown, daemon=True)
            stopping.start()
            stopping.join(10)
            assert not stopping.is_alive(), "shutdown hung in the application's log handler"
            assert any("run_forever was replaced" in sent for sent in handler.sent)
    finally:
        logging.getLogger("labotel").removeHandler(handler)
