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
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection
from typing import Any

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor

from labotel.environment_variables import apply_launcher_flags

log = logging.getLogger("labotel")


class LabotelInstrumentor(BaseInstrumentor):
    """Starts labotel (``labotel.start(**kwargs)``); ``uninstrument()`` shuts it down."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return ()  # labotel instruments the interpreter, not a library

    def _instrument(self, **kwargs: Any) -> None:
        import labotel

        apply_launcher_flags(os.environ)
        try:
            labotel.start(**kwargs)
        except Exception as error:
            # The launcher would abort every instrumentor after this one and the app
            # must run anyway: say clearly why labotel is off instead.
            log.error("labotel: not started by opentelemetry-instrument: %s", error)

    def _uninstrument(self, **kwargs: Any) -> None:
        import labotel

        labotel.shutdown()
