"""Patcher.undo gives back only what is still labotel's."""

from __future__ import annotations

import logging
import threading
import types

import labotel
from labotel.patching import Patcher


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
        patcher.undo()
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
