"""Reading every thread's frame never deadlocks the process (CPython 3.11: a collection
started inside ``sys._current_frames()`` that frees a ``threading.local`` takes the lock
the call holds). labotel reads them in the thread-leak sampler, the goroutine views and
the profilers, on the application's process, whatever garbage the application makes."""

from __future__ import annotations

import subprocess
import sys
import textwrap

PROGRAM = textwrap.dedent("""
    import faulthandler, gc, threading
    from labotel.runtime.thread_frames import current_frames

    faulthandler.dump_traceback_later(20, exit=True)

    class Holder:  # application garbage: a thread-local in a reference cycle
        def __init__(self):
            self.local = threading.local()
            self.local.value = 1
            self.me = self

    stop = False

    def inner(n):
        return n + 1

    def spin():  # threads whose frames change, so frame objects are made on each read
        n = 0
        while not stop:
            n = inner(n)

    threads = [threading.Thread(target=spin, daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    threshold = gc.get_threshold()
    for _ in range(2000):
        gc.set_threshold(100_000)
        Holder()
        gc.set_threshold(1)  # the next allocation collects: inside the frames read
        current_frames()
    gc.set_threshold(*threshold)
    stop = True
    print("no deadlock")
""")


def test_reading_every_threads_frame_survives_thread_local_garbage():
    # with `sys._current_frames()` in place of `current_frames()` (and `import sys`), this
    # program hangs on CPython 3.11.7 at once
    result = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and "no deadlock" in result.stdout, result.stderr[-3000:]


def test_no_collection_can_start_while_the_frames_are_read(monkeypatch):
    """The mechanism: on 3.11 the first GC threshold is out of reach during the read, and
    is back as it was right after (the same program hangs with a bare
    sys._current_frames() there, whichever allocation comes first)."""
    import gc

    from labotel.runtime import thread_frames

    seen = []

    def read_frames():
        seen.append(gc.get_threshold())
        return {}

    monkeypatch.setattr(sys, "_current_frames", read_frames)
    before = gc.get_threshold()
    assert thread_frames.current_frames() == {}
    assert gc.get_threshold() == before
    if sys.version_info[:2] == (3, 11):
        assert seen == [(1 << 30, *before[1:])]
    else:
        assert seen == [before]
