"""OpenTelemetry providers, readers and exporters for labotel.

If the application (or ``opentelemetry-instrument``) already set global providers,
labotel registers its instruments on those and owns nothing. Otherwise it builds its own
MeterProvider (Prometheus reader on the default prometheus_client registry, plus OTLP or
console push readers as configured) and TracerProvider (OTLP/console span exporters),
keeps them private to labotel, and shuts them down in ``shutdown()``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import threading
import time
import uuid
from typing import Any, cast

from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.sdk.metrics import (
    AlwaysOffExemplarFilter,
    Exemplar,
    ExemplarFilter,
    ExemplarReservoir,
    MeterProvider,
)
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.metrics.view import View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.util.types import Attributes

from labotel import collector_check, descriptors, exporting, own_random
from labotel.compat import cpython, otel
from labotel.config import Settings
from labotel.prometheus import is_prometheus_reader, make_prometheus_reader

log = logging.getLogger(__name__)
INSTRUMENTATION_SCOPE = "labotel"


@dataclasses.dataclass
class Providers:
    meter_provider: metrics.MeterProvider
    tracer_provider: trace.TracerProvider
    owns_meter_provider: bool
    owns_tracer_provider: bool
    resource: Resource | None
    # labotel's Prometheus reader on an app-owned MeterProvider that had none (see below)
    prometheus_reader: MetricReader | None = None
    shutdown_timeout: float = 5.0  # seconds shutdown() waits for the final exports

    def shutdown(self, deadline: float | None = None) -> None:
        """Flush and shut down what labotel created; leave the app's providers alone.

        Bounded by ``deadline`` (default: ``shutdown_timeout`` from now): an unreachable
        collector must not hang the app's exit. Each provider is closed on a thread of its
        own, so both stop taking data at once. At the deadline every exporter still sending
        is aborted (its own ``shutdown()``: a gRPC channel is closed, cancelling the call in
        flight; an HTTP request's socket is shut), and the export threads end within
        ``ABORT_GRACE``.
        """
        if deadline is None:
            deadline = time.monotonic() + self.shutdown_timeout
        waited = f"within shutdown_timeout={self.shutdown_timeout:g}s (is the collector reachable?)"
        down = _collectors_down(self)
        if down:  # the final exports would only retry until the deadline
            deadline = min(deadline, time.monotonic() + DOWN_COLLECTOR_WAIT)
            waited = _DOWN_WAITED
        if self.prometheus_reader is not None:
            try:
                self.meter_provider.remove_metric_reader(self.prometheus_reader)  # type: ignore[attr-defined]  # SDK 1.43+, untyped
            except Exception:
                log.exception("labotel: removing its Prometheus reader failed")
            self.prometheus_reader = None
        owned = [provider for is_owned, provider in (  # the meter first: its wait is bounded
            (self.owns_meter_provider, self.meter_provider),
            (self.owns_tracer_provider, self.tracer_provider)) if is_owned]
        closers = []
        for provider in owned:
            kind = type(provider).__name__
            closer = threading.Thread(target=_close, args=(provider, deadline), daemon=True,
                                      name=f"labotel-shutdown-{kind}")
            try:
                closer.start()
            except RuntimeError:  # at exit on Python 3.12 no thread can start: close here.
                # The SDK bounds the meter's wait; the last span export is bounded by the
                # exporter's own timeout, unless the collector is known down: then dropped.
                if down:
                    self._abort_exports()
                _close(provider, deadline)
                continue
            closers.append((kind, closer))
        if not down and _join_until_down(self, [closer for _, closer in closers], deadline):
            deadline = min(deadline, time.monotonic() + DOWN_COLLECTOR_WAIT)
            waited = _DOWN_WAITED
        for _, closer in closers:
            closer.join(max(0.0, deadline - time.monotonic()))
        stuck = [kind for kind, closer in closers if closer.is_alive()]
        unwatch_exports(self)
        # The SDK's MeterProvider.shutdown() gives up joining its reader's thread when the
        # time is up, and returns: that thread, still in an export, is aborted here too
        # (its request to a hung collector otherwise ran out the exporter's timeout).
        exporting_on = [thread.name for thread in _export_threads(self) if thread.is_alive()]
        if not stuck and not exporting_on:
            return
        self._abort_exports()
        threads = [closer for _, closer in closers] + _export_threads(self)
        for thread in threads:
            thread.join(max(0.0, deadline + ABORT_GRACE - time.monotonic()))
        left = [thread.name for thread in threads if thread.is_alive()]
        log.warning("labotel: %s did not finish exporting %s; not waiting longer, unsent "
                    "telemetry is dropped%s", " and ".join(stuck or exporting_on), waited,
                    f"; still running: {', '.join(left)}" if left else "")

    def _abort_exports(self) -> None:
        if self.owns_meter_provider:
            for reader in otel.metric_readers(self.meter_provider):
                if otel.reader_export(reader)[0] is not None:
                    # Its thread's last collection would run every observable callback for
                    # an export that is dropped: with six busy application threads that
                    # kept it alive ~1 s after shutdown() returned.
                    setattr(reader, "collect", _collect_nothing)  # noqa: B010 - a method
        for exporter in _owned_exporters(self):
            exporting.abort(exporter)


def _collect_nothing(*args: Any, **kwargs: Any) -> None:
    """A push reader's ``collect`` once its exports were aborted at shutdown."""


ABORT_GRACE = 0.15  # seconds the aborted export threads get to end
DOWN_COLLECTOR_WAIT = 1.0  # seconds shutdown() gives exporters whose last export failed
_DOWN_WAITED = (f"within {DOWN_COLLECTOR_WAIT:g}s: the collector failed the last export "
                "or does not answer, so shutdown_timeout is not waited out")


def _join_until_down(providers: Providers, closers: list[threading.Thread],
                     deadline: float) -> bool:
    """Join ``closers`` until the deadline, looking every 0.1 s whether the collector is
    down meanwhile (the first export's question gone silent, a retry). True if it is, with
    closers still running: the caller then gives them ``DOWN_COLLECTOR_WAIT`` more, not
    the rest of ``shutdown_timeout``."""
    for closer in closers:
        while closer.is_alive():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            closer.join(min(0.1, left))
            if closer.is_alive() and _collectors_down(providers):
                return True
    return False


def _collectors_down(providers: Providers) -> bool:
    """Did the push exporters of labotel's own providers fail their last exports?

    A collector that refused or timed out the last export is not waited for the whole
    ``shutdown_timeout`` (an app's exit delayed 5 s for nothing): one more second, then the
    exports still running are aborted. Down means: at least one exporter failed its last
    export, or an attempt of the export in flight (the exporter is retrying), and none
    succeeded its last (an exporter that never exported, such as the span exporter of an
    app without detections, says nothing either way).
    """
    outcomes = [False if watch.failing else watch.last_ok
                for watch in map(exporting.watch_of, _owned_exporters(providers))
                if watch is not None]
    return False in outcomes and True not in outcomes


def _close(provider: metrics.MeterProvider | trace.TracerProvider, deadline: float) -> None:
    """Shut one provider down; its final export happens here (no separate flush first)."""
    try:
        if isinstance(provider, MeterProvider):
            remaining = max(0.0, deadline - time.monotonic())
            provider.shutdown(timeout_millis=remaining * 1000)
        else:
            provider.shutdown()  # type: ignore[union-attr]
    except Exception:
        log.exception("labotel: shutting down %s failed", type(provider).__name__)


def forget_instruments(meter: metrics.Meter, meter_provider: metrics.MeterProvider) -> None:
    """Take labotel's instruments off a MeterProvider the application owns (and keeps).

    The SDK has no way to remove an instrument: without this, every observable callback of
    a stopped labotel kept being called at each collection and its series kept being
    exported. So ``meter``'s instruments leave the collection (asynchronous instruments'
    callbacks) and every reader's storage, and the meter forgets them, so a later
    ``start()`` registers fresh ones.
    """
    otel.forget_instruments(meter, meter_provider)


def global_meter_provider_set() -> bool:
    return not otel.is_proxy_meter_provider(metrics.get_meter_provider())


def global_tracer_provider_set() -> bool:
    provider = trace.get_tracer_provider()
    return not isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider))


