"""Components see a Context: collectors run against a fake meter, routes have one owner."""

from __future__ import annotations

import gc
import threading
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.metrics import CallbackOptions

import labotel
from labotel.config import Settings
from labotel.context import Context
from labotel.detect.detection import Reporter
from labotel.runtime.gc import GCCollector
from labotel.runtime.threads import ThreadCollector
from labotel.server.http import Request, Router, text_response


class Instrument:
    def __init__(self, kind: str, name: str, callbacks: Any = None, **options: Any):
        self.kind, self.name, self.options = kind, name, options
        self.callbacks = list(callbacks or [])
        self.recorded: list[tuple[float, dict]] = []

    def add(self, value: float, attributes: dict | None = None) -> None:
        self.recorded.append((value, dict(attributes or {})))

    record = add

    def observe(self) -> list[tuple[float, dict]]:
        return [(o.value, dict(o.attributes or {}))
                for callback in self.callbacks for o in callback(CallbackOptions())]


class FakeMeter:
    """Keeps what a component registers, as prometheus_client's tests keep a registry."""

    def __init__(self) -> None:
        self.instruments: dict[str, Instrument] = {}

    def _make(self, kind: str, name: str, callbacks: Any = None, **options: Any) -> Instrument:
        instrument = Instrument(kind, name, callbacks, **options)
        self.instruments[name] = instrument
        return instrument

    def create_counter(self, name: str, **options: Any) -> Instrument:
        return self._make("counter", name, **options)

    def create_histogram(self, name: str, **options: Any) -> Instrument:
        return self._make("histogram", name, **options)

    def create_observable_counter(self, name: str, callbacks: Any = None,
                                  **options: Any) -> Instrument:
        return self._make("observable_counter", name, callbacks, **options)

    def create_observable_gauge(self, name: str, callbacks: Any = None,
                                **options: Any) -> Instrument:
        return self._make("observable_gauge", name, callbacks, **options)

    def create_observable_up_down_counter(self, name: str, callbacks: Any = None,
                                          **options: Any) -> Instrument:
        return self._make("observable_up_down_counter", name, callbacks, **options)


def fake_context(**options: Any) -> tuple[Context, FakeMeter]:
    meter = FakeMeter()
    tracer = trace.NoOpTracer()
    reporter = Reporter(tracer, meter)  # type: ignore[arg-type]
    return Context(Settings.load(options), meter, tracer, reporter), meter  # type: ignore[arg-type]


def test_thread_collector_reports_to_the_meter_it_is_given():
    context, meter = fake_context()
    ThreadCollector().start(context)
    release = threading.Event()
    extra = threading.Thread(target=release.wait, daemon=True)
    extra.start()
    try:
        counts = dict((attrs["thread.daemon"], value)
                      for value, attrs in meter.instruments["labotel.python.threads"].observe())
        assert counts[True] >= 1 and counts[False] >= 1  # this daemon thread, the main one
        assert counts[True] + counts[False] == threading.active_count()
    finally:
        release.set()
        extra.join()


def test_gc_collector_records_pauses_on_the_given_meter():
    context, meter = fake_context()
    collector = GCCollector()
    collector.start(context)
    try:
        before = dict((attrs["cpython.gc.generation"], value) for value, attrs
                      in meter.instruments["cpython.gc.collections"].observe())
        gc.collect()
        after = dict((attrs["cpython.gc.generation"], value) for value, attrs
                     in meter.instruments["cpython.gc.collections"].observe())
        assert after[2] == before[2] + 1
        pauses = meter.instruments["labotel.gc.pause.duration"].recorded
        assert any(attrs == {"cpython.gc.generation": 2} for _, attrs in pauses)
    finally:
        collector.stop()


def test_a_failing_callback_is_counted_not_raised():
    context, meter = fake_context()

    def broken(_: CallbackOptions):
        raise RuntimeError("boom")
        yield

    assert context.guarded("test.broken", broken)(CallbackOptions()) == []
    errors = meter.instruments["labotel.internal.errors"].recorded
    assert errors == [(1, {"labotel.component": "test.broken"})]


def test_a_path_registered_twice_is_an_error():
    router = Router()
    router.add("/admin/monitoring/races", lambda _: text_response("first"))
    with pytest.raises(ValueError, match="/admin/monitoring/races"):
        router.add("/admin/monitoring/races", lambda _: text_response("second"))
    router.add("/debug/pprof/", lambda _: text_response("prefix"), prefix=True)
    with pytest.raises(ValueError, match="/debug/pprof/"):
        router.add("/debug/pprof/", lambda _: text_response("again"), prefix=True)
    answer = router.handle(Request.build("GET", "/admin/monitoring/races", "", {}))
    assert answer.body == b"first"


@pytest.mark.parametrize("race_detection", [False, True])
def test_the_races_view_has_one_owner(race_detection: bool):
    monitor = labotel.start(race_detection=race_detection, admin_address="",
                            leak_detection=False)
    try:
        answer = monitor.router.handle(Request.build("GET", "/admin/monitoring/races", "", {}))
        assert answer.status == 200
        assert (b'"hint"' in answer.body) is not race_detection
        assert (b'"stats"' in answer.body) is race_detection
    finally:
        labotel.shutdown()
