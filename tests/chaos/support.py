"""Helpers for the chaos tests: run a harm scenario briefly, and catch hangs with a dump."""

from __future__ import annotations

import faulthandler
import tempfile
import threading
from collections.abc import Callable
from typing import Any

import pytest
from bench import harm


def run_scenario(name: str, seconds: float = 4.0, baseline: float = 1.0) -> dict[str, Any]:
    """``bench/harm.py``'s scenario ``name`` for ``seconds``, in a process of its own; a
    hang ends in a dump of every thread's stack (the child's faulthandler)."""
    return harm.run_child(name, seconds, baseline, timeout=seconds + 2 * baseline + 60)


def assert_unharmed(result: dict[str, Any], max_rss_mb: float = 50.0) -> None:
    """No hang, no exception in application code, bounded memory, a clean shutdown."""
    assert not result.get("hung"), f"scenario hung:\n{result.get('stderr')}"
    assert not result.get("failed"), f"scenario crashed:\n{result.get('stderr')}"
    assert result["app_errors"] == 0, result["app_error_samples"]
    assert result["rss_growth_mb"] - result["app_kept_mb"] <= max_rss_mb, result
    assert result["final_state"]["consistent"], result["final_state"]
    # liveness, not speed: shutdown is bounded by shutdown_timeout and leaves nothing behind
    assert result["shutdown_s"] < result["shutdown_limit_s"] + 1.0, result["shutdown_s"]
    assert result["threads_left"] == [], result["threads_left"]


def call_with_deadline(function: Callable[[], Any], seconds: float) -> Any:
    """``function()`` on a thread; if it does not return in ``seconds``, fail the test with
    every thread's stack (a deadlock shows where each thread waits)."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = function()
        except BaseException as error:  # noqa: BLE001 - reported below
            outcome["error"] = error

    thread = threading.Thread(target=run, name="chaos-call", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        with tempfile.TemporaryFile("w+") as dump:
            faulthandler.dump_traceback(dump, all_threads=True)
            dump.seek(0)
            pytest.fail(f"no return within {seconds} s; threads:\n{dump.read()}")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")