def build_resource(settings: Settings) -> Resource:
    """Resource from OTEL_RESOURCE_ATTRIBUTES / OTEL_SERVICE_NAME, plus this process."""
    attributes: dict[str, Any] = {
        "service.instance.id": str(uuid.uuid4()),
        "process.pid": os.getpid(),
        "process.runtime.name": sys.implementation.name,
        "process.runtime.version": sys.version.split()[0],
    }
    resource = Resource.create(attributes)
    name = settings.service_name
    current = resource.attributes.get("service.name", "")
    if name is None and isinstance(current, str) and current.startswith("unknown_service"):
        script = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
        name = os.path.splitext(script)[0] or "python"
    if name:
        resource = resource.merge(Resource({"service.name": name}))
    return resource


def build_providers(settings: Settings) -> Providers:
    resource = None
    prometheus_reader = None
    if global_meter_provider_set():
        meter_provider, owns_meter = metrics.get_meter_provider(), False
        if settings.admin_address or "prometheus" in settings.metrics_exporters():
            prometheus_reader = _attach_prometheus_reader(meter_provider)
    else:
        resource = build_resource(settings)
        exemplar_filter = _exemplar_filter()
        # shutdown_on_exit=False: labotel's own exit hook (monitor.py) closes it within
        # shutdown_timeout; the SDK's waited out each export to a hung collector
        meter_provider = MeterProvider(resource=resource, metric_readers=_metric_readers(settings),
                                       exemplar_filter=exemplar_filter,
                                       views=_views(exemplar_filter), shutdown_on_exit=False)
        owns_meter = True
    try:
        tracer_provider, owns_tracer = _tracer_provider(settings, resource)
    except BaseException:  # no Providers to shut down: the meter's export thread runs
        if owns_meter:
            _discard(meter_provider)
        raise
    providers = Providers(meter_provider, tracer_provider, owns_meter, owns_tracer, resource,
                          prometheus_reader, settings.shutdown_timeout)
    if not (owns_meter and owns_tracer):
        _add_missing_identity(providers)
    return providers


