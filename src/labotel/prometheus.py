"""The ``/metrics`` reader: OTel SDK metrics as prometheus_client metric families.

It exposes what ``opentelemetry-exporter-prometheus``'s reader exposes (same names, unit
suffixes, label sanitizing, value encoding, ``target_info`` and, when asked for,
``otel_scope_*`` labels; a test holds the two outputs byte-for-byte equal) and uses that
package's own name and unit mapping. The difference is cost: the exporter re-derives every
metric name, unit and label set with regular expressions and ``json.dumps`` on every
scrape, which was a fifth of labotel's CPU per scrape. Here that work is done once per
metric and per attribute set and cached, so a scrape only copies values into families.
Exposition stays prometheus_client's. On labotel's own provider it adds no
``otel_scope_*`` labels: they were a third of the labels on every series, and of the
exposition cost, to name the library that made each metric. On a provider the application
owns they are kept, since other instrumentations there may export the same names.

Two cases differ on purpose, where the exporter (0.66b2) goes wrong: an exponential
histogram, which the text format cannot carry, is skipped with one warning instead of
failing the whole scrape; and a metric that joins a family (same name, another meter) with
fewer labels gets "" for the missing ones instead of its values under the wrong names.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    HistogramDataPoint,
    Metric,
    MetricReader,
    MetricsData,
    Sum,
)
from opentelemetry.sdk.metrics.export import Histogram as HistogramData
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.core import Metric as PrometheusMetric
from prometheus_client.samples import Sample

from labotel.compat import otel
from labotel.compat.otel import map_unit, sanitize_attribute, sanitize_full_name

log = logging.getLogger(__name__)
CACHE_LIMIT = 10_000  # attribute sets remembered; past this the cache starts over
TARGET_INFO = ("target", "Target metadata")
CUMULATIVE = AggregationTemporality.CUMULATIVE


def make_prometheus_reader(registry: CollectorRegistry = REGISTRY,
                           scope_labels: bool = False) -> MetricReader:
    """labotel's reader, or the exporter's if its mapping moved.

    ``scope_labels`` adds the exporter's ``otel_scope_*`` labels: needed on a provider
    the application owns, where another instrumentation may export the same metric name.
    """
    if not otel.PROMETHEUS_MAPPING:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader

        return PrometheusMetricReader(scope_info_enabled=scope_labels, registry=registry)
    return PrometheusReader(registry, scope_labels=scope_labels)


def is_prometheus_reader(reader: object) -> bool:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader

    return isinstance(reader, (PrometheusReader, PrometheusMetricReader))


class PrometheusReader(MetricReader):
    """A pull reader: each scrape of its registry collects the SDK once."""

    def __init__(self, registry: CollectorRegistry = REGISTRY, scope_labels: bool = False) -> None:
        super().__init__(preferred_temporality={
            kind: CUMULATIVE for kind in (Counter, UpDownCounter, Histogram, ObservableCounter,
                                          ObservableUpDownCounter, ObservableGauge)})
        # each scrape's data, handed from collect() to take() on the scraping thread (by
        # thread ident): no lock of labotel's is held while the SDK runs observable
        # callbacks (the application's own, on a MeterProvider it owns). Not a
        # threading.local: freed in a garbage cycle, one can deadlock CPython 3.11
        # (runtime/thread_frames.py).
        self._received: dict[int, MetricsData | None] = {}
        self._registry = registry
        self._collector = MetricsCollector(self, scope_labels)
        registry.register(self._collector)

    def _receive_metrics(self, metrics_data: MetricsData, timeout_millis: float = 10_000,
                         **kwargs: Any) -> None:
        self._received[threading.get_ident()] = metrics_data  # from collect(), this thread

    def take(self) -> MetricsData | None:
        """Collect the SDK now and hand back what it produced for this scrape."""
        self.collect()
        return self._received.pop(threading.get_ident(), None)

    def forget_target_info(self) -> None:
        """A forked child must not serve the parent's cached Resource."""
        self._collector.forget_target_info()

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        try:
            self._registry.unregister(self._collector)
        except KeyError:  # already unregistered
            pass


