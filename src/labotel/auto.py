"""``opentelemetry-instrument python app.py`` turns labotel on, with no code change.

The launcher puts OpenTelemetry's ``sitecustomize`` on ``PYTHONPATH``; at interpreter
start-up, before the application's main module is even read, it loads the distro, runs
the configurator (which sets the global providers) and then calls ``instrument()`` on
every ``opentelemetry_instrumentor`` entry point, ``labotel`` among them. So by the time
``LabotelInstrumentor._instrument`` runs:

- the configurator's providers exist and ``labotel.start()`` registers on them;
- nothing of the application is imported yet, so race detection (``LABOTEL_RACE_DETECTION``)
  patches the lock primitives before the app creates any lock at import time.

``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=labotel`` skips the entry point, like any other.

The ``opentelemetry_pre_instrument`` hook (``pre_instrument``) starts labotel even
earlier: after the configurator, before *any* instrumentor runs, so the locks that other
instrumentors' libraries create at import time are seen by the race detector too. The
instrumentor entry point then finds labotel running (``start()`` is idempotent).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection
from typing import Any

from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,  # defined there, but not in what the module declares it exports
)

from labotel.environment_variables import apply_launcher_flags

log = logging.getLogger(__name__)


def disabled_by_environment(environ: Any = os.environ) -> bool:
    """True when OTEL_PYTHON_DISABLED_INSTRUMENTATIONS names labotel (or is ``*``)."""
    names = {name.strip() for name in
             environ.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "").split(",")}
    return bool(names & {"labotel", "*"})


def pre_instrument() -> None:
    """The launcher's pre-instrument hook: start labotel before any instrumentor."""
    if not disabled_by_environment():
        _start_from_launcher()


_failed_settings: list[str] = []  # the error already logged by the pre-instrument hook


def _start_from_launcher(**kwargs: Any) -> None:
    import labotel

    apply_launcher_flags(os.environ)
    try:
        labotel.start(**kwargs)
    except Exception as error:
        # The launcher would abort every instrumentor after this one and the app
        # must run anyway: say clearly why labotel is off instead (once).
        if str(error) not in _failed_settings:
            _failed_settings.append(str(error))
            log.error("labotel: not started by opentelemetry-instrument: %s", error)


class LabotelInstrumentor(BaseInstrumentor):
    """Starts labotel (``labotel.start(**kwargs)``); ``uninstrument()`` shuts it down."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return ()  # labotel instruments the interpreter, not a library

    def _instrument(self, **kwargs: Any) -> None:
        _start_from_launcher(**kwargs)

    def _uninstrument(self, **kwargs: Any) -> None:
        import labotel

        labotel.shutdown()
