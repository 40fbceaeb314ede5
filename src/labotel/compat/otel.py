"""What labotel borrows from the OpenTelemetry SDK, its exporters and prometheus_client.

Every private name of those packages that labotel reads or replaces is touched here and
nowhere else (``tests/unit/test_compat_seam.py`` scans the rest of the package). Each
borrowed capability is probed once, at ``start()``, by ``probe()``: a missing one turns a
feature off, with one log line and an entry under ``capabilities`` on
``/admin/monitoring/``; the functions below then answer "nothing" (no readers, no lock, no
update) instead of raising.

Per-provider answers come from the provider's own measurement consumer, never from the
SDK's class-level ``MeterProvider._all_metric_readers`` set, which holds the readers of
every provider in the process.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

from labotel.compat.capability import Capability

try:  # the exporter's own name and unit mapping, so /metrics names never drift from it
    from opentelemetry.exporter.prometheus._mapping import (
        map_unit,
        sanitize_attribute,
        sanitize_full_name,
    )
except ImportError:  # a future exporter moved it: labotel serves the exporter's reader
    map_unit = sanitize_attribute = sanitize_full_name = None  # type: ignore[assignment]

PROMETHEUS_MAPPING = sanitize_full_name is not None


# -- metric readers, span processors and their exporters ----------------------------------
def is_proxy_meter_provider(provider: object) -> bool:
    """Whether ``provider`` is the API's stand-in (``_ProxyMeterProvider``), not one set by
    anybody: the API has no public way to ask."""
    return type(provider).__name__.startswith("_Proxy")


def metric_readers(meter_provider: object) -> list:
    """The readers of this one SDK MeterProvider (none for an API or proxy provider)."""
    consumer = getattr(meter_provider, "_measurement_consumer", None)
    storages = getattr(consumer, "_reader_storages", None)
    return list(storages) if isinstance(storages, dict) else []


def span_processors(tracer_provider: object) -> tuple:
    """The SDK TracerProvider's span processors (none for a provider that is not the SDK's)."""
    active = getattr(tracer_provider, "_active_span_processor", None)
    return tuple(getattr(active, "_span_processors", ()))


def _batch(processor: object) -> object | None:
    return getattr(processor, "_batch_processor", None)


def span_queue_length(processor: object) -> int:
    """Spans waiting in a BatchSpanProcessor's queue (0 for any other processor)."""
    return len(getattr(_batch(processor), "_queue", ()))


def reader_export(reader: object) -> tuple[object | None, Any]:
    """(exporter, the lock the SDK holds while it sends) of a push reader."""
    return getattr(reader, "_exporter", None), getattr(reader, "_export_lock", None)


def processor_export(processor: object) -> tuple[object | None, Any]:
    """(exporter, the lock the SDK holds while it sends) of a batch span processor."""
    batch = _batch(processor)
    return getattr(batch, "_exporter", None), getattr(batch, "_export_lock", None)


def reader_thread(reader: object) -> threading.Thread | None:
    thread = getattr(reader, "_daemon_thread", None)
    return thread if isinstance(thread, threading.Thread) else None


def processor_thread(processor: object) -> threading.Thread | None:
    thread = getattr(_batch(processor), "_worker_thread", None)
    return thread if isinstance(thread, threading.Thread) else None


def reset_reader_after_fork(reader: object) -> None:
    """In a forked child: a fresh export lock (opentelemetry-python#3307) and, for the
    exporter's Prometheus reader, no cached ``target_info`` (the parent's Resource)."""
    if hasattr(reader, "_export_lock"):
        reader._export_lock = threading.Lock()  # type: ignore[attr-defined]
    collector = getattr(reader, "_collector", None)
    if hasattr(collector, "_target_info") and not hasattr(collector, "forget_target_info"):
        collector._target_info = None  # type: ignore[union-attr]


# -- the collection lock: held while the SDK runs every observable callback ---------------
def collection_lock(meter_provider: object) -> Any:
    return getattr(getattr(meter_provider, "_measurement_consumer", None), "_lock", None)