def _tracer_provider(settings: Settings,
                     resource: Resource | None) -> tuple[trace.TracerProvider, bool]:
    """The application's TracerProvider, or labotel's own; and whether labotel owns it."""
    if global_tracer_provider_set():
        return trace.get_tracer_provider(), False
    tracer_provider = TracerProvider(resource=resource or build_resource(settings),
                                     id_generator=OwnRandomIds(), shutdown_on_exit=False)
    try:
        for exporter in _span_exporters(settings):
            tracer_provider.add_span_processor(BatchSpanProcessor(
                exporter, max_queue_size=None if "OTEL_BSP_MAX_QUEUE_SIZE" in os.environ
                else SPAN_QUEUE_SIZE))
    except BaseException:
        _discard(tracer_provider)
        raise
    return tracer_provider, True


def _discard(provider: metrics.MeterProvider | trace.TracerProvider) -> None:
    """Shut down a provider of a ``start()`` that failed, so its export threads end. A
    new TracerProvider has no span to send; a MeterProvider's final export goes out on
    its reader's thread, which is not waited for past ``_DISCARD_WAIT``."""
    try:
        if isinstance(provider, MeterProvider):
            provider.shutdown(timeout_millis=_DISCARD_WAIT * 1000)
        elif isinstance(provider, TracerProvider):
            provider.shutdown()
    except Exception:
        log.debug("labotel: shutting down a provider of a failed start raised", exc_info=True)


_DISCARD_WAIT = 0.1  # seconds a failed start() waits for its meter's export thread


class OwnRandomIds(RandomIdGenerator):
    """The SDK's random trace and span ids, drawn from labotel's own generator: the SDK's
    draw from the ``random`` module's, so labotel's detection spans would change the
    numbers an application that seeds ``random`` gets."""

    def generate_span_id(self) -> int:
        span_id = own_random.generator.getrandbits(64)
        while span_id == trace.INVALID_SPAN_ID:
            span_id = own_random.generator.getrandbits(64)
        return span_id

    def generate_trace_id(self) -> int:
        trace_id = own_random.generator.getrandbits(128)
        while trace_id == trace.INVALID_TRACE_ID:
            trace_id = own_random.generator.getrandbits(128)
        return trace_id


# Detection spans queued for a collector (the SDK's default is 2048): with the collector
# down the queue stays full, so this is labotel's worst case for it.
SPAN_QUEUE_SIZE = 512


