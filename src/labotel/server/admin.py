"""Core routes: /healthz, /metrics and the JSON views under /admin/monitoring/.

Added by the monitor after its components start, through the same ``Context.add_route``
they use.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder

from labotel.context import Context
from labotel.detect.detection import KINDS
from labotel.runtime import aio, heap, threads
from labotel.runtime.gc import GCCollector
from labotel.runtime.process import ProcessCollector
from labotel.server.http import HTTPError, Request, Response, Router, json_response, text_response

RACES = "/admin/monitoring/races"


def add_routes(context: Context, router: Router, status: Callable[[], dict[str, Any]]) -> None:
    """``status()`` is the monitor's own account of itself: ``service`` and ``components``
    (``running`` names, ``unavailable`` name -> why)."""
    started = time.time()

    def process_snapshot() -> dict[str, Any] | None:
        collector = context.peer(ProcessCollector.name)
        return collector.snapshot.get() if isinstance(collector, ProcessCollector) else None

    def healthz(_: Request) -> Response:
        return text_response("ok\n")

    def metrics(request: Request) -> Response:
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(200, encoder(REGISTRY), content_type)

    def goroutines(request: Request) -> Response:
        stacks = _flag(request, "stacks")
        thread_list = threads.thread_view(stacks=stacks)
        task_list = aio.task_view(stacks=stacks)
        data: dict[str, Any] = {
            "pid": os.getpid(),
            "threads": {"count": len(thread_list), "items": thread_list},
            "tasks": {"count": len(task_list), "items": task_list},
        }
        data.update(context.views.collect("goroutines"))
        return json_response(data)

    def heap_view(request: Request) -> Response:
        """What can be read: a failing source (psutil, /proc, mallinfo) leaves its fields
        null and says why under ``errors``, instead of failing the whole view."""
        collect = _flag(request, "gc")
        errors: dict[str, str] = {}

        def read(name: str, reader: Any) -> Any:
            try:
                return reader()
            except Exception as error:
                errors[name] = f"{type(error).__name__}: {error}"
                context.failed("view.heap")
                return None

        if collect:
            read("gc_collect", gc.collect)
        snapshot = read("process", process_snapshot)
        memory = snapshot.get("memory") if snapshot else None
        data: dict[str, Any] = {
            "pid": os.getpid(),
            "rss_bytes": getattr(memory, "rss", None),
            "vms_bytes": getattr(memory, "vms", None),
            "malloc_in_use_bytes": read("malloc_in_use", heap.malloc_in_use),
            "small_object_blocks": read("small_object_blocks", heap.small_object_blocks),
            "gc_tracked_generations": gc.get_count(),
        }
        data.update(context.views.collect("heap"))
        if errors:
            data["errors"] = errors
        return json_response(data)

    def gc_view(_: Request) -> Response:
        collector = context.peer(GCCollector.name)
        if not isinstance(collector, GCCollector):
            raise HTTPError(404, "the GC collector is not running (runtime_metrics is off)")
        return json_response(collector.view())

    def detections(request: Request) -> Response:
        kind = request.arg("kind")
        if kind is not None and kind not in KINDS:
            raise HTTPError(400, f"invalid value for kind: {kind!r} (one of {', '.join(KINDS)})")
        limit = request.int_arg("limit", 100, minimum=1, maximum=10_000)
        items = [d.to_dict() for d in context.reporter.detections(kind)[:limit]]
        return json_response({"count": len(items), "detections": items})

    def races_off(_: Request) -> Response:
        reason = status()["components"]["unavailable"].get("detect.races")
        hint = (f"race detection cannot run here: {reason}" if reason else
                "race detection is off: start labotel with race_detection=True or "
                "LABOTEL_RACE_DETECTION=1")
        return json_response({"enabled": False, "count": 0, "races": [], "hint": hint})

    def index(_: Request) -> Response:
        state = status()
        return json_response({
            "service": state["service"],
            "uptime_seconds": round(time.time() - started, 3),
            "components": state["components"],
            # what labotel borrows from the SDK and the interpreter (labotel.compat)
            "capabilities": state["capabilities"],
            # each push exporter: did its last export succeed, what was skipped while down
            "exports": state.get("exports", []),
            # times the application closed labotel's descriptors (a daemonizing process)
            "descriptors_closed_by_the_application": state.get(
                "descriptors_closed_by_the_application", 0),
            # labotel's own log lines let go while the logging handlers did not keep up
            "log_records_dropped": state.get("log_records_dropped", 0),
            "endpoints": router.paths()})

    add = context.add_route
    add("/healthz", healthz)
    add("/metrics", metrics)
    add("/admin/monitoring", index)
    add("/admin/monitoring/", index)
    add("/admin/monitoring/goroutines", goroutines)
    add("/admin/monitoring/threads", goroutines)
    add("/admin/monitoring/heap", heap_view)
    add("/admin/monitoring/gc", gc_view)
    add("/admin/monitoring/detections", detections)
    if not router.has(RACES):  # the race detector serves it when it runs
        add(RACES, races_off)


def _flag(request: Request, name: str) -> bool:
    value = request.arg(name, "0")
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no", ""):
        return False
    raise HTTPError(400, f"invalid value for {name}: {value!r} (use 0 or 1)")