def replace_collection_lock(meter_provider: object) -> None:
    """In a forked child whose copy of the lock a parent collection held: a fresh one."""
    consumer = getattr(meter_provider, "_measurement_consumer", None)
    if consumer is not None:
        consumer._lock = threading.Lock()


_METRIC_LOCK_NAMES = ("_lock", "_meter_lock", "_instrument_registration_lock",
                      "_all_metric_readers_lock")


def metric_locks(meter_provider: object) -> list[Any]:
    """Every lock of the SDK's metric pipeline under ``meter_provider``: the provider's and
    its class's, each meter's, the collection lock, and each reader storage's, view's,
    aggregation's and exemplar reservoir's (each looked up with getattr: a version without
    one is skipped). Meant for a forked child, where nothing else runs yet."""
    holders: list[object] = [meter_provider, type(meter_provider)]
    holders += list(getattr(meter_provider, "_meters", {}).values())
    consumer = getattr(meter_provider, "_measurement_consumer", None)
    if consumer is not None:
        holders.append(consumer)
        for storage in list(getattr(consumer, "_reader_storages", {}).values()):
            holders.append(storage)
            views = getattr(storage, "_instrument_view_instrument_matches", {})
            for matches in list(views.values()):
                for match in matches:
                    holders.append(match)
                    for aggregation in list(getattr(match, "_attributes_aggregation",
                                                    {}).values()):
                        holders += [aggregation, getattr(aggregation, "_reservoir", None)]
    locks: dict[int, Any] = {}
    for holder in holders:
        for name in _METRIC_LOCK_NAMES:
            lock = getattr(holder, name, None) if holder is not None else None
            if lock is not None and hasattr(lock, "acquire"):
                locks[id(lock)] = lock
    return list(locks.values())


def forget_instruments(meter: object, meter_provider: object) -> None:
    """Take ``meter``'s instruments off the provider's collection and every reader's
    storage, and make the meter forget them (the SDK has no way to remove an instrument)."""
    instruments = list(getattr(meter, "_instrument_id_instrument", {}).values())
    if not instruments:
        return
    ours = {id(instrument) for instrument in instruments}
    consumer = getattr(meter_provider, "_measurement_consumer", None)
    if consumer is not None:
        with consumer._lock:
            consumer._async_instruments[:] = [
                i for i in consumer._async_instruments if id(i) not in ours]
            storages = list(consumer._reader_storages.values())
        for storage in storages:
            with storage._lock:
                for instrument in instruments:
                    storage._instrument_view_instrument_matches.pop(instrument, None)
    with meter._instrument_registration_lock:  # type: ignore[attr-defined]
        meter._instrument_id_instrument.clear()  # type: ignore[attr-defined]
    with meter._instrument_ids_lock:  # type: ignore[attr-defined]
        meter._instrument_ids.clear()  # type: ignore[attr-defined]


# -- resources ------------------------------------------------------------------------------
def can_update_resource(provider: object) -> bool:
    return callable(getattr(provider, "_update_resource", None))


def update_resource(provider: object, update: object) -> bool:
    """Merge ``update`` into the provider's Resource (the SDK's own after-fork hook, which
    also updates the tracers and meters already handed out); False where there is none."""
    updater = getattr(provider, "_update_resource", None)
    if updater is None:  # an API no-op/proxy provider
        return False
    updater(update)
    return True


def resource_of(provider: object) -> object | None:
    resource = getattr(provider, "resource", None)  # TracerProvider: public
    if resource is None:  # MeterProvider keeps it in its configuration
        resource = getattr(getattr(provider, "_sdk_config", None), "resource", None)
    return resource


def logger_provider() -> object | None:
    """The global LoggerProvider (the logs API still lives in ``opentelemetry._logs``);
    None while nothing imported that module, so no provider can have been set (importing
    it took 6 ms of every forked child's start)."""
    logs_api = sys.modules.get("opentelemetry._logs")
    return None if logs_api is None else logs_api.get_logger_provider()