def span_queue_length(providers: Providers) -> int:
    """Spans waiting in labotel's own TracerProvider's batch queues (0 on the app's)."""
    if not providers.owns_tracer_provider:
        return 0
    return sum(otel.span_queue_length(processor)
               for processor in otel.span_processors(providers.tracer_provider))


def _attach_prometheus_reader(meter_provider: metrics.MeterProvider) -> MetricReader | None:
    """Make an app-owned SDK MeterProvider visible on the debug server's ``/metrics``.

    The debug server serves the default prometheus_client registry. If the app (or the
    ``opentelemetry-instrument`` configurator) already has a PrometheusMetricReader, its
    collector is in that registry and serves on its own port too (9464): adding a second
    reader would duplicate every series, so labotel adds one only when there is none
    (``OTEL_METRICS_EXPORTER=otlp``) and never opens a Prometheus port of its own.
    """
    add = getattr(meter_provider, "add_metric_reader", None)
    if add is None:  # not the SDK's provider (an SDK without it is below labotel's floor)
        return None
    if any(is_prometheus_reader(reader) for reader in otel.metric_readers(meter_provider)):
        return None
    # with otel_scope_* labels: the app's other instrumentations (system-metrics) may
    # export the same names, which only the scope then tells apart
    reader = make_prometheus_reader(scope_labels=True)
    add(reader)
    return reader


# -- process identity: fork copies the parent's Resource ---------------------------------
def process_identity(parent_pid: int | None = None) -> dict[str, object]:
    """The attributes that tell one process (and one forked worker) from another."""
    identity: dict[str, object] = {"service.instance.id": str(uuid.uuid4()),
                                   "process.pid": os.getpid()}
    if parent_pid is not None:
        identity["process.parent_pid"] = parent_pid
    return identity


# Held across fork so no metric collection is half-done in the child (the SDK holds this
# lock while it runs every observable callback; a copy locked at fork stays locked forever).
_held_for_fork: list = []
_collection_missed_at_fork: list = []  # the collection lock, when it was busy at fork
_retired_at_fork: list = []  # export watches whose gRPC channel was swapped before fork


def hold_collection_for_fork(providers: Providers) -> None:
    """Before fork: hold each push exporter's lock, and the metric-collection lock.

    A gRPC call in flight at fork time can leave gRPC's internal locks held in the child,
    whose exports then never arrive even on a fresh channel. So an export in flight to a
    collector that answers is waited for (``exporting.HEALTHY_WAIT``, 0.5 s at most); one
    to a collector that failed its last export (down, hung, unreachable) is not, so fork
    stays fast then: the child resets that lock and opens its own channel. The collection
    lock is taken only if it is free: a collection running at that instant is left to the
    parent, and the child gets a fresh lock (and ``_free_metric_locks`` frees the rest).
    Waiting for it, even 5 ms, gave up the GIL, and with the application's threads busy
    getting it back took tens of ms: fork's p99 with gRPC was 16.8 ms with that wait and
    3.3 ms without it (``bench/fork_latency.py``'s case, two busy threads).
    """
    for exporter, lock in _push_exports(providers):
        watched = exporting.watch_of(exporter)
        wait = watched.fork_wait() if watched is not None else exporting.FIRST_WAIT
        if lock.acquire(timeout=wait) if wait > 0 else lock.acquire(blocking=False):
            _held_for_fork.append(lock)
    _quiet_failing_grpc_channels(providers)
    lock = otel.collection_lock(providers.meter_provider)
    if lock is not None:
        if lock.acquire(blocking=False):
            _held_for_fork.append(lock)
        else:
            _collection_missed_at_fork.append(providers.meter_provider)


def _quiet_failing_grpc_channels(providers: Providers) -> None:
    """Before fork: each of labotel's own OTLP/gRPC exporters whose collector failed the
    last export gets a fresh, unconnected channel (the exporter's own reconnect, as after
    ``UNAVAILABLE``); the old one is closed later on the export thread.

    With a channel that had been failing to connect, gRPC's own fork handler (it runs
    inside ``fork()``, where the GIL is held) stopped the whole process for 0.3–1.2 s about
    once in 300 s of forks every 2 s (``bench/harm.py``, gRPC scenarios); with fresh
    channels, never in eight such runs. A swap costs ~0.7 ms; closing the old channel at
    fork cost ~11 ms more, so it waits for the exporter's next export. Between exports a
    failing exporter has no channel at all (``ExportWatch.idle_when_down``): only one
    with an export in flight at fork time is swapped.
    """
    for exporter in _owned_exporters(providers):
        watched = exporting.watch_of(exporter)
        if watched is None or watched.last_ok is not False or watched.disconnected:
            continue
        try:
            otel.grpc_reconnect(exporter, watched.retire)
        except Exception:
            log.debug("labotel: a fresh gRPC channel before fork failed", exc_info=True)
        _retired_at_fork.append(watched)


