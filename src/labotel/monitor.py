"""``Monitor``: what ``labotel.start()`` builds and ``labotel.shutdown()`` takes down."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from labotel import sdk
from labotel.component import Component
from labotel.components import default_components
from labotel.config import Settings
from labotel.detect.detection import Reporter
from labotel.runtime import loops, origins
from labotel.server import admin
from labotel.server.debug_server import DebugServer, check_exposure
from labotel.server.http import Router

log = logging.getLogger("labotel")
VERSION = "0.1.0"


class Monitor:
    """A running labotel: providers, reporter, components, router and debug server."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.components: list[Component] = []
        self.server: DebugServer | None = None
        self._views: dict[str, list[Callable[[], dict[str, Any]]]] = {}
        self._started_pid = os.getpid()
        self.running = False

    # -- life cycle -----------------------------------------------------------------
    def start(self) -> None:
        settings = self.settings
        if settings.admin_address:
            check_exposure(settings.admin_address, settings.admin_token,
                           settings.admin_allow_insecure)
        self.providers = sdk.build_providers(settings)
        self.meter = self.providers.meter_provider.get_meter(sdk.INSTRUMENTATION_SCOPE, VERSION)
        self.tracer = self.providers.tracer_provider.get_tracer(sdk.INSTRUMENTATION_SCOPE, VERSION)
        self.reporter = Reporter(self.tracer, self.meter, settings.detection_buffer_size)
        self.router = Router(settings.admin_token, on_error=self.reporter.component_failed)
        admin.add_routes(self)
        origins.install()
        loops.install()
        for component in default_components(settings):
            self._start_component(component)
        self.running = True
        if settings.admin_address:
            self._start_server()

    def _start_component(self, component: Component) -> None:
        try:
            component.start(self)
        except ValueError:
            raise  # a configuration error: the caller must hear about it
        except Exception:
            self.reporter.component_failed(component.name)
            return
        self.components.append(component)

    def _start_server(self) -> None:
        try:
            self.server = DebugServer(self.settings.admin_address, self.router)
            self.server.start()
        except OSError as error:
            self.server = None
            log.error("labotel: debug server could not listen on %s (%s); metrics still "
                      "flow through the configured exporters", self.settings.admin_address, error)
            self.reporter.component_failed("server")
            return
        log.info("labotel: debug server on %s (/metrics, /debug/pprof/, /admin/monitoring/)",
                 self.server.url)

    def stop(self) -> None:
        if not self.running:
            return
        self.running = False
        if self.server is not None:
            self.server.stop()
            self.server = None
        for component in reversed(self.components):
            try:
                component.stop()
            except Exception:
                log.exception("labotel: stopping %s failed", component.name)
        self.components.clear()
        loops.uninstall()
        origins.uninstall()
        self.providers.shutdown()

    def after_fork_in_child(self) -> None:
        """Threads do not survive fork: restart the ones labotel owns in the child.

        The child does not inherit the parent's debug server (its socket belongs to the
        parent); see the "Zero-code setup" section of the README for pre-fork servers.
        """
        self.server = None
        for component in self.components:
            try:
                component.after_fork_in_child()
            except Exception:
                self.reporter.component_failed(component.name)

    # -- accessors used by routes and components -----------------------------------
    @property
    def service_name(self) -> str | None:
        resource = self.providers.resource
        if resource is not None:
            return resource.attributes.get("service.name")
        return self.settings.service_name

    @property
    def admin_url(self) -> str | None:
        return self.server.url if self.server else None

    def component(self, name: str) -> Any:
        for component in self.components:
            if component.name == name:
                return component
        return None

    def add_view(self, view: str, provider: Callable[[], dict[str, Any]]) -> None:
        """Let a component add sections to an admin view (``heap``, ``goroutines``)."""
        self._views.setdefault(view, []).append(provider)

    def extra_view(self, view: str) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for provider in self._views.get(view, []):
            try:
                data.update(provider())
            except Exception:
                self.reporter.component_failed(f"view.{view}")
        return data

    def process_snapshot(self) -> dict[str, Any] | None:
        collector = self.component("runtime.process")
        return collector.snapshot.get() if collector else None


_lock = threading.RLock()
_current: Monitor | None = None


def current() -> Monitor | None:
    return _current


def start(**options: Any) -> Monitor:
    global _current
    settings = Settings.load(options)
    with _lock:
        if _current is not None and _current.running:
            if options and _current.settings != settings:
                log.warning("labotel.start(): already running; new options ignored "
                            "(call labotel.shutdown() first to change them)")
            return _current
        monitor = Monitor(settings)
        try:
            monitor.start()
        except BaseException:
            _safe_stop(monitor)
            raise
        _current = monitor
        return monitor


def shutdown() -> None:
    global _current
    with _lock:
        monitor, _current = _current, None
    if monitor is not None:
        monitor.stop()


def _safe_stop(monitor: Monitor) -> None:
    try:
        monitor.running = True
        monitor.stop()
    except Exception:
        log.debug("labotel: cleanup after a failed start raised", exc_info=True)


def _after_fork_in_child() -> None:
    monitor = _current
    if monitor is not None and monitor.running:
        monitor.after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
