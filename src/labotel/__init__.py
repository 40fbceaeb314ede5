"""labotel: runtime metrics, detectors and debug endpoints for Python services.

    import labotel
    labotel.start(service_name="orders")

Importing labotel is cheap: the public names below load their modules on first use, so
the pytest plugin (loaded in every test run of a project that installs labotel) and code
that only calls ``record_access`` pay for the OpenTelemetry SDK, psutil and
prometheus_client only once ``start()`` is looked up.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import TYPE_CHECKING, Any

__all__ = ["Detection", "Monitor", "start", "shutdown", "record_access", "shared",
           "happens_before", "happens_after", "detections", "asgi_app", "wsgi_app"]

# public name -> the module that defines it (imported on first access, then cached here)
_LAZY = {
    "Detection": "labotel.detect.detection",
    "Monitor": "labotel.monitor",
    "start": "labotel.monitor",
    # the race-detection API: near-free while detection is off
    "record_access": "labotel.detect.races",
    "shared": "labotel.detect.races",
    "happens_before": "labotel.detect.races",
    "happens_after": "labotel.detect.races",
}

if TYPE_CHECKING:
    from labotel.detect.detection import Detection
    from labotel.detect.races import happens_after, happens_before, record_access, shared
    from labotel.monitor import Monitor, start


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if name == "__version__":  # the package metadata, read once asked for
        from labotel.version import VERSION

        value: Any = VERSION
    elif module is not None:
        value = getattr(importlib.import_module(module), name)
    elif not name.startswith("__") and importlib.util.find_spec(f"{__name__}.{name}"):
        value = importlib.import_module(f"{__name__}.{name}")  # `labotel.monitor.current()`
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def shutdown() -> None:
    """Stop the running monitor; waits at most ``shutdown_timeout`` (+0.2 s) for exports.

    Defined here, not loaded on first use: a signal handler calling it while the main
    thread's first ``labotel.start`` was still importing ``labotel.monitor`` got that
    half-made module's ``AttributeError``. Until that module is whole nothing can run."""
    monitor = sys.modules.get("labotel.monitor")
    if getattr(monitor, "LOADED", False):
        monitor.shutdown()  # type: ignore[union-attr]


def detections(kind: str | None = None) -> list[Detection]:
    """Detections reported since ``start()``, newest first, optionally of one ``kind``."""
    from labotel.monitor import current

    monitor = current()
    return monitor.reporter.detections(kind) if monitor is not None else []


def asgi_app() -> Any:
    """The debug routes as an ASGI app (mount it in Starlette/FastAPI); needs ``start()``."""
    from labotel.server.adapters import asgi_app as build

    return build(_router)


def wsgi_app() -> Any:
    """The debug routes as a WSGI app (mount it in Flask/Django); needs ``start()``."""
    from labotel.server.adapters import wsgi_app as build

    return build(_router)


def _router() -> Any:
    from labotel.monitor import current
    from labotel.server.http import HTTPError, Router

    monitor = current()
    if monitor is None:
        router = Router()

        def not_started(_request: Any) -> Any:
            raise HTTPError(503, "labotel is not started: call labotel.start() first")

        router.add("/", not_started, prefix=True, methods=("GET", "HEAD", "POST"))
        return router
    return monitor.router