def _push_exports(providers: Providers) -> list[tuple[object, Any]]:
    """(exporter, the lock the SDK holds while it sends) of every push exporter."""
    exports = [otel.reader_export(reader)
               for reader in otel.metric_readers(providers.meter_provider)]
    exports += [otel.processor_export(processor)
                for processor in otel.span_processors(providers.tracer_provider)]
    return [(exporter, lock) for exporter, lock in exports
            if exporter is not None and lock is not None]


def watch_exports(providers: Providers) -> None:
    """Record the health of every push exporter (see ``exporting.ExportWatch``); labotel's
    own OTLP/gRPC exporters also keep no channel open before their first export and while
    the collector is down."""
    owned = [id(exporter) for exporter in _owned_exporters(providers)]
    for exporter, _ in _push_exports(providers):
        watched = exporting.watch(exporter)
        if watched is None or id(exporter) not in owned:
            continue
        watched.report_failed_attempts()
        if otel.is_grpc_exporter(exporter):
            watched.keep_no_channel_when_down()


def export_health(providers: Providers) -> list[dict[str, Any]]:
    """Each push exporter's health (``exporting.describe``) and whether labotel owns it."""
    owned = [id(exporter) for exporter in _owned_exporters(providers)]
    return [{**exporting.describe(exporter), "owned_by_labotel": id(exporter) in owned}
            for exporter, _ in _push_exports(providers)]


def unwatch_exports(providers: Providers) -> None:
    for exporter, _ in _push_exports(providers):
        exporting.unwatch(exporter)


def let_go_of_descriptors(providers: Providers) -> None:
    """The application closed labotel's descriptors (``labotel.descriptors``): labotel's own
    exporters give up their connections without closing them and open new ones."""
    for exporter in _owned_exporters(providers):
        session = getattr(exporter, "_labotel_session", None)
        try:
            if session is not None:
                session.let_go()
            elif otel.is_grpc_exporter(exporter):
                watched = exporting.watch_of(exporter)
                if watched is not None:  # channels waiting to be closed: never closed now
                    while watched.retired:
                        descriptors.keep_forever(watched.retired.pop())
                    if watched.disconnected:
                        continue  # no channel: the next export opens one
                otel.grpc_reconnect(exporter, descriptors.keep_forever)
        except Exception:
            log.exception("labotel: %s could not let go of its connections",
                          type(exporter).__name__)


def _owned_exporters(providers: Providers) -> list[object]:
    """The push exporters of labotel's own providers."""
    exporters = []
    if providers.owns_meter_provider:
        exporters += [otel.reader_export(reader)[0]
                      for reader in otel.metric_readers(providers.meter_provider)]
    if providers.owns_tracer_provider:
        exporters += [otel.processor_export(processor)[0]
                      for processor in otel.span_processors(providers.tracer_provider)]
    return [exporter for exporter in exporters if exporter is not None]


def _export_threads(providers: Providers) -> list[threading.Thread]:
    """The SDK's export threads in labotel's own providers."""
    threads = []
    if providers.owns_meter_provider:
        threads += [otel.reader_thread(reader)
                    for reader in otel.metric_readers(providers.meter_provider)]
    if providers.owns_tracer_provider:
        threads += [otel.processor_thread(processor)
                    for processor in otel.span_processors(providers.tracer_provider)]
    return [thread for thread in threads if thread is not None]


def release_collection_after_fork(in_child: bool = False) -> None:
    while _held_for_fork:
        _held_for_fork.pop().release()
    while _retired_at_fork:
        watched = _retired_at_fork.pop()
        if in_child:  # the parent's channels: never closed (nor finalized) in the child
            _inherited_channels.extend(watched.retired)
            watched.retired.clear()
    if in_child:  # a question to the collector the parent was asking: not the child's
        collector_check.close_inherited()
    while _collection_missed_at_fork:
        meter_provider = _collection_missed_at_fork.pop()
        if in_child:  # the parent's collection holds the copy of the lock: a fresh one
            otel.replace_collection_lock(meter_provider)


