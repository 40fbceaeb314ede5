"""The environment fails under labotel (psutil, /proc, the C library): views answer with
what they can read (issue 11, item 9)."""

from __future__ import annotations

import json
import time

import psutil

from labotel.runtime import heap
from tests.metrics_helpers import fetch


def test_heap_view_answers_what_it_can_when_psutil_and_mallinfo_fail(monitor, monkeypatch):
    def broken(*args, **kwargs):
        raise psutil.AccessDenied(pid=0, name="/proc/self/statm")

    def no_mallinfo():
        raise OSError("mallinfo2 unavailable")

    monkeypatch.setattr(psutil.Process, "memory_info", broken)
    monkeypatch.setattr(heap, "_read_mallinfo2", no_mallinfo)
    monkeypatch.setattr(heap._malloc, "_read", no_mallinfo)
    time.sleep(0.25)  # past the cached process reading
    status, _, body = fetch(monitor.admin_url + "/admin/monitoring/heap")
    assert status == 200, body
    view = json.loads(body)
    assert view["rss_bytes"] is None and view["malloc_in_use_bytes"] is None
    assert view["small_object_blocks"] > 0 and view["gc_tracked_generations"]
    assert {"process", "malloc_in_use"} <= set(view["errors"])
    assert "AccessDenied" in view["errors"]["process"]