class FamilySpec:
    """How one OTel metric becomes a Prometheus family: worked out once, then reused."""

    def __init__(self, factory: type[PrometheusMetric], name: str, documentation: str,
                 unit: str) -> None:
        self.key = (name, documentation, unit, factory)
        # each scrape gets a copy of a template whose names were checked once
        template, self.new_family = otel.family_copier(factory, name, documentation, unit)
        self.name = template.name
        self.sample = self.name + "_total" if template.type == "counter" else self.name


class MetricsCollector:
    """A prometheus_client collector translating one reader's data, with cached names."""

    def __init__(self, reader: PrometheusReader, scope_labels: bool = False) -> None:
        self._reader = reader
        self._scope_labels = scope_labels
        self._unscoped = LabelRows({})
        self._scopes: dict[InstrumentationScope, LabelRows] = {}
        self._specs: dict[tuple, FamilySpec | None] = {}
        self._target_info: InfoMetricFamily | None = None  # forgotten after fork
        self._target_resource: Resource | None = None

    def forget_target_info(self) -> None:
        self._target_info = None

    def describe(self) -> list:
        # registering must not trigger a collection (the reader may not be attached yet)
        return []

    def collect(self) -> Iterator[PrometheusMetric]:
        data = self._reader.take()
        if data is None:
            return
        # this scrape's families, each with the label names its first metric brought
        families: dict[tuple, tuple[PrometheusMetric, tuple[str, ...]]] = {}
        for resource_metrics in data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                scope = self._scope(scope_metrics.scope)
                for metric in scope_metrics.metrics:
                    self._add(metric, families, scope)
        if data.resource_metrics:
            yield self._info(data.resource_metrics[0].resource)
        for family, _ in families.values():
            yield family

    def _info(self, resource: Resource) -> InfoMetricFamily:
        if self._target_info is None or resource is not self._target_resource:
            labels = {sanitize_attribute(key): _label_value(value)
                      for key, value in resource.attributes.items()}
            info = InfoMetricFamily(*TARGET_INFO, labels=list(labels))
            info.add_metric(labels=list(labels), value=labels)
            self._target_info, self._target_resource = info, resource
        return self._target_info

    def _scope(self, scope: InstrumentationScope) -> LabelRows:
        """The label rows of one scope: with its otel_scope_* labels if they are on."""
        if not self._scope_labels:
            return self._unscoped
        rows = self._scopes.get(scope)
        if rows is None:
            labels = {f"otel_scope_{key}": value for key, value in (scope.attributes or {}).items()}
            labels.update(otel_scope_name=scope.name or "", otel_scope_version=scope.version or "",
                          otel_scope_schema_url=scope.schema_url or "")
            rows = self._scopes[scope] = LabelRows(
                {sanitize_attribute(key): _label_value(value) for key, value in labels.items()})
        return rows

    def _add(self, metric: Metric, families: dict[tuple, tuple[PrometheusMetric, tuple[str, ...]]],
             scope: LabelRows) -> None:
        spec = self._spec(metric)
        if spec is None:
            return
        points = metric.data.data_points
        rows = [scope.row(point.attributes) for point in points]
        known = families.get(spec.key)
        if known is None:  # metrics sharing a name share a family, with the first's labels
            known = families[spec.key] = (spec.new_family(), _label_names(rows))
        family, names = known
        samples, sample_name = family.samples, spec.sample
        for point, row in zip(points, rows, strict=True):
            if row.names != names:  # a point without some of the family's labels
                row = row.widened(names)
            if isinstance(point, HistogramDataPoint):
                self._add_histogram(family, row, point)
            else:
                samples.append(Sample(sample_name, row.labels, point.value))  # type: ignore[attr-defined]  # a number point

    def _add_histogram(self, family: PrometheusMetric, row: LabelRow,
                       point: HistogramDataPoint) -> None:
        """What HistogramMetricFamily.add_metric adds, with each bucket's labels cached."""
        bounds = tuple(point.explicit_bounds)
        bucket_labels = row.buckets.get(bounds)
        if bucket_labels is None:
            bucket_labels = row.buckets[bounds] = [
                {**row.labels, "le": f"{bound}"} for bound in (*bounds, "+Inf")]
        name, samples, total = family.name, family.samples, 0
        for labels, count in zip(bucket_labels, point.bucket_counts, strict=False):
            total += count
            samples.append(Sample(name + "_bucket", labels, total))
        if (bounds[0] if bounds else 0) >= 0:  # no sum and count with negative buckets
            samples.append(Sample(name + "_count", row.labels, total))
            samples.append(Sample(name + "_sum", row.labels, point.sum))

    def _spec(self, metric: Metric) -> FamilySpec | None:
        data = metric.data
        monotonic = getattr(data, "is_monotonic", None)
        temporality = getattr(data, "aggregation_temporality", None)
        identity = (metric.name, metric.description, metric.unit, type(data), monotonic,
                    temporality)
        if identity in self._specs:
            return self._specs[identity]
        factory: type[Any] | None
        if isinstance(data, Sum):
            # Prometheus compatibility: a cumulative non-monotonic sum is a gauge
            factory = (GaugeMetricFamily if not monotonic and temporality == CUMULATIVE
                       else CounterMetricFamily)
        elif isinstance(data, Gauge):
            factory = GaugeMetricFamily
        elif isinstance(data, HistogramData):
            factory = HistogramMetricFamily
        else:
            factory = None
            log.warning("labotel: %s is a %s, which /metrics cannot expose; skipped",
                        metric.name, type(data).__name__)
        spec = None
        if factory is not None:
            spec = FamilySpec(factory, sanitize_full_name(metric.name), metric.description or "",
                              map_unit(metric.unit or ""))
        self._specs[identity] = spec
        return spec


