"""Happens-before race detector: the public API and the detector behind it.

``record_access`` checks an access against the resource's shadow state (``shadow.py``)
using the calling thread's vector clock (``vectorclock.py``); the clocks advance through
the hooks on the threading primitives (``sync.py``) and through ``happens_before`` /
``happens_after``. While detection is off (no ``RaceDetection`` component running) every
function here returns after one global check.
"""

from __future__ import annotations

import _thread
import collections
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

from labotel.detect import race_report, vectorclock
from labotel.detect.detection import Reporter
from labotel.detect.shadow import ShadowMemory
from labotel.detect.vectorclock import _local

_detector: Detector | None = None
# Fingerprints we know the reporter holds (it keeps MAX_FINGERPRINTS, more, and refreshes
# an entry on every repeat), so a repeat can be reported without building the full text.
RECENT_REPORTS = 1000


class Detector:
    """Shadow memory + annotation tokens behind one raw lock, reporting through ``reporter``."""

    def __init__(self, reporter: Reporter, on_failure: Callable[[], None], *,
                 max_resources: int, stack_depth: int):
        self.reporter = reporter
        self.on_failure = on_failure
        self.shadow = ShadowMemory(max_resources, stack_depth)
        self.tokens: collections.OrderedDict[Any, vectorclock.AccumulatedClock] = (
            collections.OrderedDict())
        self.max_tokens = max_resources
        self.mu = _thread.allocate_lock()  # raw: instrumented locks call into us
        self.races_seen = 0
        self.recent: collections.OrderedDict[tuple, None] = collections.OrderedDict()

    def access(self, resource: Any, write: bool, frame: FrameType | None,
               location: str | None) -> None:
        try:
            try:
                state = _local.state
            except AttributeError:
                state = vectorclock.current()
            if state.busy:
                return
            state.busy = True  # vectorclock.quiet(): a finalizer must not re-enter self.mu
            try:
                with self.mu:
                    conflicts = self.shadow.access(resource, write, state, frame, location)
            finally:
                state.busy = False
            if conflicts:
                self._report(state, conflicts)
        except Exception:
            self.on_failure()

    def _report(self, state: vectorclock.ThreadState, conflicts: list) -> None:
        state.busy = True  # the reporter's own locks and logging must not feed the detector
        try:
            for resource, previous, current in conflicts:
                self.races_seen += 1
                key = race_report.fingerprint(previous, current)
                with self.mu:
                    known = key in self.recent
                    self.recent[key] = None
                    self.recent.move_to_end(key)
                    if len(self.recent) > RECENT_REPORTS:
                        self.recent.popitem(last=False)
                if known:  # already reported: skip building stacks and text
                    self.reporter.report(race_report.repeat(resource, key))
                else:
                    self.reporter.report(race_report.build(resource, previous, current))
        finally:
            state.busy = False

    def _token(self, token: Any) -> vectorclock.AccumulatedClock:
        try:
            hash(token)
            key = token
        except TypeError:  # unhashable (a dict, a socket wrapper): the object is the token
            key = ("labotel.token.id", id(token))
        with self.mu:
            clock = self.tokens.get(key)
            if clock is None:
                clock = self.tokens[key] = vectorclock.AccumulatedClock()
                if len(self.tokens) > self.max_tokens:
                    self.tokens.popitem(last=False)
            else:
                self.tokens.move_to_end(key)
        return clock

    def annotate(self, token: Any, release: bool) -> None:
        """``happens_before`` (release=True) or ``happens_after`` on ``token``'s clock."""
        try:
            state = vectorclock.current()
            if state.busy:
                return
            with vectorclock.quiet(state):
                clock = self._token(token)
            if release:
                clock.release(state)
            else:
                clock.acquire(state)
        except Exception:
            self.on_failure()

    def stats(self) -> dict[str, Any]:
        with vectorclock.quiet(vectorclock.current()):
            with self.mu:
                figures = {"resources_tracked": len(self.shadow), "max_resources":
                           self.shadow.max_resources, "resources_forgotten":
                           self.shadow.evicted, "annotation_tokens": len(self.tokens)}
            figures.update(vectorclock.thread_counts())
        figures["races_seen"] = self.races_seen
        return figures

    def reinit_after_fork(self) -> None:
        self.mu = _thread.allocate_lock()


def activate(detector: Detector | None) -> None:
    global _detector
    _detector = detector


def active() -> Detector | None:
    return _detector


# --- public API (re-exported by labotel) ------------------------------------------------

def record_access(resource: str, write: bool = False, location: str | None = None) -> None:
    """Record a read (or a write) of ``resource`` by the calling thread.

    ``location`` defaults to the caller's file and line. A no-op unless ``labotel.start()``
    ran with ``race_detection=True``.
    """
    detector = _detector
    if detector is None:
        return
    detector.access(resource, write, sys._getframe(1), location)


def shared(obj: Any, name: str) -> Any:
    """A transparent proxy for ``obj`` (dict, list, set or plain object) that records its
    item and attribute reads and writes as accesses to resource ``name``."""
    from labotel.detect.shared_proxy import make_proxy

    return make_proxy(obj, name)


def happens_before(token: Any) -> None:
    """Annotate a release: what this thread did so far happens-before a later
    ``happens_after(token)`` in any thread (for sync labotel cannot see: sockets, DB rows)."""
    detector = _detector
    if detector is not None:
        detector.annotate(token, release=True)


def happens_after(token: Any) -> None:
    """Annotate an acquire: order this thread after every earlier ``happens_before(token)``."""
    detector = _detector
    if detector is not None:
        detector.annotate(token, release=False)
