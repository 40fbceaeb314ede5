"""labotel's detection log records, handed to the logging handlers on a thread of its own.

Logging handlers are the application's code: a stream whose reader stopped reading (a full
stderr pipe), a syslog or HTTP handler whose host hangs. A detection found on an
application thread (a race is found where the access happens) used to be logged right
there, so a stuck handler stopped that thread for good, and every other thread that logs
behind the handler's lock. Now each record is made on the caller's thread (its thread
name, time and place are the caller's), queued (at most ``MAX_PENDING``: more are dropped
and counted), and handled by the relay thread. While no relay runs (before ``start()``,
after ``stop()``) records are handled at once, as before.
"""

from __future__ import annotations

import collections
import logging
import sys
import threading
import time
from typing import Any

from labotel import fork_safe

MAX_PENDING = 1000  # records waiting for the relay ...
MAX_PENDING_BYTES = 4 << 20  # ... and their text (a detection's message is cut to size)
RECORD_BYTES = 500  # a LogRecord's own fields, besides its text
POLL = 0.05  # seconds the relay sleeps while nothing waits (no wake-up on every record)

_pending: collections.deque[tuple[logging.Logger, logging.LogRecord, int]] = (
    collections.deque())
pending_bytes = 0  # estimated memory of the queued records (labotel's own footprint)
_queued = 0  # records queued or being made (their room taken), under _bytes_lock
TRACEBACK_FRAME_BYTES = 500  # a record's traceback keeps each of its frames alive
_bytes_lock = fork_safe.lock()  # the count's updates come from several threads
_relay_thread: threading.Thread | None = None
_stopping = threading.Event()  # set: hand over what is queued, then end
_handling = False
dropped = 0  # records dropped because MAX_PENDING were waiting


def start() -> None:
    """Run the relay (again in a forked child, whose parent's thread does not exist)."""
    global _relay_thread, _stopping
    if _relay_thread is not None and _relay_thread.is_alive():
        return
    _stopping = stopping = threading.Event()
    thread = threading.Thread(target=_relay, args=(stopping,), name="labotel-log-relay",
                              daemon=True)
    thread.start()
    _relay_thread = thread


def stop(timeout: float) -> None:
    """Hand over what is queued, waiting ``timeout`` at most (a stuck handler keeps the
    relay, not the caller); later records are handled at once."""
    global _relay_thread
    thread, _relay_thread = _relay_thread, None
    _stopping.set()
    if thread is not None and thread is not threading.current_thread():
        thread.join(timeout)


def after_fork_in_child() -> None:
    """The parent's relay thread does not exist here: records wait for a new one. Those
    the parent had queued are the parent's to log (its relay does): here they would be
    logged twice, under the parent's pid."""
    global _relay_thread, pending_bytes, _handling, _queued
    _pending.clear()
    pending_bytes = 0
    _queued = 0
    _handling = False
    if _relay_thread is not None:
        _relay_thread = None
        start()


def log(logger: logging.Logger, level: int, message: str, *args: Any,
        extra: dict[str, Any] | None = None, exc_info: bool = False) -> None:
    """``logger.log(level, message, *args)`` through the relay."""
    global dropped, pending_bytes, _queued
    if not logger.isEnabledFor(level):
        return
    if _relay_thread is None:
        logger.log(level, message, *args, extra=extra, exc_info=exc_info, stacklevel=2)
        return
    failure = sys.exc_info() if exc_info else None
    size = RECORD_BYTES + len(message) + sum(len(a) for a in args if isinstance(a, str))
    if failure is not None:  # the traceback keeps its frames alive while it waits
        size += TRACEBACK_FRAME_BYTES * _depth(failure[2])
    with _bytes_lock:  # room taken before the record is made: threads cannot overshoot
        if _queued >= MAX_PENDING or pending_bytes + size > MAX_PENDING_BYTES:
            dropped += 1
            return
        pending_bytes += size
        _queued += 1
    try:
        path, line, function, _ = logger.findCaller(False, 2)
        record = logger.makeRecord(logger.name, level, path, line, message, args, failure,
                                   function, extra)
    except BaseException:
        _give_back(size)
        raise
    _pending.append((logger, record, size))


def _give_back(size: int) -> None:
    global pending_bytes, _queued
    with _bytes_lock:
        pending_bytes -= size
        _queued -= 1


def _depth(traceback: Any) -> int:
    depth = 0
    while traceback is not None and depth < 1000:
        depth += 1
        traceback = traceback.tb_next
    return depth


def flush(timeout: float = 2.0) -> bool:
    """Wait until every queued record was handled (tests); False if ``timeout`` ran out."""
    give_up = time.monotonic() + timeout
    while _pending or _handling:
        if time.monotonic() > give_up:
            return False
        time.sleep(0.005)
    return True


def _relay(stopping: threading.Event) -> None:
    global _handling
    while True:
        while _pending:
            _handling = True
            try:
                logger, record, size = _pending.popleft()
                _give_back(size)
                logger.handle(record)
            except Exception:  # a failing handler: logging's own handleError said so
                pass
            finally:
                _handling = False
        if stopping.wait(POLL) and not _pending:
            return
