"""The relay that hands labotel's detection records to the logging handlers."""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest

from labotel import log_relay


class Recording(logging.Handler):
    def __init__(self, gate: threading.Event | None = None) -> None:
        super().__init__()
        self.gate = gate
        self.records: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if self.gate is not None:
            self.gate.wait(10)
        self.records.append((record.getMessage(), threading.current_thread().name))


@pytest.fixture
def logger():
    logger = logging.getLogger("labotel.test_relay")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    yield logger
    logger.handlers.clear()
    log_relay.stop(2)


def test_without_a_relay_records_are_handled_at_once(logger):
    log_relay.stop(2)
    handler = Recording()
    logger.addHandler(handler)
    log_relay.log(logger, logging.WARNING, "found %s", "a race")
    assert handler.records == [("found a race", threading.current_thread().name)]


def test_records_are_made_on_the_callers_thread_and_handled_on_the_relay(logger):
    handler = Recording()
    logger.addHandler(handler)
    log_relay.start()
    log_relay.log(logger, logging.WARNING, "found %s", "a race")
    log_relay.log(logger, logging.DEBUG, "below the level: never made")
    assert log_relay.flush()
    assert handler.records == [("found a race", "labotel-log-relay")]


def test_a_stuck_handler_costs_the_caller_nothing_and_the_queue_is_bounded(
        logger, monkeypatch):
    monkeypatch.setattr(log_relay, "dropped", 0)
    gate = threading.Event()
    handler = Recording(gate)
    logger.addHandler(handler)
    log_relay.start()
    for n in range(log_relay.MAX_PENDING + 50):  # the relay is stuck in the first one
        log_relay.log(logger, logging.WARNING, "record %d", n)
    assert log_relay.dropped >= 49
    assert 0 < log_relay.pending_bytes <= log_relay.MAX_PENDING_BYTES
    gate.set()
    assert log_relay.flush(10)
    assert log_relay.pending_bytes == 0
    kept = [message for message, _ in handler.records]
    assert kept[:3] == ["record 0", "record 1", "record 2"]
    assert len(kept) == log_relay.MAX_PENDING + 50 - log_relay.dropped


def test_records_dropped_are_counted_where_the_admin_page_shows_them(monkeypatch):
    import labotel
    from tests.metrics_helpers import fetch

    labotel.shutdown()
    monitor = labotel.start(admin_address="127.0.0.1:0", leak_detection=False)
    try:
        monkeypatch.setattr(log_relay, "dropped", 7)  # as the test above drops them
        assert monitor.status()["log_records_dropped"] == 7
        page = json.loads(fetch(monitor.admin_url + "/admin/monitoring/")[2])
        assert page["log_records_dropped"] == 7
    finally:
        labotel.shutdown()


def test_a_failing_loop_listener_is_logged_by_the_relay_not_on_the_loop(monkeypatch):
    """A labotel listener that fails on an application's event loop is logged with its
    traceback, from the relay: a stuck handler does not stop the loop."""
    import asyncio

    from labotel.patching import Patcher
    from labotel.runtime import loops

    gate = threading.Event()
    handler = Recording(gate)
    logger = logging.getLogger(loops.__name__)
    monkeypatch.setattr(logger, "propagate", False)
    logger.addHandler(handler)
    patcher = Patcher()
    loops.install(patcher)
    log_relay.start()

    def broken(loop: asyncio.AbstractEventLoop) -> None:
        raise RuntimeError("a listener broke")

    finished = threading.Event()
    try:
        loops.add_listener(broken)
        runner = threading.Thread(target=lambda: (asyncio.run(asyncio.sleep(0.01)),
                                                  finished.set()), daemon=True)
        runner.start()
        assert finished.wait(5), "the loop stopped behind the stuck handler"
    finally:
        gate.set()
        assert log_relay.flush()
        log_relay.stop(2)
        loops.uninstall()
        patcher.undo()
        logger.removeHandler(handler)
    assert handler.records[0][1] == "labotel-log-relay", handler.records
    assert handler.records[0][0].startswith("labotel: event-loop listener"), handler.records


def test_threads_logging_at_once_never_queue_past_the_bound(logger, monkeypatch):
    """The room was checked, then the record made (a record factory may take its time,
    giving up the GIL), then queued: threads logging at once all passed the check and
    queued past it. Room is now taken before the record is made."""
    monkeypatch.setattr(log_relay, "dropped", 0)
    monkeypatch.setattr(log_relay, "MAX_PENDING", 20)
    gate = threading.Event()
    logger.addHandler(Recording(gate))
    made = logging.getLogRecordFactory()

    def slow_factory(*args, **kwargs):
        time.sleep(0.002)  # another thread runs meanwhile
        return made(*args, **kwargs)

    logging.setLogRecordFactory(slow_factory)
    log_relay.start()
    try:
        threads = [threading.Thread(target=lambda: [log_relay.log(
            logger, logging.WARNING, "record") for _ in range(5)]) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        queued = len(log_relay._pending)
    finally:
        logging.setLogRecordFactory(made)
        gate.set()
    assert log_relay.flush(10)
    assert queued <= 20 and log_relay.dropped >= 100 - 21, (queued, log_relay.dropped)


def test_a_records_traceback_counts_the_frames_it_keeps_alive(logger):
    gate = threading.Event()
    logger.addHandler(Recording(gate))
    log_relay.start()

    def deep(n: int) -> None:
        if n:
            deep(n - 1)
        else:
            raise ValueError("at the bottom")

    try:
        before = log_relay.pending_bytes
        try:
            deep(200)
        except ValueError:
            log_relay.log(logger, logging.ERROR, "failed", exc_info=True)
        counted = log_relay.pending_bytes - before
    finally:
        gate.set()
    assert log_relay.flush(10)
    assert counted >= 200 * log_relay.TRACEBACK_FRAME_BYTES
