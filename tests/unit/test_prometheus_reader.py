"""labotel's /metrics reader against the OpenTelemetry Prometheus exporter it replaces.

Both readers hang off one MeterProvider, each with its own prometheus_client registry;
every scrape of the two must be byte-for-byte the same text.
"""

import logging
import threading

import pytest
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from labotel.prometheus import PrometheusReader, make_prometheus_reader


@pytest.fixture(params=[False, True], ids=["no-scope-labels", "scope-labels"])
def readers(request):
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    reader = PrometheusReader(registry=ours, scope_labels=request.param)
    provider = MeterProvider(
        resource=Resource.create({"service.name": "bridge-test", "deployment.tier": 3,
                                  "feature.flags": ("a", "b")}),
        metric_readers=[reader, PrometheusMetricReader(scope_info_enabled=request.param,
                                                       registry=theirs)])
    yield provider, ours, theirs, request.param
    provider.shutdown()


def same_scrape(ours: CollectorRegistry, theirs: CollectorRegistry) -> str:
    text = generate_latest(ours).decode()
    assert text == generate_latest(theirs).decode()
    assert generate_openmetrics(ours) == generate_openmetrics(theirs)
    return text


def test_every_kind_of_metric_reads_as_the_exporter_reads_it(readers):
    provider, ours, theirs, scoped = readers
    meter = provider.get_meter("app", "1.0", schema_url="https://opentelemetry.io/schemas/1.26.0",
                               attributes={"library.tier": "core"})
    requests = meter.create_counter("http.server.requests", unit="{request}",
                                    description="Requests served")
    requests.add(3, {"http.method": "GET", "http.status_code": 200})
    requests.add(1, {"http.method": "POST", "http.status_code": 500, "retry": True})
    requests.add(2, {"http.method": 'we"ird\\value\nline'})
    requests.add(5)
    flags = meter.create_counter("jobs_total", description="ends in _total already")
    flags.add(1, {"flag": True})
    flags.add(2, {"flag": 1})  # True == 1, but the labels are "true" and "1"
    flags.add(4, {"flag": 1.0})
    flags.add(8, {"flag": ["x", "y"]})  # a sequence value: JSON, not cached
    queue = meter.create_up_down_counter("queue.depth", unit="{item}")
    queue.add(7, {"queue": "outbox"})
    queue.add(-2, {"queue": "outbox"})
    latency = meter.create_histogram("http.server.duration", unit="s")
    for seconds in (0.003, 0.02, 0.2, 7.0):
        latency.record(seconds, {"route": "/orders"})
    sizes = meter.create_histogram("payload.size", unit="By",
                                   explicit_bucket_boundaries_advisory=[100.0, 1000.0])
    sizes.record(50, {"direction": "in"})
    sizes.record(5000, {"direction": "out"})
    signed = meter.create_histogram("temperature.delta", unit="Cel",
                                    explicit_bucket_boundaries_advisory=[-10.0, 0.0, 10.0])
    signed.record(3.5)  # negative bounds: no _sum and _count, as prometheus_client does

    def speed(_: CallbackOptions):
        yield Observation(1.5, {"axis": "x"})
        yield Observation(-0.5, {"axis": "y"})

    meter.create_observable_gauge("vehicle.speed", [speed], unit="m/s")
    meter.create_observable_gauge("cache.hit_ratio", [lambda _: [Observation(0.93)]], unit="1")
    meter.create_observable_counter("cpu.time", [lambda _: [Observation(12.5, {"cpu.mode":
                                                                                "user"})]],
                                    unit="s")
    meter.create_observable_up_down_counter("disk.used", [lambda _: [Observation(30)]],
                                            unit="%")
    meter.create_counter("odd-metric/name.x").add(1, {"0.leading": "digit", "dash-key": "v"})
    mixed = meter.create_counter("mixed.labels")
    mixed.add(1, {"a": "x"})
    mixed.add(1, {"a": "y", "b": "z"})  # the family has both labels; the first row gets b=""
    # the same name from another scope joins the same family
    # (with as many labels: the exporter misplaces the values of one with fewer, see below)
    provider.get_meter("other", attributes={"library.tier": "edge"}).create_counter(
        "http.server.requests", unit="{request}", description="Requests served").add(
        9, {"http.method": "GET", "http.status_code": 404, "retry": False})

    text = same_scrape(ours, theirs)
    assert ('otel_scope_name="app"' in text) is scoped
    if scoped:
        assert 'otel_scope_library_tier="core"' in text and 'otel_scope_name="other"' in text
    else:
        assert 'http_method="we\\"ird\\\\value\\nline"' in text
        assert 'jobs_total{flag="true"} 1.0' in text and 'jobs_total{flag="1"} 2.0' in text
        assert 'mixed_labels_total{a="x",b=""} 1.0' in text
        assert "temperature_delta_celsius_sum" not in text

    requests.add(10, {"http.method": "GET", "http.status_code": 200})  # cached rows, new values
    latency.record(0.004, {"route": "/orders"})
    second = same_scrape(ours, theirs)
    assert second != text
    assert 'http_method="GET",http_status_code="200",' in second and "} 13.0" in second


