"""Python threads (daemon or not) and where each was started."""

from __future__ import annotations

import threading
from typing import Any

from opentelemetry.metrics import CallbackOptions, Observation

from labotel.compat import cpython
from labotel.component import Component
from labotel.context import Context
from labotel.frames import describe, located
from labotel.runtime import origins
from labotel.runtime.thread_frames import current_frames, stack

_is_daemon = cpython.is_daemon


class ThreadCollector(Component):
    name = "runtime.threads"

    def start(self, context: Context) -> None:
        context.meter.create_observable_up_down_counter(
            "labotel.python.threads", [context.guarded(self.name, self._count)],
            unit="{thread}", description="Live Python threads, by daemon flag")

    def _count(self, _: CallbackOptions):
        live = threading.enumerate()
        daemon = sum(map(_is_daemon, live))
        yield Observation(len(live) - daemon, {"thread.daemon": False})
        yield Observation(daemon, {"thread.daemon": True})


def thread_view(stacks: bool = False) -> list[dict[str, Any]]:
    """Every live Python thread: name, ids, daemon flag, creation site, optional stack."""
    frames = current_frames() if stacks else {}
    result = []
    for thread in threading.enumerate():
        origin = origins.thread_origin(thread)
        entry: dict[str, Any] = {
            "name": thread.name,
            "ident": thread.ident,
            "native_id": thread.native_id,
            "daemon": thread.daemon,
            "alive": thread.is_alive(),
            "created_at": origins.site(origin) if origin else None,
            "creation_stack": [describe(where) for where in origin] if origin else [],
        }
        if stacks and thread.ident in frames:
            entry["stack"] = [describe(located(f)) for f in stack(frames[thread.ident])]
        result.append(entry)
    return result
