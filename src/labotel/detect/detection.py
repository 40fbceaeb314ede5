"""The ``Detection`` model and the one reporter every detector goes through.

A detection becomes: a span ``labotel.<kind>`` (attributes + one event per stack), an
increment of ``labotel.detections{labotel.detection.kind}``, one WARNING log record with
readable alert text, and an entry in a bounded ring buffer. Identical detections (same
kind and fingerprint) are kept as one entry whose ``count`` grows.

A storm of new detections (hundreds of new races a second) must not become hundreds of
spans and log records a second, queued for a collector that may be down: each kind has a
budget of ``REPORT_RATE`` full reports a second (bursts of ``REPORT_BURST``). Past it a
detection is *suppressed*: still counted in ``labotel.detections`` and remembered by
fingerprint (as its size only; its repeats are not reported), but without span, log
record or buffer entry; a log
line says how many every ``SUPPRESSED_LOG_EVERY`` seconds. Everything kept is bounded in
bytes: text and attributes are truncated, and the buffer and fingerprint table have byte
budgets.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation

from labotel import fork_safe, log_relay

log = logging.getLogger(__name__)

KINDS = ("race_condition", "memory_leak", "thread_leak", "task_leak", "loop_blocked")
# Each detection's log record goes to its detector's logger, so one kind can be tuned
# alone (``logging.getLogger("labotel.detect.races").setLevel(logging.ERROR)``).
DETECTOR_LOGGERS = {kind: logging.getLogger(name) for kind, name in (
    ("race_condition", "labotel.detect.races"), ("memory_leak", "labotel.detect.memory"),
    ("thread_leak", "labotel.detect.threads"), ("task_leak", "labotel.detect.threads"),
    ("loop_blocked", "labotel.detect.loop_blocked"))}
MAX_FINGERPRINTS = 10_000
REPORT_RATE = 10.0  # full reports (span + log record) per second and kind, on average
REPORT_BURST = 50.0
SUPPRESSED_LOG_EVERY = 10.0
BUFFER_BYTES = 2 << 20  # detections kept for the view
FINGERPRINT_BYTES = 2 << 20  # detections remembered to count repeats
MAX_TEXT_CHARS = 16_384  # a message
MAX_VALUE_CHARS = 1024  # a summary, an attribute value, an item of a list attribute
MAX_LIST_ITEMS = 32
MAX_STACKS = 8
MAX_FRAMES = 64
SUPPRESSED_BYTES = 150  # a suppressed detection's table entry, before its fingerprint's text


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
    suppressed: bool = False  # over the report budget: counted, no span or log record

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

    def bounded(self) -> Detection:
        """This detection with its text, attributes and stacks cut to size."""
        self.summary = _cut(self.summary, MAX_VALUE_CHARS)
        self.message = _cut(self.message, MAX_TEXT_CHARS)
        self.attributes = {_cut(str(k), 128): _bounded_value(v)
                           for k, v in list(self.attributes.items())[:64]}
        self.stacks = tuple(Stack(_cut(s.name, MAX_VALUE_CHARS), s.frames[:MAX_FRAMES])
                            for s in list(self.stacks)[:MAX_STACKS])
        return self

    def size(self) -> int:
        """Bytes this detection keeps (an estimate)."""
        size = 600 + len(self.summary) + len(self.message)
        for key, value in self.attributes.items():
            size += 80 + len(key) + (sum(len(str(v)) + 60 for v in value)
                                     if isinstance(value, (list, tuple)) else
                                     len(value) if isinstance(value, str) else 32)
        for stack in self.stacks:
            size += 120 + len(stack.name) + sum(150 + len(f[0]) for f in stack.frames)
        return size


def _suppressed_bytes(fingerprint: tuple) -> int:
    return SUPPRESSED_BYTES + len(repr(fingerprint))


def _entry_bytes(entry: Detection | int) -> int:
    return entry.size() if isinstance(entry, Detection) else entry


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f"… [{len(text) - limit} more chars]"


def _bounded_value(value: Any) -> Any:
    if isinstance(value, str):
        return _cut(value, MAX_VALUE_CHARS)
    if isinstance(value, (list, tuple)):
        return [_cut(v, MAX_VALUE_CHARS) if isinstance(v, str) else v
                for v in list(value)[:MAX_LIST_ITEMS]]
    return value


def _otel_value(value: Any) -> Any:
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return str(value)


class _Budget:
    """A token bucket: ``rate`` a second on average, ``burst`` at once."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.at = burst, time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now

    def available(self) -> bool:
        self._refill()
        return self.tokens >= 1

    def take(self) -> bool:
        self._refill()
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class Reporter:
    """Turns detections into span, counter, log record and ring-buffer entry."""

    def __init__(self, tracer: trace.Tracer, meter: metrics.Meter, buffer_size: int = 256):
        self._tracer = tracer
        # Summed here and observed at collection: a storm of hundreds of detections a
        # second costs an increment each, not a trip through the SDK's aggregation.
        self._counts: collections.Counter[str] = collections.Counter()
        meter.create_observable_counter(
            "labotel.detections", [self._observe_counts], unit="{detection}",
            description="Problems reported by labotel's detectors, by kind")
        self._errors = meter.create_counter(
            "labotel.internal.errors", unit="{error}",
            description="Failures inside labotel components (the app keeps running)")
        self._buffer: collections.deque[Detection] = collections.deque()
        self._buffer_size = buffer_size
        self._buffer_bytes = 0
        # A suppressed detection is kept as its size in bytes only: nothing of it is shown
        # or exported, and an int costs the garbage collector nothing
        self._by_fingerprint: collections.OrderedDict[tuple, Detection | int] = (
            collections.OrderedDict())
        self._fingerprint_bytes = 0
        self._budgets = {kind: _Budget(REPORT_RATE, REPORT_BURST) for kind in KINDS}
        self._lock = fork_safe.lock()  # application threads report: unlocked in a child
        self._failed_components: set[str] = set()
        self._closed = False  # after shutdown: nothing is recorded on the instruments
        self.reported = 0
        self.suppressed: collections.Counter[str] = collections.Counter()
        self._suppressed_total = 0
        self._suppressed_logged = 0
        self._suppressed_log_at = time.monotonic()
        self.span_bytes = 0.0  # running mean of the spans' size

    def close(self) -> None:
        """Stop recording on the instruments (labotel is shutting down)."""
        self._closed = True

    def admits(self, kind: str) -> bool:
        """Would a new detection of ``kind`` be fully reported now? (``count_only`` asks
        the same, and counts the detection when the answer is no.)"""
        with self._lock:
            return self._within_budget(kind)

    def _within_budget(self, kind: str) -> bool:
        """(Under lock) whether ``kind``'s report budget has a report left now."""
        budget = self._budgets.get(kind)
        return budget is None or budget.available()

    def count_only(self, kind: str, fingerprint: tuple) -> bool:
        """Count a detection without the caller building it, when that is all it would
        get: a repeat of one known by ``fingerprint``, or a new one over the report budget
        (counted and remembered as suppressed). False: it is new and within the budget, so
        the caller builds it and calls ``report``.

        A storm of new races costs one lock and a dict lookup each, not a ``Detection``
        with its text cut to size: each is paid for by the application's thread."""
        try:
            return self._count_only(kind, fingerprint)
        except Exception:
            self.component_failed("reporter")
            return True

    def _count_only(self, kind: str, fingerprint: tuple) -> bool:
        key = (kind, fingerprint)
        now = time.time()
        with self._lock:
            known = self._by_fingerprint.get(key)
            if known is not None:
                self._count_repeat(key, known, now)
                return True
            if self._within_budget(kind):
                return False
            self.suppressed[kind] += 1
            self._suppressed_total += 1
            self._remember(key, _suppressed_bytes(fingerprint))
            log_suppressed = self._suppressed_to_log()
            if not self._closed:
                self._counts[kind] += 1
        if log_suppressed and not self._closed:
            self._log_suppressed(log_suppressed)
        return True

    def report(self, detection: Detection) -> bool:
        """Report ``detection``; returns False when it repeats one already reported (or is
        over the report budget)."""
        try:
            return self._report(detection)
        except Exception:
            self.component_failed("reporter")
            return False

    def _report(self, detection: Detection) -> bool:
        detection.bounded()
        key = (detection.kind, detection.fingerprint) if detection.fingerprint else None
        with self._lock:
            known = None if key is None else self._by_fingerprint.get(key)
            if key is not None and known is not None:
                self._count_repeat(key, known, detection.time)
                return False
            budget = self._budgets.setdefault(detection.kind,
                                              _Budget(REPORT_RATE, REPORT_BURST))
            if not budget.take():
                detection.suppressed = True
                self.suppressed[detection.kind] += 1
                self._suppressed_total += 1
            if key is not None:
                self._remember(key, _suppressed_bytes(detection.fingerprint)
                               if detection.suppressed else detection)
            if not detection.suppressed:
                self.reported += 1
                self._buffer.append(detection)
                self._buffer_bytes += detection.size()
                while len(self._buffer) > 1 and (len(self._buffer) > self._buffer_size
                                                 or self._buffer_bytes > BUFFER_BYTES):
                    self._buffer_bytes -= self._buffer.popleft().size()
            log_suppressed = self._suppressed_to_log()
            if not self._closed:
                self._counts[detection.kind] += 1
        if self._closed:
            return not detection.suppressed
        if log_suppressed:
            self._log_suppressed(log_suppressed)
        if detection.suppressed:
            return False
        self._emit_span(detection)
        log_relay.log(DETECTOR_LOGGERS.get(detection.kind, log), logging.WARNING,
                      "%s", detection.message or detection.summary,
                      extra={"labotel_detection": detection.kind})
        return True

    def _count_repeat(self, key: tuple, known: Detection | int, now: float) -> None:
        """A repeat of a detection in the table (under lock): counted on it if it was
        reported (the view shows the count), refreshed in the table either way."""
        if isinstance(known, Detection):
            known.count += 1
            known.last_seen = now
        self._by_fingerprint.move_to_end(key)

    def _remember(self, key: tuple, entry: Detection | int) -> None:
        """Keep ``entry`` (a detection, or a suppressed one's size) by fingerprint, within
        the table's byte budget (under lock)."""
        self._by_fingerprint[key] = entry
        self._fingerprint_bytes += _entry_bytes(entry)
        while len(self._by_fingerprint) > 1 and (
                len(self._by_fingerprint) > MAX_FINGERPRINTS
                or self._fingerprint_bytes > FINGERPRINT_BYTES):
            self._fingerprint_bytes -= _entry_bytes(self._by_fingerprint.popitem(last=False)[1])

    @staticmethod
    def _log_suppressed(counts: tuple[int, str]) -> None:
        log_relay.log(log, logging.WARNING, "labotel: %d more detections (%s) came faster "
                      "than the report budget (%g/s per kind): counted in "
                      "labotel.detections, without a span or log record of their own",
                      *counts, REPORT_RATE)

    def _observe_counts(self, _: CallbackOptions) -> list[Observation]:
        with self._lock:
            counts = list(self._counts.items())
        return [Observation(count, {"labotel.detection.kind": kind}) for kind, count in counts]

    def _suppressed_to_log(self) -> tuple[int, str] | None:
        """(count, by kind) to log now, at most every SUPPRESSED_LOG_EVERY s (under lock)."""
        total = self._suppressed_total
        if total == self._suppressed_logged:
            return None
        now = time.monotonic()
        if self._suppressed_logged and now - self._suppressed_log_at < SUPPRESSED_LOG_EVERY:
            return None
        new, self._suppressed_logged, self._suppressed_log_at = (
            total - self._suppressed_logged, total, now)
        return new, ", ".join(f"{kind}: {n}" for kind, n in self.suppressed.items())

    def bytes(self) -> int:
        """labotel's own memory here: the buffer and the fingerprint table (an estimate;
        detections in both are counted twice)."""
        return self._buffer_bytes + self._fingerprint_bytes

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"reported": self.reported, "suppressed": sum(self.suppressed.values()),
                    "suppressed_by_kind": dict(self.suppressed),
                    "buffer_entries": len(self._buffer), "buffer_bytes": self._buffer_bytes,
                    "fingerprints": len(self._by_fingerprint),
                    "fingerprint_bytes": self._fingerprint_bytes,
                    "report_rate_per_kind": REPORT_RATE, "report_burst": REPORT_BURST}

    def _emit_span(self, detection: Detection) -> None:
        attributes = {k: _otel_value(v) for k, v in detection.attributes.items() if v is not None}
        attributes["labotel.detection.kind"] = detection.kind
        start_ns = int(detection.time * 1e9)
        span = self._tracer.start_span(f"labotel.{detection.kind}", attributes=attributes,
                                       start_time=start_ns)
        size = 300 + len(detection.summary) + sum(
            len(str(v)) + len(k) + 40 for k, v in attributes.items())
        try:
            span.set_attribute("labotel.detection.summary", detection.summary)
            for stack in detection.stacks:
                text = _cut(stack.format(), MAX_VALUE_CHARS * 4)
                size += len(text) + 100
                span.add_event("stack", {
                    "thread.name": stack.name,
                    "exception.stacktrace": text,
                }, timestamp=start_ns)
            span.set_status(trace.Status(trace.StatusCode.ERROR, detection.summary[:200]))
        finally:
            span.end()
            self.span_bytes += (size - self.span_bytes) * (0.1 if self.span_bytes else 1.0)

    def detections(self, kind: str | None = None) -> list[Detection]:
        """Reported detections, newest first."""
        with self._lock:
            items = list(self._buffer)
        items.reverse()
        return [d for d in items if kind is None or d.kind == kind]

    def component_failed(self, component: str) -> None:
        """Count a failure in ``component`` and log it once (with traceback)."""
        try:
            if not self._closed:
                self._errors.add(1, {"labotel.component": component})
        except Exception:
            pass
        if component not in self._failed_components:
            self._failed_components.add(component)
            log_relay.log(log, logging.ERROR, "labotel: %s failed; the application keeps "
                          "running (further failures are only counted in "
                          "labotel.internal.errors)", component, exc_info=True)
