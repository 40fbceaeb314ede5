"""Core routes: /healthz, /metrics and the JSON views under /admin/monitoring/."""

from __future__ import annotations

import gc
import os
import time
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder

from labotel.detect.detection import KINDS
from labotel.runtime import aio, heap, threads
from labotel.server.http import HTTPError, Request, Response, json_response, text_response

if TYPE_CHECKING:
    from labotel.monitor import Monitor


def add_routes(monitor: Monitor) -> None:
    router = monitor.router
    started = time.time()

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
        data.update(monitor.extra_view("goroutines"))
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
                monitor.reporter.component_failed("view.heap")
                return None

        if collect:
            read("gc_collect", gc.collect)
        snapshot = read("process", monitor.process_snapshot)
        memory = snapshot.get("memory") if snapshot else None
        data: dict[str, Any] = {
            "pid": os.getpid(),
            "rss_bytes": getattr(memory, "rss", None),
            "vms_bytes": getattr(memory, "vms", None),
            "malloc_in_use_bytes": read("malloc_in_use", heap.malloc_in_use),
            "small_object_blocks": read("small_object_blocks", heap.small_object_blocks),
            "gc_tracked_generations": gc.get_count(),
        }
        data.update(monitor.extra_view("heap"))
        if errors:
            data["errors"] = errors
        return json_response(data)

    def gc_view(_: Request) -> Response:
        collector = monitor.component("runtime.gc")
        if collector is None:
            raise HTTPError(404, "the GC collector is not running (runtime_metrics is off)")
        return json_response(collector.view())

    def detections(request: Request) -> Response:
        kind = request.arg("kind")
        if kind is not None and kind not in KINDS:
            raise HTTPError(400, f"invalid value for kind: {kind!r} (one of {', '.join(KINDS)})")
        limit = request.int_arg("limit", 100, minimum=1, maximum=10_000)
        items = [d.to_dict() for d in monitor.reporter.detections(kind)[:limit]]
        return json_response({"count": len(items), "detections": items})

    def races_off(_: Request) -> Response:
        # replaced by the race detector's own view when race_detection is on
        reason = monitor.unavailable.get("detect.races")
        hint = (f"race detection cannot run here: {reason}" if reason else
                "race detection is off: start labotel with race_detection=True or "
                "LABOTEL_RACE_DETECTION=1")
        return json_response({"enabled": False, "count": 0, "races": [], "hint": hint})

    def index(_: Request) -> Response:
        return json_response({
            "service": monitor.service_name,
            "uptime_seconds": round(time.time() - started, 3),
            "components": {"running": [c.name for c in monitor.components],
                           "unavailable": dict(monitor.unavailable)},
            # what labotel borrows from the SDK and the interpreter (labotel.compat)
            "capabilities": {name: capability.as_dict()
                             for name, capability in monitor.capabilities.items()},
            "endpoints": router.paths()})

    router.add("/healthz", healthz)
    router.add("/metrics", metrics)
    router.add("/admin/monitoring", index)
    router.add("/admin/monitoring/", index)
    router.add("/admin/monitoring/goroutines", goroutines)
    router.add("/admin/monitoring/threads", goroutines)
    router.add("/admin/monitoring/heap", heap_view)
    router.add("/admin/monitoring/gc", gc_view)
    router.add("/admin/monitoring/detections", detections)
    router.add("/admin/monitoring/races", races_off)


def _flag(request: Request, name: str) -> bool:
    value = request.arg(name, "0")
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no", ""):
        return False
    raise HTTPError(400, f"invalid value for {name}: {value!r} (use 0 or 1)")