# -- OTLP/gRPC ------------------------------------------------------------------------------
def grpc_reconnect(exporter: object, keep: Callable[[object], None]) -> None:
    """Open a new gRPC channel for an OTLP/gRPC exporter (nothing for any other exporter);
    the old channel is handed to ``keep`` first, so it is never finalized in the child."""
    reconnect = getattr(exporter, "_initialize_channel_and_stub", None)
    if reconnect is None:
        return
    keep(getattr(exporter, "_channel", None))
    reconnect()


def is_grpc_exporter(exporter: object) -> bool:
    """An OTLP/gRPC exporter (one whose channel ``grpc_disconnect`` can close)."""
    return callable(getattr(exporter, "_initialize_channel_and_stub", None)) and hasattr(
        exporter, "_client")


def grpc_disconnect(exporter: object) -> None:
    """Close an OTLP/gRPC exporter's channel; until ``grpc_reconnect`` its export fails
    at once, without a call (the exporter's own check for a missing stub)."""
    exporter._client = None  # type: ignore[attr-defined]
    channel = getattr(exporter, "_channel", None)
    if channel is not None:
        channel.close()


def grpc_endpoint(exporter: object) -> tuple[str, bool] | None:
    """The ``host:port`` (or other gRPC target) an OTLP/gRPC exporter sends to, and whether
    over TLS; None if it is unknown."""
    endpoint = getattr(exporter, "_endpoint", None)
    insecure = getattr(exporter, "_insecure", None)
    if not isinstance(endpoint, str) or not isinstance(insecure, bool):
        return None
    return endpoint, not insecure


class _CallReportingFailures:
    """A stub's ``Export`` multi-callable whose failed calls are told to ``failed``; any
    other use of it (``.future``, ``.with_call``) goes to the original, unreported."""

    def __init__(self, call: Any, failed: Callable[[], None]) -> None:
        self._call = call
        self._failed = failed

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self._call(*args, **kwargs)
        except Exception:
            self._failed()
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)


class _StubReportingFailures:
    """An OTLP/gRPC exporter's stub whose ``Export`` reports failed calls; everything else
    is the stub's own."""

    def __init__(self, stub: Any, failed: Callable[[], None]) -> None:
        self._stub = stub
        self.Export = _CallReportingFailures(stub.Export, failed)  # noqa: N815 - gRPC's name

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stub, name)


def report_failed_grpc_calls(exporter: object, failed: Callable[[], None]) -> None:
    """Have the current stub of an OTLP/gRPC exporter tell ``failed`` of each failed call
    (the exporter replaces its stub when it reconnects: call this again after that)."""
    stub = getattr(exporter, "_client", None)
    if stub is not None and not isinstance(stub, _StubReportingFailures) and \
            callable(getattr(stub, "Export", None)):
        exporter._client = _StubReportingFailures(stub, failed)  # type: ignore[attr-defined]


def export_timeout(exporter: object) -> float | None:
    """Seconds an OTLP exporter's export may take, retries included (None: unknown)."""
    timeout = getattr(exporter, "_timeout", None)
    return float(timeout) if isinstance(timeout, (int, float)) else None


def set_export_timeout(exporter: object, seconds: float) -> None:
    exporter._timeout = seconds  # type: ignore[attr-defined]


def exporter_shut_down(exporter: object) -> bool:
    """Whether an OTLP exporter's own ``shutdown()`` ran (it exports nothing after it)."""
    return getattr(exporter, "_shutdown", False) is True


# -- urllib3 (the OTLP/HTTP exporter's transport) ------------------------------------------
def connection_class_reporting_sockets(base: type, new_socket: Callable[[Any], None],
                                       refuse: Callable[[], bool]) -> type:
    """A urllib3 connection class telling ``new_socket`` of each socket it opens, and
    opening none once ``refuse()`` says so (its ``_new_conn`` is the one place they open).
    ``refuse()`` is asked again once the socket is known: an abort that came while it
    connected did not see it, and its request would wait out its whole timeout."""

    class Reporting(base):  # type: ignore[misc, valid-type]
        def _new_conn(self) -> Any:
            if refuse():
                raise OSError("labotel is shutting down: no new export connections")
            sock = super()._new_conn()
            new_socket(sock)
            if refuse():
                sock.close()
                raise OSError("labotel is shutting down: no new export connections")
            return sock

    return Reporting


