"""labotel: runtime metrics, detectors and debug endpoints for Python services.

    import labotel
    labotel.start(service_name="orders")
"""

from __future__ import annotations

from typing import Any

from labotel.detect.detection import Detection
from labotel.monitor import Monitor
from labotel.monitor import shutdown as shutdown
from labotel.monitor import start as start
from labotel.version import VERSION

__version__ = VERSION

__all__ = ["Detection", "Monitor", "start", "shutdown", "record_access", "shared",
           "happens_before", "happens_after", "detections", "asgi_app", "wsgi_app"]


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


# Race-detection API: implemented in labotel.detect.races (near-free while detection is off).
from labotel.detect.races import (  # noqa: E402
    happens_after as happens_after,
)
from labotel.detect.races import (  # noqa: E402
    happens_before as happens_before,
)
from labotel.detect.races import (  # noqa: E402
    record_access as record_access,
)
from labotel.detect.races import (  # noqa: E402
    shared as shared,
)