class LabelRow:
    """One attribute set as Prometheus labels; shared by its samples, scrape after scrape."""

    __slots__ = ("names", "labels", "buckets")

    def __init__(self, labels: dict[str, str]) -> None:
        self.names = tuple(sorted(labels))
        self.labels = labels
        self.buckets: dict[tuple, list[dict[str, str]]] = {}  # histogram bounds -> "le" labels

    def widened(self, names: tuple[str, ...]) -> LabelRow:
        """This row on a family's wider label set ("" for the labels it lacks)."""
        return LabelRow({name: self.labels.get(name, "") for name in names})


NO_LABELS = LabelRow({})


class LabelRows:
    """Label rows for attribute sets, each prefixed with the same ``base`` labels (cached)."""

    def __init__(self, base: dict[str, str]) -> None:
        self._base = base
        self._empty = LabelRow(base) if base else NO_LABELS
        self._by_content: dict[tuple, LabelRow] = {}
        # the SDK hands over the same attributes dict for a series every collection
        self._by_dict: dict[int, tuple[Any, LabelRow]] = {}

    def row(self, attributes: Any) -> LabelRow:
        if not attributes:
            return self._empty
        seen = self._by_dict.get(id(attributes))
        if seen is not None and seen[0] is attributes:  # (held, so its id is not reused)
            return seen[1]
        # the types too: True == 1 == 1.0, but they are the labels "true", "1" and "1.0"
        try:
            key = (tuple(attributes.items()), tuple(map(type, attributes.values())))
            row = self._by_content.get(key)
        except TypeError:  # an unhashable (sequence) value: encode without caching
            return self._encode(attributes)
        if row is None:
            row = self._by_content[key] = self._encode(attributes)
        if len(self._by_dict) >= CACHE_LIMIT:  # bounded: start over
            self._by_dict.clear()
            self._by_content.clear()
        self._by_dict[id(attributes)] = (attributes, row)
        return row

    def _encode(self, attributes: Any) -> LabelRow:
        labels = dict(self._base)  # the attributes' own labels win, as in the exporter
        for key, value in attributes.items():
            labels[sanitize_attribute(key)] = _label_value(value)
        return LabelRow(labels)


def _label_names(rows: list[LabelRow]) -> tuple[str, ...]:
    """The sorted union of the rows' label names (usually every row has the same)."""
    if not rows:
        return ()
    first = rows[0].names
    for row in rows:
        if row.names != first:
            return tuple(sorted({name for row in rows for name in row.names}))
    return first


def _label_value(value: Any) -> str:
    # as the exporter does: strings verbatim, anything else as JSON (true, 3, ["a"])
    return value if isinstance(value, str) else json.dumps(value, default=str)

