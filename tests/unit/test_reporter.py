import logging

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from labotel.detect import detection
from labotel.detect.detection import Detection, Reporter, Stack


def make_reporter(buffer_size=256):
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    reporter = Reporter(tracer_provider.get_tracer("t"), meter_provider.get_meter("t"),
                        buffer_size)
    return reporter, spans, reader


def counter_values(reader, name):
    values = {}
    for rm in reader.get_metrics_data().resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == name:
                    for point in metric.data.data_points:
                        values[tuple(sorted(point.attributes.items()))] = point.value
    return values


def race(location="app.py:10"):
    return Detection(
        kind="race_condition", summary=f"race on cache at {location}",
        message=f"RACE CONDITION DETECTED\nResource: cache\n{location}",
        attributes={"labotel.race.resource": "cache", "code.lineno": 10,
                    "labotel.race.threads": ["a", "b"]},
        stacks=[Stack("worker-1", (("app.py", 10, "write"), ("app.py", 3, "main"))),
                Stack("worker-2", (("app.py", 12, "read"),))],
        fingerprint=("cache", location))


def test_detection_becomes_span_counter_log_and_buffer_entry(caplog):
    reporter, spans, reader = make_reporter()
    with caplog.at_level(logging.WARNING, logger="labotel"):
        assert reporter.report(race()) is True
    [span] = spans.get_finished_spans()
    assert span.name == "labotel.race_condition"
    assert span.attributes["labotel.race.resource"] == "cache"
    assert span.attributes["code.lineno"] == 10
    assert list(span.attributes["labotel.race.threads"]) == ["a", "b"]
    assert [e.attributes["thread.name"] for e in span.events] == ["worker-1", "worker-2"]
    assert "write (app.py:10)" in span.events[0].attributes["exception.stacktrace"]
    assert counter_values(reader, "labotel.detections") == {
        (("labotel.detection.kind", "race_condition"),): 1}
    [record] = [r for r in caplog.records if r.name == "labotel.detect.races"]
    assert record.levelno == logging.WARNING
    assert "RACE CONDITION DETECTED" in record.getMessage()
    [stored] = reporter.detections()
    assert stored.to_dict()["stacks"][0]["frames"][0] == {
        "file": "app.py", "line": 10, "function": "write"}


def test_identical_detections_are_reported_once_with_a_count():
    reporter, spans, reader = make_reporter()
    assert reporter.report(race()) is True
    assert reporter.report(race()) is False
    assert reporter.report(race()) is False
    assert reporter.report(race("app.py:99")) is True
    assert len(spans.get_finished_spans()) == 2
    counts = sorted(d.count for d in reporter.detections())
    assert counts == [1, 3]
    assert counter_values(reader, "labotel.detections")[
        (("labotel.detection.kind", "race_condition"),)] == 2


def test_buffer_is_bounded_and_filtered_by_kind_newest_first():
    reporter, _, _ = make_reporter(buffer_size=3)
    for n in range(5):
        reporter.report(race(f"app.py:{n}"))
    reporter.report(Detection(kind="memory_leak", summary="leak", fingerprint=("x",)))
    assert [d.kind for d in reporter.detections()] == [
        "memory_leak", "race_condition", "race_condition"]
    assert [d.summary for d in reporter.detections("race_condition")] == [
        "race on cache at app.py:4", "race on cache at app.py:3"]


def test_component_failure_is_logged_once_and_counted(caplog):
    reporter, _, reader = make_reporter()
    with caplog.at_level(logging.ERROR, logger="labotel"):
        for _ in range(3):
            try:
                raise RuntimeError("boom")
            except RuntimeError:
                reporter.component_failed("runtime.gc")
    assert len([r for r in caplog.records if "runtime.gc" in r.getMessage()]) == 1
    assert counter_values(reader, "labotel.internal.errors") == {
        (("labotel.component", "runtime.gc"),): 3}


def test_a_broken_exporter_never_reaches_the_caller():
    class Broken:
        def start_span(self, *args, **kwargs):
            raise RuntimeError("exporter down")

    reporter, _, reader = make_reporter()
    reporter._tracer = Broken()
    assert reporter.report(race()) is False
    assert counter_values(reader, "labotel.internal.errors") == {
        (("labotel.component", "reporter"),): 1}


