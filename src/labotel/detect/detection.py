"""The ``Detection`` model and the one reporter every detector goes through.

A detection becomes: a span ``labotel.<kind>`` (attributes + one event per stack), an
increment of ``labotel.detections{labotel.detection.kind}``, one WARNING log record with
readable alert text, and an entry in a bounded ring buffer. Identical detections (same
kind and fingerprint) are kept as one entry whose ``count`` grows.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from opentelemetry import metrics, trace

log = logging.getLogger("labotel")

KINDS = ("race_condition", "memory_leak", "thread_leak", "task_leak", "loop_blocked")
MAX_FINGERPRINTS = 10_000


@dataclasses.dataclass(frozen=True)
class Stack:
    """A named stack trace: ``frames`` are (filename, lineno, function), innermost first."""

    name: str
    frames: tuple[tuple[str, int, str], ...]

    def format(self) -> str:
        return "\n".join(f"  {fn} ({file}:{line})" for file, line, fn in self.frames)


@dataclasses.dataclass
class Detection:
    kind: str
    summary: str
    attributes: dict[str, Any] = dataclasses.field(default_factory=dict)
    stacks: Sequence[Stack] = ()
    message: str = ""  # the alert text for the log; defaults to the summary
    fingerprint: tuple = ()  # what makes two detections "the same" (e.g. both locations)
    time: float = dataclasses.field(default_factory=time.time)
    count: int = 1
    last_seen: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "time": self.time,
            "last_seen": self.last_seen or self.time,
            "count": self.count,
            "summary": self.summary,
            "attributes": dict(self.attributes),
            "stacks": [{"name": s.name, "frames": [
                {"file": f, "line": ln, "function": fn} for f, ln, fn in s.frames]}
                for s in self.stacks],
            "message": self.message or self.summary,
        }


def _otel_value(value: Any) -> Any:
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return str(value)


class Reporter:
    """Turns detections into span, counter, log record and ring-buffer entry."""

    def __init__(self, tracer: trace.Tracer, meter: metrics.Meter, buffer_size: int = 256):
        self._tracer = tracer
        self._counter = meter.create_counter(
            "labotel.detections", unit="{detection}",
            description="Problems reported by labotel's detectors, by kind")
        self._errors = meter.create_counter(
            "labotel.internal.errors", unit="{error}",
            description="Failures inside labotel components (the app keeps running)")
        self._buffer: collections.deque[Detection] = collections.deque(maxlen=buffer_size)
        self._by_fingerprint: collections.OrderedDict[tuple, Detection] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._failed_components: set[str] = set()

    def report(self, detection: Detection) -> bool:
        """Report ``detection``; returns False when it repeats one already reported."""
        try:
            return self._report(detection)
        except Exception:
            self.component_failed("reporter")
            return False

    def _report(self, detection: Detection) -> bool:
        key = (detection.kind, detection.fingerprint) if detection.fingerprint else None
        with self._lock:
            if key is not None and key in self._by_fingerprint:
                previous = self._by_fingerprint[key]
                previous.count += 1
                previous.last_seen = detection.time
                self._by_fingerprint.move_to_end(key)
                return False
            if key is not None:
                self._by_fingerprint[key] = detection
                while len(self._by_fingerprint) > MAX_FINGERPRINTS:
                    self._by_fingerprint.popitem(last=False)
            self._buffer.append(detection)
        self._counter.add(1, {"labotel.detection.kind": detection.kind})
        self._emit_span(detection)
        log.warning("%s", detection.message or detection.summary,
                    extra={"labotel_detection": detection.kind})
        return True

    def _emit_span(self, detection: Detection) -> None:
        attributes = {k: _otel_value(v) for k, v in detection.attributes.items() if v is not None}
        attributes["labotel.detection.kind"] = detection.kind
        start_ns = int(detection.time * 1e9)
        span = self._tracer.start_span(f"labotel.{detection.kind}", attributes=attributes,
                                       start_time=start_ns)
        try:
            span.set_attribute("labotel.detection.summary", detection.summary)
            for stack in detection.stacks:
                span.add_event("stack", {
                    "thread.name": stack.name,
                    "exception.stacktrace": stack.format(),
                }, timestamp=start_ns)
            span.set_status(trace.Status(trace.StatusCode.ERROR, detection.summary[:200]))
        finally:
            span.end()

    def detections(self, kind: str | None = None) -> list[Detection]:
        """Reported detections, newest first."""
        with self._lock:
            items = list(self._buffer)
        items.reverse()
        return [d for d in items if kind is None or d.kind == kind]

    def component_failed(self, component: str) -> None:
        """Count a failure in ``component`` and log it once (with traceback)."""
        try:
            self._errors.add(1, {"labotel.component": component})
        except Exception:
            pass
        if component not in self._failed_components:
            self._failed_components.add(component)
            log.exception("labotel: %s failed; the application keeps running "
                          "(further failures are only counted in labotel.internal.errors)",
                          component)