# -- prometheus_client families ------------------------------------------------------------
def family_copier(factory: type, name: str, documentation: str, unit: str
                  ) -> tuple[Any, Callable[[], Any]]:
    """(a checked template family, a function making empty copies of it).

    prometheus_client's constructor applies its naming rules (unit suffix, ``_total``) on
    every call; a scrape builds its families as copies of a template checked once."""
    template = factory(name, documentation, labels=(), unit=unit)
    fields = {key: value for key, value in vars(template).items() if key != "samples"}

    def new_family() -> Any:
        family: Any = object.__new__(factory)
        family.__dict__.update(fields)
        family.samples = []
        return family

    return template, new_family


# -- the probe --------------------------------------------------------------------------------
def _assigns(function: Any, *names: str) -> bool:
    """Whether a constructor's code assigns or reads every one of ``names`` (read from
    its bytecode: the probe builds no object that would start a thread)."""
    code = getattr(function, "__code__", None)
    return code is not None and set(names) <= set(code.co_names)


def _has_metric_locks() -> bool:
    """The SDK's per-view, per-aggregation and per-reader-storage objects still set the
    ``_lock`` (and the attributes leading to them) that ``metric_locks`` finds."""
    try:
        from opentelemetry.sdk.metrics._internal._view_instrument_match import (
            _ViewInstrumentMatch,
        )
        from opentelemetry.sdk.metrics._internal.aggregation import _Aggregation
        from opentelemetry.sdk.metrics._internal.metric_reader_storage import (
            MetricReaderStorage,
        )
    except ImportError:
        return False
    return (_assigns(_ViewInstrumentMatch.__init__, "_lock", "_attributes_aggregation")
            and _assigns(_Aggregation.__init__, "_lock", "_reservoir")
            and _assigns(MetricReaderStorage.__init__, "_lock",
                         "_instrument_view_instrument_matches"))


