"""Push exporters under control: how healthy each one is (for fork), and a hard stop at
the shutdown deadline.

- ``ExportWatch`` wraps an exporter's ``export`` (its public method, set on the instance and
  removed again at ``shutdown()``): when the export in flight began and whether the last
  one succeeded. Before ``fork()``, an export to a collector that answers is waited for
  (a gRPC call in flight at fork time can leave gRPC's locks held in the child); one to a
  collector that failed the last export, or that has been running too long, is not.
- ``AbortableSession`` is the ``requests`` session of labotel's own OTLP/HTTP exporters: at
  the shutdown deadline its sockets are shut, so a request to a collector that accepted
  the connection and never answers ends now, not at the exporter's timeout (10 s).
- ``abort(exporter)`` is what the deadline does to an exporter still sending: its own
  ``shutdown()`` (which closes a gRPC channel, cancelling the call in flight, and ends
  the retry back-off), and the session's sockets.
"""

from __future__ import annotations

import logging
import socket
import time
import weakref
from typing import Any

from labotel.compat import otel

log = logging.getLogger(__name__)

HEALTHY_WAIT = 0.5  # seconds fork waits for an export to a collector that answers
FIRST_WAIT = 0.1  # ... for the first export, before anything is known about the collector


class ExportWatch:
    """``exporter.export`` with its timing and outcome recorded."""

    def __init__(self, export: Any) -> None:
        self.export = export
        self.since: float | None = None  # monotonic start of the export in flight
        self.last_ok: bool | None = None  # outcome of the last finished export
        self.finished = 0
        # gRPC channels taken off the exporter at fork, closed on its own thread (closing
        # one takes ~10 ms: not on the path of the application's fork)
        self.retired: list[Any] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.close_retired()
        self.since = time.monotonic()
        ok = False
        try:
            result = self.export(*args, **kwargs)
            ok = getattr(result, "name", None) == "SUCCESS"  # Span/MetricExportResult
            return result
        finally:
            self.since = None
            self.last_ok = ok
            self.finished += 1

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
        watched.close_retired()


def watch_of(exporter: Any) -> ExportWatch | None:
    current = vars(exporter).get("export") if hasattr(exporter, "__dict__") else None
    return current if isinstance(current, ExportWatch) else None


def abort(exporter: Any) -> None:
    """End whatever ``exporter`` is sending now; it sends nothing more."""
    session = getattr(exporter, "_labotel_session", None)
    if session is not None:
        session.abort()
    try:
        exporter.shutdown()
    except Exception:
        log.debug("labotel: aborting %s raised", type(exporter).__name__, exc_info=True)


def abortable_session() -> Any:
    """A ``requests.Session`` whose open sockets ``abort()`` shuts (and which opens no new
    ones after that)."""
    import requests
    from requests.adapters import HTTPAdapter
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

        def abort(self) -> None:
            aborted[0] = True
            for sock in list(sockets):
                try:
                    sock.shutdown(socket.SHUT_RDWR)  # a blocked recv() returns at once
                except OSError:
                    pass

    return AbortableSession()
