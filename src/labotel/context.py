"""What a component sees of the running labotel: enough to register instruments, routes
and views and to report, nothing more.

The ``Monitor`` builds one ``Context`` and hands it to every component's ``start``.
Tests build their own with a fake meter, the way prometheus_client's collectors take a
``registry=``: a collector never reaches for a global provider.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from opentelemetry import metrics, trace

from labotel.config import Settings
from labotel.footprint import Footprint
from labotel.server.http import Handler, Router

if TYPE_CHECKING:
    from labotel.detect.detection import Reporter

log = logging.getLogger(__name__)

View = Callable[[], dict[str, Any]]
T = TypeVar("T")


class Views:
    """Sections components add to the built-in admin views (``heap``, ``goroutines``)."""

    def __init__(self, on_error: Callable[[str], None]) -> None:
        self._providers: dict[str, list[View]] = {}
        self._on_error = on_error

    def add(self, view: str, provider: View) -> None:
        self._providers.setdefault(view, []).append(provider)

    def collect(self, view: str) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for provider in list(self._providers.get(view, [])):
            try:
                data.update(provider())
            except Exception:
                self._on_error(f"view.{view}")
        return data


class Context:
    """Settings, meter, tracer, reporter, footprint, routes, views and error reporting."""

    def __init__(self, settings: Settings, meter: metrics.Meter, tracer: trace.Tracer,
                 reporter: Reporter, *, router: Router | None = None,
                 footprint: Footprint | None = None, views: Views | None = None,
                 peers: Callable[[str], object | None] | None = None) -> None:
        self.settings = settings
        self.meter = meter
        self.tracer = tracer
        self.reporter = reporter
        self.footprint = footprint if footprint is not None else Footprint()
        self._router = router if router is not None else Router(on_error=self.failed)
        self.views = views if views is not None else Views(self.failed)
        self._peers = peers

    # -- endpoints: the one way to add one ------------------------------------------
    def add_route(self, path: str, handler: Handler, *, prefix: bool = False,
                  methods: tuple[str, ...] = ("GET", "HEAD")) -> None:
        """Serve ``handler`` at ``path``; a path taken already is a ``ValueError``."""
        self._router.add(path, handler, prefix=prefix, methods=methods)

    def add_view(self, view: str, provider: View) -> None:
        """Add the dict ``provider()`` returns to the admin view ``view``."""
        self.views.add(view, provider)

    # -- failures ---------------------------------------------------------------------
    def failed(self, component: str) -> None:
        """Count a failure of ``component`` (``labotel.internal.errors``), logged once."""
        self.reporter.component_failed(component)

    def guarded(self, component: str,
                callback: Callable[[Any], Iterable[T]]) -> Callable[[Any], list[T]]:
        """An observable-instrument callback that never raises: failures are counted."""

        @functools.wraps(callback)
        def run(options: Any) -> list[T]:
            try:
                return list(callback(options))
            except Exception:
                self.failed(component)
                return []

        return run

    # -- other components --------------------------------------------------------------
    def peer(self, name: str) -> object | None:
        """The running component called ``name`` (the GC collector, the contention profiler);
        callers check its type, as a component may be off."""
        return self._peers(name) if self._peers is not None else None