def test_a_storm_of_new_detections_is_counted_but_only_a_budget_becomes_spans(caplog):
    """~400 new races a second became as many spans and log records, queued for a collector
    that was down (issue 11, item 2): now each kind gets REPORT_RATE a second."""
    reporter, spans, reader = make_reporter()
    with caplog.at_level(logging.WARNING, logger="labotel"):
        for n in range(400):
            reporter.report(race(f"app.py:{n}"))
        leak = Detection(kind="memory_leak", summary="leak", fingerprint=("site",))
        assert reporter.report(leak) is True  # another kind's budget is its own
    reported = len(spans.get_finished_spans())
    assert detection.REPORT_BURST <= reported <= detection.REPORT_BURST + 5
    assert counter_values(reader, "labotel.detections")[
        (("labotel.detection.kind", "race_condition"),)] == 400
    stats = reporter.stats()
    assert stats["suppressed_by_kind"]["race_condition"] == 400 - (reported - 1)
    alerts = [r for r in caplog.records if "RACE CONDITION" in r.getMessage()]
    summaries = [r for r in caplog.records if "report budget" in r.getMessage()]
    assert len(alerts) == reported - 1 and len(summaries) == 1
    # a suppressed one is still known: its repeats are counted, not reported
    assert reporter.report(race("app.py:399")) is False
    assert len(reporter.detections("race_condition")) == reported - 1


def test_what_the_reporter_keeps_is_bounded_in_bytes():
    reporter, spans, _ = make_reporter(buffer_size=10_000)
    huge = "x" * (1 << 20)
    for n in range(60):
        reporter.report(Detection(kind=detection.KINDS[n % 4], summary=huge, message=huge,
                                  attributes={"labotel.race.resource": huge,
                                              "labotel.leak.sites": [huge] * 100},
                                  fingerprint=(str(n),)))
    kept = reporter.detections()
    assert all(len(d.message) < 20_000 and len(d.summary) < 2000 for d in kept)
    assert all(len(d.attributes["labotel.leak.sites"]) <= detection.MAX_LIST_ITEMS
               for d in kept)
    assert reporter.bytes() < 2 * (detection.BUFFER_BYTES + detection.FINGERPRINT_BYTES)
    for span in spans.get_finished_spans():
        for value in span.attributes.values():
            items = list(value) if isinstance(value, tuple) else [value]
            assert len(items) <= detection.MAX_LIST_ITEMS
            assert all(len(str(item)) < 2000 for item in items)


def test_count_only_counts_repeats_and_new_detections_over_the_budget_without_a_report():
    reporter, spans, reader = make_reporter()
    key = ("cache", "app.py:1")
    assert reporter.count_only("race_condition", key) is False  # new, in budget
    assert reporter.report(race("app.py:1")) is True
    [first] = reporter.detections("race_condition")
    # a repeat is counted on the entry the view shows, once per call
    for _ in range(3):
        assert reporter.count_only("race_condition", key) is True
    assert first.count == 4
    while reporter.admits("race_condition"):  # spend the burst
        reporter.report(race(f"burst.py:{len(spans.get_finished_spans())}"))
    spans_before = len(spans.get_finished_spans())
    for n in range(100):
        assert reporter.count_only("race_condition", (f"storm.py:{n}",)) is True
    assert len(spans.get_finished_spans()) == spans_before
    stats = reporter.stats()
    assert stats["suppressed_by_kind"]["race_condition"] == 100
    assert counter_values(reader, "labotel.detections")[
        (("labotel.detection.kind", "race_condition"),)] == spans_before + 100
    # a suppressed one stays known: a later report of it (budget refilled) is a repeat
    reporter._budgets["race_condition"].tokens = detection.REPORT_BURST
    assert reporter.count_only("race_condition", ("storm.py:7",)) is True
    assert reporter.report(Detection(kind="race_condition", summary="again",
                                     fingerprint=("storm.py:7",))) is False
    assert reporter.bytes() < detection.BUFFER_BYTES + detection.FINGERPRINT_BYTES


def test_count_only_logs_the_suppressed_tally_and_never_raises(caplog):
    reporter, _, reader = make_reporter()
    with caplog.at_level(logging.WARNING, logger="labotel"):
        for n in range(int(detection.REPORT_BURST) + 20):
            if not reporter.count_only("race_condition", (f"s.py:{n}",)):
                reporter.report(race(f"s.py:{n}"))
    assert [r for r in caplog.records if "report budget" in r.getMessage()]
    reporter._lock = None  # a broken reporter: counted as its failure, the caller goes on
    assert reporter.count_only("race_condition", ("x",)) is True
    assert counter_values(reader, "labotel.internal.errors") == {
        (("labotel.component", "reporter"),): 1}
