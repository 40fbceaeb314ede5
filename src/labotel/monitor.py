"""``Monitor``: what ``labotel.start()`` builds and ``labotel.shutdown()`` takes down."""

from __future__ import annotations

import _thread
import atexit
import errno
import logging
import os
import time
from collections.abc import Callable
from typing import Any, cast

import psutil
from opentelemetry.metrics import CallbackOptions, Observation

from labotel import compat, descriptors, fork_safe, log_relay, patching, sdk, signal_context
from labotel.compat.capability import Capability
from labotel.component import Component, Unavailable
from labotel.components import default_components
from labotel.config import Settings, parse_address
from labotel.context import Context, Views
from labotel.detect.detection import Reporter
from labotel.footprint import Footprint
from labotel.hooks import layer as hooks_layer
from labotel.patching import Patcher
from labotel.runtime import heap, loops, origins
from labotel.server import admin
from labotel.server.debug_server import DebugServer, check_exposure
from labotel.server.http import Router
from labotel.server.limits import ServerLimits
from labotel.version import VERSION

log = logging.getLogger(__name__)


class Monitor:
    """A running labotel: providers, reporter, components, router and debug server."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.components: list[Component] = []
        self.unavailable: dict[str, str] = {}  # component name -> why it cannot run here
        self.capabilities: dict[str, Capability] = {}  # borrowed internals, probed at start
        self.server: DebugServer | None = None
        self._started_pid = os.getpid()
        # the patches the monitor alone installs; those it shares keep their own and are
        # undone by their last holder: the hook layer's (race detector, contention
        # profiler) and runtime/origins' (the monitor, labotel.testing)
        self.patcher = Patcher()
        self.running = False
        self.start_error: str | None = None  # why start() failed, if it did (not running)

    # -- life cycle -----------------------------------------------------------------
    def start(self) -> None:
        settings = self.settings
        if settings.admin_address:
            check_exposure(settings.admin_address, settings.admin_token,
                           settings.admin_allow_insecure)
        self.providers = sdk.build_providers(settings)
        # what the SDK and the interpreter offer, once the exporters labotel uses are
        # imported (a part not in use, OTLP/gRPC say, is not imported only to be checked)
        try:
            self.capabilities, probe_failed = compat.probe(), False
        except Exception:  # the probe itself broke: every feature still guards itself
            probe_failed = True
        sdk.watch_exports(self.providers)
        self.meter = self.providers.meter_provider.get_meter(sdk.INSTRUMENTATION_SCOPE, VERSION)
        self.tracer = self.providers.tracer_provider.get_tracer(sdk.INSTRUMENTATION_SCOPE, VERSION)
        self.reporter = Reporter(self.tracer, self.meter, settings.detection_buffer_size)
        if probe_failed:
            self.reporter.component_failed("compat")
        self.footprint = Footprint()
        self.footprint.add("reporter", self.reporter.bytes)
        self.footprint.add("span_queue", lambda: int(sdk.span_queue_length(self.providers)
                                                     * self.reporter.span_bytes))
        self.footprint.add("creation_sites", origins.bytes_kept)
        self.footprint.add("log_relay", lambda: log_relay.pending_bytes)
        log_relay.start()  # detections are logged off the thread that found them
        self.router = Router(settings.admin_token, on_error=self.reporter.component_failed,
                             max_body_bytes=settings.admin_max_body_bytes)
        self.context = Context(settings, self.meter, self.tracer, self.reporter,
                               router=self.router, footprint=self.footprint,
                               views=Views(self.reporter.component_failed),
                               peers=self.component)
        self.meter.create_observable_gauge(
            "labotel.internal.memory", [self.context.guarded("footprint", self._own_memory)],
            unit="By", description="Memory labotel itself keeps, by part (estimates): race "
            "shadow state, detections, queued spans")
        origins.install()
        loops.install(self.patcher)
        for component in default_components(settings):
            self._start_component(component)
        admin.add_routes(self.context, self.router, self.status)
        self.running = True
        descriptors.watch()
        descriptors.on_lost(self, self._descriptors_lost)
        if settings.admin_address:
            self._start_server()

    def _own_memory(self, _: CallbackOptions):
        for part, size in self.footprint.breakdown().items():
            yield Observation(size, {"labotel.component": part})

    def _start_component(self, component: Component) -> None:
        try:
            component.start(self.context)
        except ValueError:
            raise  # a configuration error: the caller must hear about it
        except Unavailable as reason:
            log.warning("labotel: %s is off: %s", component.name, reason)
            self.unavailable[component.name] = str(reason)
            return
        except Exception:
            self.reporter.component_failed(component.name)
            return
        self.components.append(component)

    def _start_server(self) -> None:
        address = cast(str, self.settings.admin_address)  # called only when it is set
        try:
            self.server = DebugServer(address, self.router,
                                      limits=ServerLimits.from_settings(self.settings))
            self.server.start()
        except OSError as error:
            self.server = None
            if (error.errno == errno.EADDRINUSE and self.settings.admin_worker_ports
                    and _parent_listens_on(parse_address(address)[1])):
                # a spawned worker (multiprocessing spawn/forkserver, a re-exec'd server)
                # of a labotel process: the same port scheme as a forked one
                self._start_worker_server()
                return
            log.error("labotel: debug server could not listen on %s (%s); metrics still "
                      "flow through the configured exporters", self.settings.admin_address, error)
            self.reporter.component_failed("server")
            return
        log.info("labotel: debug server on %s (/metrics, /debug/pprof/, /admin/monitoring/)",
                 self.server.url)

    def stop(self, timeout: float | None = None) -> None:
        """Undo everything; at most ``timeout`` (default ``shutdown_timeout``) + ``sdk.ABORT_GRACE``
        in all. Every step runs even if one raises: an error is logged, a Ctrl-C or
        ``SystemExit`` raised once the last step is done (raised at once, it left the
        patches, the threads and the race detector in place, with no monitor left to
        stop them)."""
        if not self.running:
            return
        deadline = time.monotonic() + (self.settings.shutdown_timeout if timeout is None
                                       else timeout)
        self.running = False  # first: a loss noticed next opens no server only to stop it
        steps = self._stop_steps(deadline)
        interrupted: BaseException | None = None
        while steps:
            try:
                while steps:
                    name, step = steps.pop(0)
                    try:
                        step()
                    except Exception:
                        log.exception("labotel: stopping %s failed", name)
            except BaseException as error:  # noqa: PERF203 - the steps left still run
                interrupted = interrupted or error
        if interrupted is not None:
            raise interrupted

    def _stop_steps(self, deadline: float) -> list[tuple[str, Callable[[], Any]]]:
        """What ``stop`` does, in order, each a (name, step)."""
        steps: list[tuple[str, Callable[[], Any]]] = [
            # the server's waker and the exporters' connections are used next
            ("descriptors", descriptors.check),
            ("descriptors", lambda: descriptors.forget(self))]
        # a profile a client waits for ends now: the server waits for running requests
        steps += [(component.name, component.end_requests) for component in self.components]
        steps.append(("server", self._stop_server))
        steps += [(component.name, component.stop) for component in reversed(self.components)]
        steps += [("components", self.components.clear),
                  ("patches", lambda: patching.say_left_in_place(self.patcher.undo())),
                  ("loops", loops.uninstall),
                  ("origins", origins.uninstall)]
        if not hasattr(self, "providers"):  # a start() that failed before they were built
            return steps
        if hasattr(self, "reporter"):
            steps.append(("reporter", self.reporter.close))
        if not self.providers.owns_meter_provider and hasattr(self, "meter"):
            # the app's provider lives on: take labotel's instruments off it
            steps.append(("instruments", lambda: sdk.forget_instruments(
                self.meter, self.providers.meter_provider)))
        steps += [("providers", lambda: self.providers.shutdown(deadline)),
                  ("log relay", lambda: log_relay.stop(
                      min(LOG_RELAY_STOP, max(0.05, deadline - time.monotonic()))))]
        return steps

    def _stop_server(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            server.stop()

    def after_fork_in_child(self) -> None:
        """Make a forked child (gunicorn worker, multiprocessing) a process of its own.

        It gets its own pid and ``service.instance.id`` on every provider, restarts the
        threads labotel's components own (threads do not survive fork), and serves the
        debug server on the first free port after the parent's (README: "Zero-code setup").
        """
        parent_pid, self._started_pid = self._started_pid, os.getpid()
        log_relay.after_fork_in_child()
        if self.server is not None:
            self.server.abandon()
            self.server = None
        try:
            sdk.refresh_after_fork(self.providers, parent_pid)
        except Exception:
            self.reporter.component_failed("fork.resource")
        for component in self.components:
            try:
                component.after_fork_in_child()
            except Exception:
                self.reporter.component_failed(component.name)
        if self.settings.admin_address and self.settings.admin_worker_ports:
            self._start_worker_server()

    def _descriptors_lost(self) -> None:
        """The application closed labotel's descriptors (a daemonizing process): the
        exporters and the debug server let go of theirs without closing them, and the
        server listens again on the address it had."""
        if not hasattr(self, "providers"):
            return
        sdk.let_go_of_descriptors(self.providers)
        server, self.server = self.server, None
        if server is None:
            return
        server.orphan()
        if not self.running or not descriptors.may_reopen():
            return
        # an application that closed only some descriptors may have left the listener
        # ours: the port is free once the old server has closed it, on its own thread
        if not server.when_released(lambda: self._listen_again(*server.address)):
            self._listen_again(*server.address)

    def _listen_again(self, host: str, port: int) -> None:
        """After a loss: the debug server on the address it had."""
        if not self.running:
            return
        bracketed = f"[{host}]" if ":" in host else host
        try:
            fresh = DebugServer(f"{bracketed}:{port}", self.router,
                                limits=ServerLimits.from_settings(self.settings))
        except OSError as error:
            log.error("labotel: the debug server could not listen on %s:%d again (%s)",
                      host, port, error)
            self.reporter.component_failed("server")
            return
        fresh.start()
        self.server = fresh
        if not self.running:  # a shutdown() on another thread came meanwhile
            self.server = None
            fresh.stop()

    def _start_worker_server(self) -> None:
        """Bind the first free port of ``port+1 .. port+admin_worker_ports`` (``:0`` stays 0)."""
        host, port = parse_address(cast(str, self.settings.admin_address))
        span = self.settings.admin_worker_ports
        candidates = [0] if port == 0 else range(port + 1, min(port + 1 + span, 65536))
        bracketed = f"[{host}]" if ":" in host else host
        for candidate in candidates:
            try:
                server = DebugServer(f"{bracketed}:{candidate}", self.router,
                                     limits=ServerLimits.from_settings(self.settings))
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    continue
                log.error("labotel: worker %d: debug server failed: %s", os.getpid(), error)
                self.reporter.component_failed("server")
                return
            server.start()
            self.server = server
            log.info("labotel: worker %d: debug server on %s", os.getpid(), server.url)
            return
        log.error("labotel: worker %d: no free debug-server port in %s+1..+%d; it reports "
                  "through the exporters only", os.getpid(), self.settings.admin_address, span)
        self.reporter.component_failed("server")

    # -- accessors used by routes and components -----------------------------------
    @property
    def service_name(self) -> str | None:
        resource = self.providers.resource
        if resource is not None:
            return cast("str | None", resource.attributes.get("service.name"))
        return self.settings.service_name

    @property
    def admin_url(self) -> str | None:
        return self.server.url if self.server else None

    def component(self, name: str) -> Any:  # Any: tests and benches reach into each kind
        for component in self.components:
            if component.name == name:
                return component
        return None

    def extra_view(self, view: str) -> dict[str, Any]:
        """The sections components added to the admin view ``view``."""
        return self.context.views.collect(view)

    def status(self) -> dict[str, Any]:
        """The service name and which components run or are unavailable (and why)."""
        return {"service": self.service_name,
                "components": {"running": [c.name for c in self.components],
                               "unavailable": dict(self.unavailable)},
                "capabilities": {name: capability.as_dict()
                                 for name, capability in self.capabilities.items()},
                "exports": sdk.export_health(self.providers) if self.providers else [],
                "descriptors_closed_by_the_application": descriptors.losses,
                "log_records_dropped": log_relay.dropped}


def _parent_listens_on(port: int) -> bool:
    try:
        parent = psutil.Process(os.getppid())
        connections = getattr(parent, "net_connections", None) or parent.connections
        return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
                   for c in connections(kind="inet"))
    except (psutil.Error, OSError):
        return False


# Held for the whole of start() and shutdown(): calls from several threads run one after
# the other, so the state left is always that of the last call. (Overlapping, an old
# monitor's stop removed the patches and the port of the one started meanwhile.) A parent
# thread may hold it at fork: fork_safe unlocks it in the child.
_lock = fork_safe.rlock()
_current: Monitor | None = None
# The thread inside start() or shutdown() (its ident, set under _lock), and the calls a
# signal handler or a finalizer made on that thread meanwhile. Run there, they would build
# or take down half of what the interrupted call was doing (a shutdown() inside start()
# found nothing to stop, and start() then left labotel running): the interrupted call
# makes them, in order, before it returns.
_inside = 0
_nested: list[tuple[str, Monitor | None, bool]] = []
_calls = 0  # start() and shutdown() calls made so far (counted under _lock)


def current() -> Monitor | None:
    return _current


def start(**options: Any) -> Monitor:
    global _inside, _calls
    settings = Settings.load(options)
    if _inside == _thread.get_ident():  # nested in start()/shutdown() on this thread
        monitor = Monitor(settings)
        _nested.append(("start", monitor, bool(options)))
        return monitor  # started (or not) by the interrupted call, as it ends
    with _lock:
        _inside, _calls = _thread.get_ident(), _calls + 1
        try:
            monitor = _start(Monitor(settings), bool(options))
            _run_nested()
        finally:
            _inside = 0
            _nested.clear()
        return monitor


def shutdown() -> None:
    """Stop the running monitor; waits at most ``shutdown_timeout`` (+0.2 s) for exports."""
    global _inside, _calls
    if _inside == _thread.get_ident():  # nested in start()/shutdown() on this thread
        _nested.append(("shutdown", None, False))
        return
    if signal_context.interrupted_own_code():
        # a signal handler's, run inside labotel's code, which may hold a lock the stop
        # takes: the stop runs on a thread of its own once the handler has returned (a
        # raw one: threading's start handshake could wait on that very lock)
        try:
            _thread.start_new_thread(_shutdown_aside, (_calls,))
            return
        except RuntimeError:  # no thread can start: stop here, as before
            pass
    with _lock:
        _inside, _calls = _thread.get_ident(), _calls + 1
        try:
            _stop_current()
            _run_nested()
        finally:
            _inside = 0
            _nested.clear()


def _shutdown_aside(calls_before: int) -> None:
    """The stop a signal handler asked for, unless a later start() or shutdown() has
    decided the state meanwhile (the handler's call came first: the last call wins)."""
    try:
        with _lock:
            if _calls == calls_before:
                shutdown()
    except Exception:
        log.exception("labotel: shutdown() asked by a signal handler failed")


def _start(monitor: Monitor, options_given: bool) -> Monitor:
    """(Under ``_lock``) ``monitor`` started, unless one runs already (then that one)."""
    global _current
    _register_fork_hooks()
    _register_exit_hook()
    if _current is not None and _current.running:
        if options_given and _current.settings != monitor.settings:
            log.warning("labotel.start(): already running; new options ignored "
                        "(call labotel.shutdown() first to change them)")
        return _current
    try:
        monitor.start()
    except ValueError:  # a configuration error: the caller must hear about it
        _safe_stop(monitor)
        raise
    except Exception as error:
        # Anything else is the process's circumstances (no thread can start at its
        # limit, no socket at its descriptor limit...): the application must start
        # anyway. What was built is undone, and a later start() tries again.
        _safe_stop(monitor)
        monitor.start_error = f"{type(error).__name__}: {error}"
        log.error("labotel: could not start (%s); the application runs without it",
                  monitor.start_error, exc_info=True)
        return monitor
    except BaseException:
        _safe_stop(monitor)
        raise
    _current = monitor
    return monitor


def _stop_current() -> None:
    """(Under ``_lock``) Stop the running monitor, if any."""
    global _current
    monitor, _current = _current, None
    if monitor is not None:
        monitor.stop()


def _run_nested() -> None:
    """(Under ``_lock``, as the interrupted call ends) the calls nested in it, in order.
    Their callers have returned: a failure is logged, not raised into this caller."""
    while _nested:
        request, monitor, options_given = _nested.pop(0)
        try:
            if monitor is None:
                _stop_current()
            elif _start(monitor, options_given) is not monitor:
                monitor.start_error = "labotel was running already"
        except ValueError as error:
            if monitor is not None:
                monitor.start_error = f"ValueError: {error}"
            log.error("labotel: a %s() made in a signal handler or finalizer failed: %s",
                      request, error)


FAILED_START_STOP = 0.5  # seconds a failed start() gives its exporters (nothing to send)
LOG_RELAY_STOP = 0.5  # seconds shutdown() waits for the records queued to be handled


def _safe_stop(monitor: Monitor) -> None:
    try:
        monitor.running = True
        monitor.stop(FAILED_START_STOP)
    except Exception:
        log.debug("labotel: cleanup after a failed start raised", exc_info=True)


def _before_fork() -> None:
    monitor = _current
    if monitor is not None and monitor.running:
        sdk.hold_collection_for_fork(monitor.providers)


def _after_fork_in_parent() -> None:
    sdk.release_collection_after_fork()


def _after_fork_in_child() -> None:
    # (fork_safe's own hook, registered at labotel's import, has unlocked labotel's locks:
    # what follows takes them, and _lock)
    # module state a parent thread may have been using at fork time
    heap.forget_readings()
    loops.forget_other_threads_loops()
    hooks_layer.after_fork_in_child()
    sdk.release_collection_after_fork(in_child=True)
    monitor = _current
    if monitor is None or not monitor.running:
        return
    try:
        monitor.after_fork_in_child()
    except Exception:  # never break the child (a gunicorn worker) because of labotel
        log.exception("labotel: setting up the forked child %d failed", os.getpid())


_exit_hook_registered = False


def _register_exit_hook() -> None:
    """(Under ``_lock``) once, at the first ``start()``: after the application's own exit
    hooks registered before it, and before those registered after it (atexit runs the
    last registered first)."""
    global _exit_hook_registered
    if not _exit_hook_registered:
        atexit.register(_shutdown_at_exit)
        _exit_hook_registered = True


def _shutdown_at_exit() -> None:
    """The interpreter is exiting: stop the running monitor within its shutdown_timeout
    (the SDK's own exit hooks waited out every export to a hung collector: 10 s and more).
    A daemon thread of the application may hold ``_lock`` forever, in a start() it never
    finishes: the exit then goes on without labotel's last exports, never hangs."""
    monitor = _current
    if monitor is None:
        return
    if not _lock.acquire(timeout=monitor.settings.shutdown_timeout):
        log.warning("labotel: another thread held labotel's lock at exit; the last "
                    "telemetry is not exported")
        return
    try:
        shutdown()
    except Exception:
        log.exception("labotel: shutdown at exit failed")
    except BaseException:  # Ctrl-C during the exit's stop, which finished its steps anyway
        pass
    finally:
        _lock.release()


_fork_hooks_registered = False


def _register_fork_hooks() -> None:
    """(Under ``_lock``) labotel's fork hooks, registered by the first ``start()`` (only
    the unlocking of labotel's own locks, ``fork_safe``, is registered at its import).
    They cannot be unregistered, so they are registered once and do nothing while no
    monitor runs. Registered long after threading's own, so the hook layer's part runs
    after it."""
    global _fork_hooks_registered
    if _fork_hooks_registered or not hasattr(os, "register_at_fork"):
        return
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                        after_in_child=_after_fork_in_child)
    _fork_hooks_registered = True


# Last: ``labotel.shutdown()`` calls in here only once this module is whole.
LOADED = True
