"""Push exporters under control: how healthy each one is (for fork), and a hard stop at
the shutdown deadline.

- ``ExportWatch`` wraps an exporter's ``export`` (its public method, set on the instance and
  removed again at ``shutdown()``): when the export in flight began and whether the last
  one succeeded; for labotel's own exporters, also whether an attempt of the export in
  flight failed (told by their transport: the HTTP session, a wrapper of the gRPC stub).
  Before ``fork()``, an export to a collector that answers is waited for (a gRPC call in
  flight at fork time can leave gRPC's locks held in the child); one to a collector that
  failed the last export or an attempt of this one, or that has been running too long, is
  not. ``shutdown()`` gives such a collector one second, not ``shutdown_timeout``.
- ``AbortableSession`` is the ``requests`` session of labotel's own OTLP/HTTP exporters: at
  the shutdown deadline its sockets are shut, so a request to a collector that accepted
  the connection and never answers ends now, not at the exporter's timeout (10 s).
- While the collector is down, labotel's own OTLP/gRPC exporters keep no channel open
  between exports (``ExportWatch.idle_when_down``): gRPC's threads then end, so a
  ``fork()`` of the application does not run gRPC's fork handler, which now and then
  stopped the whole process for up to a second. Each export while down is one attempt
  (``PROBE_TIMEOUT``), not the exporter's retries over its whole timeout, and at most one
  every ``PROBE_GAP``, a gap that doubles with each failed attempt up to ``PROBE_GAP_MAX``:
  an export sooner than that fails at once, unencoded (counted as ``skipped``; a
  cumulative metric loses nothing by it, the next export carries it). Each attempt to a
  collector that never answers leaves gRPC's native memory a little higher for a while
  (about 0.5 MB each, ``bench/harm.py``'s ``hung_collector_grpc``): asked every 2 s for
  minutes, that looked like a steady native leak to the memory detector. Before each such
  attempt, and before the first export (asking a refusing collector again, as the
  exporter's retries would, until its timeout), ``collector_check`` asks the collector
  over a plain socket whether it speaks HTTP/2 (over TLS: TLS) at all; one that does not
  (refused, silent) fails the attempt at once (counted as ``unanswered``), and no gRPC
  channel, nor gRPC thread, is started for it: a hung collector held gRPC's threads for
  the exporter's whole timeout, and a fork meeting them stopped the process for 0.5-0.7 s
  now and then.
- ``abort(exporter)`` is what the deadline does to an exporter still sending: its own
  ``shutdown()`` (which closes a gRPC channel, cancelling the call in flight, and ends
  the retry back-off), and the session's sockets. The exporter's later calls (the
  provider's last batch, a second ``shutdown()``) then log nothing.
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
import time
import weakref
from typing import Any

from labotel import collector_check, collector_target, descriptors, own_random
from labotel.compat import otel

log = logging.getLogger(__name__)

HEALTHY_WAIT = 0.5  # seconds fork waits for an export to a collector that answers
FIRST_WAIT = 0.1  # ... for the first export, before anything is known about the collector
# An export while the collector is down: one attempt of at most this long. The exporter's
# first back-off is at least 0.8 s, so it is not retried. (A collector that used up a whole
# timeout, slow or hung, gets the exporter's own timeout: one attempt all the same.)
PROBE_TIMEOUT = 0.5
SLOW_SHARE = 0.9  # of its timeout an export used up to count as timed out, not refused
PROBE_GAP = 2.0  # seconds between two attempts while down; an export sooner fails at once
PROBE_GAP_MAX = 30.0  # ... the gap doubling with each failed attempt, up to this
# A collector whose question has had no answer this long is taken for down (by shutdown):
# a gRPC server sends its SETTINGS as soon as it accepts the connection.
SILENT_IS_DOWN = 0.5
# labotel's own gRPC channels give up a connection that is not set up (TCP and HTTP/2's
# first frames) in 5 s, not gRPC's 20: to a collector that accepts and never answers, the
# attempt's connection kept gRPC's threads running 20 s after the channel was closed.
GRPC_CHANNEL_OPTIONS = (("grpc.min_reconnect_backoff_ms", 5000),)


class ExportWatch:
    """``exporter.export`` with its timing and outcome recorded."""

    def __init__(self, export: Any) -> None:
        self.export = export
        self.exporter = getattr(export, "__self__", None)
        self.since: float | None = None  # monotonic start of the export in flight
        self.last_ok: bool | None = None  # outcome of the last finished export
        self.finished = 0
        # gRPC channels taken off the exporter at fork, closed on its own thread (closing
        # one takes ~10 ms: not on the path of the application's fork)
        self.retired: list[Any] = []
        self.idle_when_down = False  # close the gRPC channel after a failed export
        self.disconnected = False  # ... and it is closed now: the next export opens one
        self.timed_out = False  # the last failed export used up its whole timeout
        self.attempted: float | None = None  # monotonic end of the last export attempted
        self.skipped = 0  # exports failed at once, the collector being down
        self.failures_in_a_row = 0  # failed exports attempted since the last success
        # An attempt of the export in flight failed (the exporter is retrying): told by the
        # transport of labotel's own exporters (``report_failed_attempts``)
        self.attempt_failed = False
        self.reports_attempts = False
        self.unanswered = 0  # attempts while down that the collector did not answer
        self._check: collector_check.Check | None = None  # the one asking now
        self._asked_at = 0.0  # ... since then (monotonic)
        self._stopped = threading.Event()  # shutdown: ask nothing more
        self._unanswered_why = ""  # how the last question went unanswered
        self._said_unanswered = False  # ... logged since the last export that succeeded

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        descriptors.check()  # before a pooled connection's number is used again
        self.close_retired()
        self.attempt_failed = False
        probe = self.probing
        if self.disconnected and probe and self.attempted is not None and (
                time.monotonic() - self.attempted < self.probe_gap()):
            self.skipped += 1  # no channel: the exporter fails it without a call
            self.finished += 1
            return self.export(*args, **kwargs)
        if self.disconnected and (probe or self.last_ok is None) and not (
                self._collector_answers() if probe else self._first_answer()):
            self.unanswered += 1  # an attempt that failed without a gRPC channel
            self.finished += 1
            self.failures_in_a_row += 1
            self.last_ok = False
            self.attempted = time.monotonic()
            self._say_unanswered()
            return self._fail_unsent(*args, **kwargs)
        if self.disconnected:
            self._connect()
        timeout = otel.export_timeout(self.exporter)
        if probe and not self.timed_out and timeout is not None and timeout > PROBE_TIMEOUT:
            otel.set_export_timeout(self.exporter, PROBE_TIMEOUT)
        if self.reports_attempts:
            otel.report_failed_grpc_calls(self.exporter, self.note_failed_attempt)
        began = self.since = time.monotonic()
        ok = False
        try:
            result = self.export(*args, **kwargs)
            ok = getattr(result, "name", None) == "SUCCESS"  # Span/MetricExportResult
            return result
        finally:
            limit = otel.export_timeout(self.exporter)
            if limit != timeout and timeout is not None:
                otel.set_export_timeout(self.exporter, timeout)
            self.since = None
            self.last_ok = ok
            self.finished += 1
            self.attempted = time.monotonic()
            self.failures_in_a_row = 0 if ok else self.failures_in_a_row + 1
            if ok:
                self._said_unanswered = False
            if self.idle_when_down and not ok:
                self.timed_out = limit is not None and (
                    time.monotonic() - began >= SLOW_SHARE * limit)
                self._disconnect()

    def _fail_unsent(self, *args: Any, **kwargs: Any) -> Any:
        """The exporter fails this export without a call (it has no channel). Once
        shutdown ended the question, it may be aborted already, and its warning ("already
        shutdown") would only repeat labotel's: that call is made quiet."""
        if not self._stopped.is_set():
            return self.export(*args, **kwargs)
        _quiet_exporter_loggers()
        return _ABORTED_CALLS.around(self.export)(*args, **kwargs)

    def _collector_endpoint(self) -> tuple[collector_target.Address, bool] | None:
        """The collector's socket address and whether it speaks TLS; None where it cannot
        be asked (a gRPC target with no port or several addresses, one gRPC reaches
        through a proxy) or need not be (the exporter was shut down: its export fails at
        once)."""
        if otel.exporter_shut_down(self.exporter):
            return None
        target = otel.grpc_endpoint(self.exporter)
        address = collector_target.socket_address(target[0]) if target else None
        if not target or not address:
            return None
        if isinstance(address, tuple) and collector_target.proxied(address[0]):
            return None
        return address, target[1]

    def _ask(self, address: collector_target.Address, wait: float, tls: bool) -> bool:
        """One question (``collector_check``); ``abort_check()`` ends it. A question that
        ran out its wait leaves ``timed_out`` set: the next one gets the exporter's whole
        timeout. (Else a collector farther than the short wait allows, 0.25 s away, would
        never be asked long enough once it had refused a connection.)"""
        if self._stopped.is_set():
            return False
        self._asked_at = time.monotonic()
        check = self._check = collector_check.Check(address, wait, tls=tls)
        try:
            answered = check.answers()
        finally:
            self._check = None
        if check.ran_out:
            self.timed_out = True
        self._unanswered_why = (f"silent for {wait:.1f} s" if check.ran_out else
                                f"refused, reset, or not {'TLS' if tls else 'HTTP/2'}")
        return answered

    def _say_unanswered(self) -> None:
        """Log, once until an export succeeds, that the collector does not answer: its
        failed attempts make no gRPC call, so the exporter logs nothing of them."""
        if self._said_unanswered or self._stopped.is_set():  # not for shutdown's abort
            return
        self._said_unanswered = True
        target = otel.grpc_endpoint(self.exporter)
        log.warning("labotel: the OTLP collector at %s does not answer (%s); %s exports "
                    "fail without a call until it answers (asked again %g to %g s apart)",
                    target[0] if target else "?", self._unanswered_why,
                    type(self.exporter).__name__, PROBE_GAP, PROBE_GAP_MAX)

    def _collector_answers(self) -> bool:
        """Before an attempt while down: does the collector answer HTTP/2 (over TLS: a TLS
        hello) at all, asked over a plain socket, so no gRPC thread runs for a collector
        that does not? It gets as long as the attempt would: ``PROBE_TIMEOUT``, or the
        exporter's timeout for a collector that used up a whole one. True where it cannot
        be asked."""
        endpoint = self._collector_endpoint()
        if endpoint is None:
            return True
        timeout = otel.export_timeout(self.exporter) or PROBE_TIMEOUT
        wait = timeout if self.timed_out else min(PROBE_TIMEOUT, timeout)
        return self._ask(endpoint[0], wait, endpoint[1])

    def _first_answer(self) -> bool:
        """Before the first export: the collector is asked as while it is down, for as long
        as the exporter's first export would retry (its timeout), a refusing one again
        after the exporter's back-off (1 s, 2 s, ... with its jitter): it may be starting.
        Before, the first export to a down collector ran gRPC's threads for the whole
        timeout (10 s), and a fork meeting them could stop the application. During the
        question the export counts as in flight, its refused questions as failed attempts
        (what ``fork()`` and ``shutdown()`` go by). True where it cannot be asked."""
        endpoint = self._collector_endpoint()
        if endpoint is None:
            return True
        address, tls = endpoint
        began = self.since = time.monotonic()
        deadline = began + (otel.export_timeout(self.exporter) or PROBE_TIMEOUT)
        backoff = 1.0
        try:
            while True:
                if self._ask(address, deadline - time.monotonic(), tls):
                    return True
                if self.timed_out or self._stopped.is_set():
                    return False  # silent until the deadline, or shutdown ended it
                self.attempt_failed = True  # refused
                pause = backoff * own_random.generator.uniform(0.8, 1.2)
                if time.monotonic() + pause >= deadline or self._stopped.wait(pause):
                    return False
                backoff *= 2
        finally:
            self.since = None

    def after_fork_in_child(self) -> None:
        """The parent's exporter thread may have been at the edge of its back-off's wait
        at the fork (the event's lock): the child's shutdown sets a fresh event."""
        if not self._stopped.is_set():
            self._stopped = threading.Event()

    def abort_check(self) -> None:
        """End the question asked now, and any the first export would still ask."""
        self._stopped.set()
        check = self._check
        if check is not None:
            check.abort()

    def report_failed_attempts(self) -> None:
        """Have the transport of this exporter (one of labotel's own) say when an attempt
        fails: its requests session, or a wrapper of its gRPC stub."""
        session = getattr(self.exporter, "_labotel_session", None)
        if session is not None:
            session.on_failed_request = self.note_failed_attempt
        self.reports_attempts = otel.is_grpc_exporter(self.exporter)

    def note_failed_attempt(self) -> None:
        if self.since is not None:
            self.attempt_failed = True

    @property
    def failing(self) -> bool:
        """The collector failed the last export, or an attempt of the one in flight: the
        exporter is retrying. (A process that exits, or forks, during its first export to
        a collector that is down knows it from the first refused attempt, or from its
        question going unanswered for ``SILENT_IS_DOWN``.)"""
        return self.last_ok is False or (self.since is not None and (
            self.attempt_failed or self.silent_for() >= SILENT_IS_DOWN))

    def silent_for(self) -> float:
        """Seconds the question asked now has gone unanswered (0.0: none is asked)."""
        return time.monotonic() - self._asked_at if self._check is not None else 0.0

    @property
    def probing(self) -> bool:
        """Exports are single attempts, ``probe_gap()`` apart: the collector failed the
        last one and labotel keeps no channel while it is down."""
        return self.idle_when_down and self.last_ok is False

    def probe_gap(self) -> float:
        """Seconds from the last failed attempt to the next one: ``PROBE_GAP`` after the
        first failure, doubling after each one more, up to ``PROBE_GAP_MAX``."""
        doublings = min(max(self.failures_in_a_row - 1, 0), 16)
        return min(PROBE_GAP * 2 ** doublings, PROBE_GAP_MAX)

    def keep_no_channel_when_down(self) -> None:
        """From now on, close the gRPC channel after a failed export; and close it now,
        before the first export: an exporter that has nothing to send (the span exporter
        of an application without detections) would keep gRPC's threads running for
        nothing. The first export opens a channel again."""
        self.idle_when_down = True
        if self.finished == 0 and self.since is None:
            self._disconnect()

    def _connect(self) -> None:
        """A fresh channel for the export about to begin (none after the exporter's own
        shutdown: it sends nothing more)."""
        if otel.exporter_shut_down(self.exporter):
            return
        try:
            otel.grpc_reconnect(self.exporter, self.retire)
            self.disconnected = False
        except Exception:
            log.debug("labotel: reopening a gRPC channel failed", exc_info=True)
        self.close_retired()

    def _disconnect(self) -> None:
        try:
            otel.grpc_disconnect(self.exporter)
            self.disconnected = True
        except Exception:
            log.debug("labotel: closing the gRPC channel of a failed export raised",
                      exc_info=True)

    def retire(self, channel: Any) -> None:
        if channel is not None:
            self.retired.append(channel)

    def close_retired(self) -> None:
        while self.retired:
            channel = self.retired.pop()
            try:
                channel.close()
            except Exception:
                log.debug("labotel: closing a retired gRPC channel raised", exc_info=True)

    def fork_wait(self) -> float:
        """Seconds worth waiting, before fork, for the export in flight to end."""
        since = self.since
        if since is None:
            return 0.0
        age = time.monotonic() - since
        if self.attempt_failed:
            return 0.0  # the exporter is retrying: the collector is not answering now
        if self.last_ok:
            return max(0.0, HEALTHY_WAIT - age)
        if self.last_ok is None:
            return max(0.0, FIRST_WAIT - age)
        return 0.0  # the collector failed the last export: it is not coming back in time


def watch(exporter: Any) -> ExportWatch | None:
    """Put an ``ExportWatch`` on ``exporter`` (once); None if it takes no attributes."""
    current = vars(exporter).get("export") if hasattr(exporter, "__dict__") else None
    if isinstance(current, ExportWatch):
        return current
    try:
        exporter.export = ExportWatch(exporter.export)
    except (AttributeError, TypeError):
        return None
    return exporter.export


def unwatch(exporter: Any) -> None:
    watched = watch_of(exporter)
    if watched is not None:
        del exporter.export
        watched.abort_check()  # a question still asked when shutdown ends: not waited for
        watched.close_retired()


def describe(exporter: Any) -> dict[str, Any]:
    """An exporter's health for the admin view."""
    watched = watch_of(exporter)
    view: dict[str, Any] = {"exporter": type(exporter).__name__}
    if watched is not None:
        view.update(last_export_ok=watched.last_ok, exports=watched.finished,
                    skipped_while_down=watched.skipped,
                    unanswered_while_down=watched.unanswered,
                    failures_in_a_row=watched.failures_in_a_row,
                    retry_gap_s=watched.probe_gap() if watched.probing else None,
                    channel_closed=watched.disconnected)
    return view


def watch_of(exporter: Any) -> ExportWatch | None:
    current = vars(exporter).get("export") if hasattr(exporter, "__dict__") else None
    return current if isinstance(current, ExportWatch) else None


def abort(exporter: Any) -> None:
    """End whatever ``exporter`` is sending now; it sends nothing more."""
    watched = watch_of(exporter)
    if watched is not None:
        # a first export asking a refusing collector again waits out its back-off (up to
        # 4.8 s) unless told: at exit on 3.12 the provider's shutdown joins it unbounded
        watched.abort_check()
    session = getattr(exporter, "_labotel_session", None)
    if session is not None:
        session.abort()
    _hush(exporter)  # first: once shut down, the provider's threads call it again at once
    try:
        exporter.shutdown()
    except Exception:
        log.debug("labotel: aborting %s raised", type(exporter).__name__, exc_info=True)


class _ThreadInAbortedExporter(logging.Filter):
    """Drops the records a thread logs while it is inside an aborted exporter's call."""

    def __init__(self) -> None:
        super().__init__()
        self.inside = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(self.inside, "depth", 0)

    def around(self, method: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            inside = self.inside
            inside.depth = getattr(inside, "depth", 0) + 1
            try:
                return method(*args, **kwargs)
            finally:
                inside.depth -= 1

        return call


_ABORTED_CALLS = _ThreadInAbortedExporter()


def _quiet_exporter_loggers() -> None:
    """Put the filter on the exporters' loggers (they log on their modules' loggers)."""
    for module in [name for name in sys.modules if name.startswith("opentelemetry.exporter.")]:
        logger = logging.getLogger(module)
        if _ABORTED_CALLS not in logger.filters:
            logger.addFilter(_ABORTED_CALLS)


def _hush(exporter: Any) -> None:
    """After the abort, the provider's own shutdown still hands the exporter its last batch
    and calls its ``shutdown()`` again, and the exporter warns of each ("Exporter already
    shutdown, ignoring batch/call"): lines at every exit with a dead collector that say
    again what labotel's warning said (unsent telemetry is dropped). Those calls are made
    quiet; records of every other call and thread pass."""
    _quiet_exporter_loggers()
    watched = watch_of(exporter)  # a watch (still on at exit) wraps the export it calls
    try:
        if watched is not None:
            watched.export = _ABORTED_CALLS.around(watched.export)
        else:
            exporter.export = _ABORTED_CALLS.around(exporter.export)
        exporter.shutdown = _ABORTED_CALLS.around(exporter.shutdown)
    except (AttributeError, TypeError):  # an exporter that takes no attributes: it warns
        pass


def abortable_session() -> Any:
    """A ``requests.Session`` whose open sockets ``abort()`` shuts (and which opens no new
    ones after that)."""
    import requests
    from requests.adapters import HTTPAdapter
    from requests.exceptions import RequestException
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()
    aborted = [False]

    def tracked(base: type) -> type:
        return otel.connection_class_reporting_sockets(base, sockets.add, lambda: aborted[0])

    pools = {"http": type("Pool", (HTTPConnectionPool,),
                          {"ConnectionCls": tracked(HTTPConnection)}),
             "https": type("Pool", (HTTPSConnectionPool,),
                           {"ConnectionCls": tracked(HTTPSConnection)})}

    class Adapter(HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = pools

    class AbortableSession(requests.Session):
        def __init__(self) -> None:
            super().__init__()
            self.mount("http://", Adapter())
            self.mount("https://", Adapter())
            self.on_failed_request: Any = None  # told of each request that failed

        def request(self, *args: Any, **kwargs: Any) -> Any:
            if aborted[0]:  # the exporter's retry after an aborted request fails at once:
                # preparing one reads netrc and proxy settings, file calls that kept the
                # export thread alive ~0.5 s after shutdown() with the app's threads busy
                raise requests.exceptions.ConnectionError("labotel is shutting down: "
                                                          "no new export requests")
            # the export looked at the canary before encoding its batch; a pooled
            # connection found dropped is closed by urllib3: look again just before
            descriptors.check()
            try:
                response = super().request(*args, **kwargs)
            except RequestException:
                self._failed()
                raise
            if not response.ok:
                self._failed()
            return response

        def _failed(self) -> None:
            if self.on_failed_request is not None:
                self.on_failed_request()

        def let_go(self) -> None:
            """The application closed labotel's descriptors: give up every connection's
            number without closing it (it may be the application's file now); the next
            request connects afresh."""
            for sock in list(sockets):
                try:
                    sock.detach()
                except OSError:
                    pass
            self.close()  # the pools drop their (detached) connections

        def abort(self) -> None:
            aborted[0] = True
            for sock in list(sockets):
                try:
                    sock.shutdown(socket.SHUT_RDWR)  # a blocked recv() returns at once
                except OSError:
                    pass

    return AbortableSession()
