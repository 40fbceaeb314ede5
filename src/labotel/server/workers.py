"""A bounded pool of daemon threads that run the debug server's handlers.

Threads are started on demand up to ``size`` and leave after ``idle_seconds`` without
work, so an idle server holds none. ``submit`` never queues beyond the threads it has:
when ``size`` jobs are running it returns False and the caller answers 503. The threads
are daemons: a handler stuck in a 300 s profile never holds up the interpreter's exit
(concurrent.futures' threads are joined at exit).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)
Job = tuple[Callable[..., Any], tuple[Any, ...]]


class WorkerPool:
    def __init__(self, size: int, thread_name: str, on_error: Callable[[], None],
                 idle_seconds: float = 30.0):
        self.size = size
        self._thread_name = thread_name
        self._on_error = on_error
        self._idle_seconds = idle_seconds
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._running = 0  # jobs accepted and not finished
        self._idle = 0  # threads waiting for a job and not yet promised one
        self._threads = 0
        self._stopped = False
        self._members: list[threading.Thread] = []

    @property
    def threads(self) -> int:
        return self._threads

    def spare(self) -> int:
        """Jobs that could still be accepted now."""
        return self.size - self._running

    def submit(self, function: Callable[..., Any], *args: Any) -> bool:
        """Run ``function(*args)`` on a pool thread; False when all ``size`` are busy."""
        with self._lock:
            if self._stopped or self._running >= self.size:
                return False
            self._running += 1
            if self._idle:
                self._idle -= 1
                spawn = False
            else:
                self._threads += 1
                spawn = True
        self._jobs.put((function, args))
        if spawn:
            thread = threading.Thread(target=self._work, name=self._thread_name, daemon=True)
            with self._lock:
                self._members = [member for member in self._members if member.is_alive()]
                self._members.append(thread)
            try:
                thread.start()
            except RuntimeError:  # can't start new thread: the job still waits for one
                with self._lock:
                    self._threads -= 1
                self._on_error()
        return True

    def stop(self, wait: float = 1.0) -> None:
        """Let every thread leave once its current job ends; wait up to ``wait`` seconds for
        them (idle ones leave at once, so shutdown() leaves no thread behind; a job still
        running past that is not waited for)."""
        with self._lock:
            self._stopped = True
            count = self._threads
            members = list(self._members)
        for _ in range(count):
            self._jobs.put(None)
        deadline = time.monotonic() + wait
        current = threading.current_thread()
        for member in members:
            if member is not current and member.ident is not None:
                member.join(max(0.0, deadline - time.monotonic()))

    def _work(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=self._idle_seconds)
            except queue.Empty:
                with self._lock:
                    if self._idle:  # nobody promised this thread a job: leave
                        self._idle -= 1
                        self._threads -= 1
                        return
                continue  # a job was promised to an idle thread: it is on its way
            if job is None:
                return
            function, args = job
            try:
                function(*args)
            except Exception:  # the job handles its own errors; this is a labotel bug
                log.debug("labotel: debug-server job failed", exc_info=True)
                self._on_error()
            finally:
                with self._lock:
                    self._running -= 1
                    self._idle += 1