def probe() -> list[Capability]:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = MeterProvider(shutdown_on_exit=False)
    consumer = getattr(provider, "_measurement_consumer", None)
    meter = provider.get_meter("labotel.compat.probe")
    tracer_provider = TracerProvider(shutdown_on_exit=False)
    try:
        from opentelemetry.sdk._shared_internal import BatchProcessor
    except ImportError:
        BatchProcessor = None  # type: ignore[assignment, misc]
    capabilities = [
        Capability.check(
            "otel.add_metric_reader", "/metrics for a MeterProvider the application owns",
            callable(getattr(provider, "add_metric_reader", None)),
            "MeterProvider.add_metric_reader is missing (opentelemetry-sdk < 1.43)"),
        Capability.check(
            "otel.update_resource", "a forked worker's own pid and service.instance.id",
            can_update_resource(provider) and can_update_resource(tracer_provider),
            "MeterProvider/TracerProvider._update_resource is missing (opentelemetry-sdk < 1.44)"),
        Capability.check(
            "otel.metric_readers", "per-provider reader checks, fork safety of metric exports",
            isinstance(getattr(consumer, "_reader_storages", None), dict),
            "MeterProvider._measurement_consumer._reader_storages is not a dict"),
        Capability.check(
            "otel.collection_lock", "no metric collection half-done in a forked child",
            hasattr(getattr(consumer, "_lock", None), "acquire"),
            "MeterProvider._measurement_consumer._lock is missing"),
        Capability.check(
            "otel.metric_locks", "every metric lock free in a forked child (one held by a "
            "parent thread at fork hung the child's collections and exit)",
            _has_metric_locks(),
            "the SDK's view, aggregation or reader-storage objects no longer set _lock"),
        Capability.check(
            "otel.forget_instruments", "labotel's instruments leave an app-owned provider at "
            "shutdown",
            all(hasattr(meter, name) for name in (
                "_instrument_id_instrument", "_instrument_registration_lock",
                "_instrument_ids_lock", "_instrument_ids"))
            and all(hasattr(consumer, name) for name in ("_async_instruments", "_lock")),
            "Meter._instrument_* / the consumer's _async_instruments are missing"),
        Capability.check(
            "otel.span_processors", "span exporters found for fork safety and bounded shutdown",
            isinstance(getattr(getattr(tracer_provider, "_active_span_processor", None),
                               "_span_processors", None), tuple),
            "TracerProvider._active_span_processor._span_processors is missing"),
        Capability.check(
            "otel.metric_export_lock", "metric exports held across fork, bounded shutdown",
            _assigns(PeriodicExportingMetricReader.__init__, "_exporter", "_export_lock",
                     "_daemon_thread"),
            "PeriodicExportingMetricReader no longer sets _exporter/_export_lock/_daemon_thread"),
        Capability.check(
            "otel.span_export_lock", "span exports held across fork, bounded shutdown, the "
            "span queue length",
            _assigns(BatchSpanProcessor.__init__, "_batch_processor") and BatchProcessor
            is not None and _assigns(BatchProcessor.__init__, "_exporter", "_export_lock",
                                     "_queue", "_worker_thread"),
            "BatchSpanProcessor no longer keeps _batch_processor with _exporter/_export_lock/"
            "_queue/_worker_thread"),
        Capability.check(
            "otel.prometheus_mapping", "labotel's cached /metrics reader (else the exporter's)",
            PROMETHEUS_MAPPING, "opentelemetry.exporter.prometheus._mapping moved"),
        *probe_grpc(),
    ]
    provider.shutdown()
    tracer_provider.shutdown()
    return capabilities


GRPC_EXPORTER_MODULE = "opentelemetry.exporter.otlp.proto.grpc.exporter"
_GRPC_RECONNECT = "a fresh OTLP/gRPC channel in a forked child"
_GRPC_IDLE = "no gRPC channel (nor gRPC's threads) kept open to a collector that is down"


def probe_grpc() -> list[Capability]:
    """The OTLP/gRPC exporter's capabilities, once something in the process imported it
    (labotel's own exporter or the application's): until then none of it is in use."""
    if GRPC_EXPORTER_MODULE not in sys.modules:
        why = "no OTLP/gRPC exporter in use in this process"
        return [Capability.unchecked("otel.grpc_reconnect", _GRPC_RECONNECT, why),
                Capability.unchecked("otel.grpc_idle_when_down", _GRPC_IDLE, why)]
    try:
        from opentelemetry.exporter.otlp.proto.grpc.exporter import OTLPExporterMixin
    except ImportError as error:
        return [Capability.check("otel.grpc_reconnect", _GRPC_RECONNECT, False,
                                 f"no OTLP/gRPC: {error}"),
                Capability.check("otel.grpc_idle_when_down", _GRPC_IDLE, False,
                                 f"no OTLP/gRPC: {error}")]
    reconnect = getattr(OTLPExporterMixin, "_initialize_channel_and_stub", None)
    return [
        Capability.check(
            "otel.grpc_reconnect", _GRPC_RECONNECT,
            reconnect is not None and _assigns(reconnect, "_channel"),
            "OTLPExporterMixin._initialize_channel_and_stub is missing"),
        Capability.check(
            "otel.grpc_idle_when_down", _GRPC_IDLE,
            reconnect is not None and _assigns(reconnect, "_channel", "_client")
            and _assigns(getattr(OTLPExporterMixin, "_export", None), "_client", "_timeout")
            and _assigns(OTLPExporterMixin.__init__, "_endpoint", "_insecure"),
            "OTLPExporterMixin no longer keeps _endpoint and _insecure, or _export no "
            "longer reads _client and _timeout"),
    ]
