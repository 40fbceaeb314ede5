"""The registry of running event loops (``runtime.loops``) and the task-origin hook on each
loop (``runtime.origins``): bounded while loops come and go, quiet once labotel is shut
down, and never a reason for ``start()`` to fail."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator

import pytest

import labotel
from labotel.runtime import loops, origins


async def job() -> None:
    await asyncio.sleep(0)


def test_loops_made_and_dropped_are_forgotten_while_labotel_runs():
    """``asyncio.run()`` per job (sync code calling async code): each loop was kept in the
    registry and the task-origin table until shutdown, or until metrics were read."""
    labotel.shutdown()
    labotel.start(admin_address="", leak_detection=False)
    try:
        keep = []  # the application's heap moves on: the next loop gets a fresh address
        for _ in range(600):
            asyncio.run(job())
            keep.append(bytearray(1000))
        registered, patched = len(loops._loops), len(origins._patched_loops)
    finally:
        labotel.shutdown()
    assert patched > 0  # the table was in use
    assert registered <= 128 and patched <= 128, (registered, patched)  # of 600


@contextlib.contextmanager
def labotel_started_then_wrapped_by_another() -> Iterator[None]:
    """labotel started, then another instrumentation wrapping its run_forever wrapper (so
    shutdown leaves both in place); the class's own method given back at the end."""
    labotel.shutdown()
    original = asyncio.BaseEventLoop.run_forever
    labotel.start(admin_address="", leak_detection=False)
    labotels = asyncio.BaseEventLoop.run_forever

    def other_instrumentation(self: asyncio.BaseEventLoop) -> None:
        return labotels(self)

    asyncio.BaseEventLoop.run_forever = other_instrumentation
    try:
        yield
    finally:
        labotel.shutdown()
        asyncio.BaseEventLoop.run_forever = original  # (labotel's own wrapper too)


def test_after_shutdown_a_wrapper_left_inside_anothers_registers_no_loop():
    """Another instrumentation wrapped run_forever after labotel: shutdown leaves it (and
    labotel's wrapper inside it) in place; labotel's then records nothing."""
    with labotel_started_then_wrapped_by_another():
        labotel.shutdown()
        for _ in range(50):
            asyncio.run(job())
        assert loops._loops == {} and loops._threads == {}


def test_a_loop_that_closes_while_start_looks_for_loops_does_not_fail_start(monkeypatch):
    """A loop found running by start()'s scan that stops and closes before it is asked to
    announce itself: nothing to announce, and start() goes on."""
    labotel.shutdown()
    release = threading.Event()

    async def serve() -> None:
        while not release.is_set():
            await asyncio.sleep(0.005)

    def run_by_hand() -> None:
        loop = asyncio.new_event_loop()
        loop.run_until_complete(serve())
        loop.close()

    thread = threading.Thread(target=run_by_hand)
    thread.start()
    deadline = time.monotonic() + 5
    while not any(frame.f_code.co_name == "run_forever" for frame in _frames_of(thread)):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    scan = loops._find_running_loops

    def scan_then_the_loop_closes() -> list[asyncio.AbstractEventLoop]:
        found = scan()  # the thread's loop runs here ...
        release.set()
        thread.join(5)  # ... and is stopped and closed now
        return found

    monkeypatch.setattr(loops, "_find_running_loops", scan_then_the_loop_closes)
    try:
        monitor = labotel.start(admin_address="", leak_detection=False)
        assert monitor.running and monitor.start_error is None
    finally:
        release.set()
        thread.join(5)
        labotel.shutdown()


def _frames_of(thread: threading.Thread) -> list:
    import sys

    frame = sys._current_frames().get(thread.ident)
    frames = []
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back
    return frames


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
def test_a_forked_child_forgets_the_loops_other_threads_ran(kind):
    """A loop another thread of the parent ran is copied into the child still saying it
    runs; its thread is not there. The child counted it among its running loops (and
    asked it for its lag); the loop of the thread that forked stays."""
    import uvloop

    labotel.shutdown()
    labotel.start(admin_address="", leak_detection=False)
    loop = uvloop.new_event_loop() if kind == "uvloop" else asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever)
    thread.start()
    try:
        deadline = time.monotonic() + 5
        while loop not in loops.running_loops():
            assert time.monotonic() < deadline
            time.sleep(0.01)

        async def fork_here() -> list[bool]:
            mine = asyncio.get_running_loop()
            reader, writer = os.pipe()
            pid = os.fork()
            if pid == 0:
                try:
                    running = loops.running_loops()
                    os.write(writer, json.dumps([loop in running, mine in running]).encode())
                finally:
                    os._exit(0)
            os.close(writer)
            with os.fdopen(reader) as pipe:
                answer = json.loads(pipe.read())
            os.waitpid(pid, 0)
            return answer

        other_threads_loop, forking_threads_loop = asyncio.run(fork_here())
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
        labotel.shutdown()
    assert (other_threads_loop, forking_threads_loop) == (False, True)