def test_a_metric_joining_a_family_with_fewer_labels_gets_them_empty():
    # (the exporter zips its values against the family's label names instead: with fewer
    # labels, values land under the wrong names)
    registry = CollectorRegistry()
    provider = MeterProvider(metric_readers=[PrometheusReader(registry=registry)])
    provider.get_meter("one").create_counter("jobs").add(1, {"queue": "a", "worker": "w1"})
    provider.get_meter("two").create_counter("jobs").add(2, {"worker": "w2"})
    text = generate_latest(registry).decode()
    assert 'jobs_total{queue="a",worker="w1"} 1.0' in text
    assert 'jobs_total{queue="",worker="w2"} 2.0' in text
    provider.shutdown()


def test_an_exponential_histogram_is_skipped_once_with_a_warning(caplog):
    """The text format has no exponential histograms (the exporter fails the whole scrape
    on one, opentelemetry-python-contrib 0.66b2): the rest is still served."""
    registry = CollectorRegistry()
    provider = MeterProvider(
        metric_readers=[PrometheusReader(registry=registry)],
        views=[View(instrument_name="exponential.*",
                    aggregation=ExponentialBucketHistogramAggregation())])
    meter = provider.get_meter("app")
    meter.create_histogram("exponential.latency").record(0.5)
    meter.create_counter("served").add(1)
    with caplog.at_level(logging.WARNING, logger="labotel"):
        for _ in range(3):
            text = generate_latest(registry).decode()
            assert "served_total 1.0" in text and "exponential" not in text
    assert sum("exponential.latency" in record.getMessage() for record in caplog.records) == 1
    provider.shutdown()


def test_nothing_registered_gives_an_empty_scrape(readers):
    _, ours, theirs, _ = readers
    assert same_scrape(ours, theirs) == ""


def test_registering_does_not_collect_and_shutdown_unregisters():
    registry = CollectorRegistry()
    reader = make_prometheus_reader(registry)
    assert isinstance(reader, PrometheusReader)
    assert generate_latest(registry) == b""  # not attached to a provider: nothing, no error
    provider = MeterProvider(metric_readers=[reader])
    provider.get_meter("m").create_counter("c").add(1)
    assert b"c_total 1.0" in generate_latest(registry)
    provider.shutdown()
    assert generate_latest(registry) == b""
    reader.shutdown()  # twice is harmless


def test_concurrent_scrapes_each_get_a_whole_answer():
    registry = CollectorRegistry()
    provider = MeterProvider(metric_readers=[PrometheusReader(registry=registry)])
    meter = provider.get_meter("app")
    for index in range(20):  # new attribute sets keep arriving while scrapes run
        meter.create_observable_gauge(
            f"gauge.{index}", [lambda _, i=index: [Observation(i, {"k": str(i)}),
                                                   Observation(-i, {"k": str(i), "x": "y"})]])
    first = generate_latest(registry)
    answers, errors = [], []

    def scrape_many():
        try:
            answers.extend(generate_latest(registry) for _ in range(50))
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=scrape_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(answers) == 200 and set(answers) == {first}
    assert b'gauge_19{k="19",x=""} 19.0' in first and b'gauge_19{k="19",x="y"} -19.0' in first
    provider.shutdown()
