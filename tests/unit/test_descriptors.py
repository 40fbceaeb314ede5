"""labotel's canary descriptor: a number the application closed, or closed and reused, is
noticed once, and each registered owner is told on the thread that noticed it."""

from __future__ import annotations

import os
import threading

import pytest

from labotel import descriptors


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