def _reset_readers(meter_provider: metrics.MeterProvider) -> None:
    """Undo reader state that fork copied from the parent.

    - The SDK's PeriodicExportingMetricReader restarts its thread after fork but keeps its
      export lock (opentelemetry-python#3307): held by a parent export at fork time, it
      would block the child's exports, and its shutdown at exit, forever. Before fork an
      export is waited for only briefly (``hold_collection_for_fork``); one still running
      then has its lock reset in the child.
    - The Prometheus reader caches ``target_info`` (the Resource) at its first scrape;
      a child forked after one would keep serving the parent's pid and instance id.
    """
    for reader in otel.metric_readers(meter_provider):
        forget = getattr(reader, "forget_target_info", None)  # labotel's own reader
        if forget is not None:
            forget()
        otel.reset_reader_after_fork(reader)


def _free_metric_locks(meter_provider: metrics.MeterProvider) -> None:
    """In a forked child: every lock of the SDK's metric pipeline free again.

    Only the forking thread survives fork, so a lock another thread held at that moment
    stays held in the child for ever. The parent's reader holds each view's lock while it
    collects (outside the collection lock that ``hold_collection_for_fork`` holds), and an
    application thread holds an aggregation's while it records: the child's next
    collection then waited for ever, holding the collection lock, and its exit with it
    (``shutdown()`` takes that lock). A gunicorn worker forked at such a moment sent no
    metric again and never ended on SIGTERM (1 in 31 runs of the pre-fork test's
    sequence with the machine loaded, 2026-12-02). The SDK resets none of these.
    """
    for lock in otel.metric_locks(meter_provider):
        try:
            cpython.at_fork_reinit(lock)
        except Exception:  # not a lock of CPython's (or labotel's patched) kind
            log.debug("labotel: resetting a metric lock after fork failed", exc_info=True)


# gRPC channels inherited through fork, kept referenced so the child never finalizes
# (and so locks) a channel whose internal locks a parent thread may have held at fork.
_inherited_channels: list = []


def _fresh_grpc_channels(providers: Providers) -> None:
    """Give each OTLP/gRPC exporter a channel of the child's own.

    gRPC channels do not survive fork: an RPC in flight in the parent at fork time leaves
    the channel's locks held in the child, whose exports (and exit) then hang. The
    exporter's own reconnect hook opens a new channel (``compat.otel.grpc_reconnect``).
    """
    exporters = [otel.reader_export(reader)[0]
                 for reader in otel.metric_readers(providers.meter_provider)]
    exporters += [getattr(processor, "span_exporter", None)
                  for processor in otel.span_processors(providers.tracer_provider)]
    for exporter in exporters:
        try:
            otel.grpc_reconnect(exporter, _inherited_channels.append)
            watched = exporting.watch_of(exporter)
            if watched is not None:
                watched.disconnected = False
        except Exception:
            log.exception("labotel: reopening the gRPC channel of %s failed",
                          type(exporter).__name__)


def refresh_after_fork(providers: Providers, parent_pid: int) -> None:
    """Give a forked child its own pid and ``service.instance.id`` on every SDK provider.

    Without this every gunicorn worker reports the parent's Resource and their series
    collide in the backend. The SDK re-runs only its process-dependent resource detectors
    after fork; its resource-update hook (the hook it uses for exactly that) also updates
    the tracers already handed out, so the app's own instrumentation follows too.
    """
    _reset_readers(providers.meter_provider)
    _free_metric_locks(providers.meter_provider)
    for exporter in _owned_exporters(providers):
        watched = exporting.watch_of(exporter)
        if watched is not None:
            watched.after_fork_in_child()
    _fresh_grpc_channels(providers)
    _update_resources(providers, process_identity(parent_pid))


def _add_missing_identity(providers: Providers) -> None:
    """A reused provider without pid/instance id gets labotel's (an explicit one is kept)."""
    resource = _resource_of(providers.meter_provider) or _resource_of(providers.tracer_provider)
    if resource is None:
        return
    identity = process_identity()
    missing = {k: v for k, v in identity.items() if k not in resource.attributes}
    if missing:
        _update_resources(providers, missing)


def _update_resources(providers: Providers, attributes: dict[str, Any]) -> None:
    update = Resource(attributes)
    targets = [providers.meter_provider, providers.tracer_provider, otel.logger_provider()]
    for provider in targets:
        try:
            otel.update_resource(provider, update)  # nothing on an API no-op/proxy provider
        except Exception:
            log.exception("labotel: updating the Resource of %s failed", type(provider).__name__)
    if providers.resource is not None:
        providers.resource = providers.resource.merge(update)


def _resource_of(provider: object) -> Resource | None:
    resource = otel.resource_of(provider)
    return resource if isinstance(resource, Resource) else None


def _exemplar_filter():
    """Exemplars only when asked for: runtime metrics have no trace to point at, and
    sampling them costs every collection (OTEL_METRICS_EXEMPLAR_FILTER still wins)."""
    from opentelemetry.sdk.metrics import (
        AlwaysOffExemplarFilter,
        AlwaysOnExemplarFilter,
        TraceBasedExemplarFilter,
    )

    chosen = os.environ.get("OTEL_METRICS_EXEMPLAR_FILTER", "always_off").strip().lower()
    return {"always_on": AlwaysOnExemplarFilter, "trace_based": TraceBasedExemplarFilter}.get(
        chosen, AlwaysOffExemplarFilter)()


class NoExemplars(ExemplarReservoir):
    """The reservoir while the exemplar filter is always_off: nothing is ever offered, so
    there is nothing to keep. The SDK's default reservoir is still asked for its (empty)
    exemplars for every data point of every collection: a tenth of the SDK's cost."""

    def __init__(self, **_: object) -> None:
        pass

    def offer(self, value: float, time_unix_nano: int, attributes: Attributes,
              context: Context) -> None:
        pass

    def collect(self, point_attributes: Attributes) -> list[Exemplar]:
        return []


def _views(exemplar_filter: ExemplarFilter) -> list[View]:
    if not isinstance(exemplar_filter, AlwaysOffExemplarFilter):
        return []
    return [View(instrument_name="*", exemplar_reservoir_factory=lambda _: cast(Any, NoExemplars))]


def _metric_readers(settings: Settings) -> list[MetricReader]:
    readers: list[MetricReader] = []
    interval_ms = settings.metric_export_interval * 1000
    for name in settings.metrics_exporters():
        if name == "prometheus":
            readers.append(make_prometheus_reader())
        elif name == "otlp":
            readers.append(PeriodicExportingMetricReader(
                _otlp_exporter(settings, "metrics"), export_interval_millis=interval_ms))
        elif name == "console":
            readers.append(PeriodicExportingMetricReader(
                ConsoleMetricExporter(), export_interval_millis=interval_ms))
    return readers


def _span_exporters(settings: Settings) -> list:
    exporters = []
    for name in settings.traces_exporters():
        if name == "otlp":
            exporters.append(_otlp_exporter(settings, "traces"))
        elif name == "console":
            exporters.append(ConsoleSpanExporter())
        elif name == "prometheus":
            raise ValueError("traces_exporter: 'prometheus' cannot export traces")
    return exporters


def _otlp_exporter(settings: Settings, signal: str):
    """An OTLP exporter; with no explicit endpoint the exporter reads OTEL_* itself."""
    protocol = settings.otlp_protocol or os.environ.get(
        f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL", "grpc")
    endpoint = settings.otlp_endpoint
    if protocol == "http/protobuf":
        if signal == "metrics":
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        cls: Any = OTLPMetricExporter if signal == "metrics" else OTLPSpanExporter
        session = exporting.abortable_session()  # so shutdown can end a request now
        exporter: Any = (cls(endpoint=endpoint.rstrip("/") + f"/v1/{signal}", session=session)
                    if endpoint else cls(session=session))
        exporter._labotel_session = session
        return exporter
    if signal == "metrics":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
            OTLPMetricExporter as GrpcMetricExporter,
        )
        cls = GrpcMetricExporter
    else:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcSpanExporter,
        )
        cls = GrpcSpanExporter
    options = exporting.GRPC_CHANNEL_OPTIONS
    return cls(endpoint=endpoint, channel_options=options) if endpoint else cls(
        channel_options=options)
