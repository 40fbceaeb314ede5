"""Happens-before race detector: the public API and the detector behind it.

``record_access`` checks an access against the resource's shadow state (``shadow.py``)
using the calling thread's vector clock (``vectorclock.py``); the clocks advance through
the hooks on the threading primitives (``sync.py``) and through ``happens_before`` /
``happens_after``. While detection is off (no ``RaceDetection`` component running) every
function here returns after one global check.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from types import FrameType
from typing import Any

from labotel import fork_safe, signal_context
from labotel.compat import cpython
from labotel.detect import race_report, vectorclock
from labotel.detect.detection import Reporter
from labotel.detect.keys import MAX_KEY_CHARS, plain_key, plain_text
from labotel.detect.locations import LocationShadow
from labotel.detect.shadow import ShadowMemory, key_bytes
from labotel.detect.suppress import Suppressions
from labotel.detect.vectorclock import _local

_detector: Detector | None = None
TOKEN_SHARE = 0.2  # of race_max_bytes, for annotation tokens; shadow state has the rest
TOKEN_BYTES = 200  # a token's table entry and clock, before its clock's entries
CLOCK_ENTRY_BYTES = 72  # one thread's entry in a clock (dict slot + two ints)


class Detector:
    """Shadow memory + annotation tokens behind one raw lock, reporting through ``reporter``.

    Nothing under the lock runs application code: resources, locations and tokens are made
    plain keys (``detect.keys``) before it is taken.
    """

    def __init__(self, reporter: Reporter, on_failure: Callable[[], None], *,
                 max_resources: int, stack_depth: int, max_bytes: int = 32 << 20,
                 instrumented: bool = False, suppressions: Suppressions | None = None):
        self.reporter = reporter
        self.on_failure = on_failure
        # with instrumentation on, its locations take half of the shadow's share
        shadow_share = (1 - TOKEN_SHARE) / (2 if instrumented else 1)
        self.shadow = ShadowMemory(max_resources, stack_depth, int(max_bytes * shadow_share))
        self.locations = LocationShadow(max_resources, stack_depth,
                                        int(max_bytes * shadow_share)) if instrumented else None
        self.suppressions = suppressions or Suppressions(())
        self.races_suppressed = 0
        self.tokens: collections.OrderedDict[Any, tuple[vectorclock.AccumulatedClock, int]] = (
            collections.OrderedDict())
        self.max_tokens = max_resources
        self.max_token_bytes = int(max_bytes * TOKEN_SHARE)
        self.token_bytes = 0
        self.tokens_forgotten = 0
        self.mu = fork_safe.lock()  # raw: instrumented locks call into us
        self.races_seen = 0

    def access(self, resource: Any, write: bool, frame: FrameType | None,
               location: Any) -> None:
        try:
            try:
                state = _local.state
            except AttributeError:
                state = vectorclock.current()
            if state.busy:
                return
            if type(resource) is not str or len(resource) > MAX_KEY_CHARS or location is not None:
                resource, location = self._plain(state, resource, location)
            state.busy = True  # vectorclock.quiet(): a finalizer must not re-enter self.mu
            try:
                with self.mu:
                    conflicts = self.shadow.access(resource, write, state, frame, location)
            finally:
                state.busy = False
            if conflicts:
                self._report(state, conflicts)
        except Exception as error:
            if signal_context.raised_by_a_handler(error):
                raise  # the application's own, from a signal handler run in there
            self.on_failure()

    def located(self, obj: Any, marker: tuple, key: Any, rmw: bool,
                state: vectorclock.ThreadState, frame: FrameType | None, site: tuple,
                keyobj: Any) -> None:
        """A write (or read-modify-write) of a location by instrumented code
        (``race_runtime``): checked with Python's semantics (``detect.locations``)."""
        garbage: list = []
        try:
            locations = self.locations
            if locations is None:
                return
            state.busy = True  # as in access(): a finalizer or handler must not re-enter mu
            try:
                with self.mu:
                    conflicts = locations.write(obj, marker, rmw, state, frame, site, garbage)
            finally:
                state.busy = False
            if conflicts:
                self._report_located(state, conflicts, obj, key, site, keyobj)
        except Exception as error:
            if signal_context.raised_by_a_handler(error):
                raise  # the application's own, from a signal handler run in there
            self.on_failure()
        finally:
            state.busy = True  # objects labotel held last may run __del__ as they go
            try:
                del garbage[:]
            except Exception as error:
                if signal_context.raised_by_a_handler(error):
                    raise
                self.on_failure()
            finally:
                state.busy = False

    def _report_located(self, state: vectorclock.ThreadState, conflicts: list, obj: Any,
                        key: Any, site: tuple, keyobj: Any) -> None:
        state.busy = True  # naming the resource may run the application's __repr__
        try:
            name = race_report.location_name(obj, key, site, keyobj)
        finally:
            state.busy = False
        kept = []
        for previous, current in conflicts:
            if self.suppressions.suppressed(name, previous, current):
                self.races_suppressed += 1
            else:
                kept.append((name, previous, current))
        if kept:
            self._report(state, kept)

    @staticmethod
    def _plain(state: vectorclock.ThreadState, resource: Any, location: Any) -> tuple[Any, Any]:
        """Plain keys, made before the lock; labotel calls from inside the application's
        ``__str__`` are ignored (this thread is busy)."""
        state.busy = True
        try:
            return plain_key(resource), None if location is None else plain_text(location)
        finally:
            state.busy = False

    def bytes(self) -> int:
        """labotel's own memory here: shadow state and tokens (the fingerprints of races
        reported are the reporter's, counted there)."""
        located = self.locations.bytes if self.locations is not None else 0
        return self.shadow.bytes + located + self.token_bytes

    def _report(self, state: vectorclock.ThreadState, conflicts: list) -> None:
        state.busy = True  # the reporter's own locks and logging must not feed the detector
        try:
            for resource, previous, current in conflicts:
                self.races_seen += 1
                key = race_report.fingerprint(previous, current)
                # a repeat, or a new race over the report budget, is only counted: no
                # stacks and text are built for it
                if not self.reporter.count_only("race_condition", key):
                    self.reporter.report(race_report.build(resource, previous, current))
        finally:
            state.busy = False

    def _token(self, key: Any) -> vectorclock.AccumulatedClock:
        tokens = self.tokens
        with self.mu:
            entry = tokens.get(key)
            if entry is None:
                clock, cost = vectorclock.AccumulatedClock(), TOKEN_BYTES + key_bytes(key)
                tokens[key] = (clock, cost)
                self.token_bytes += cost
                self._trim_tokens()
                return clock
            tokens.move_to_end(key)
            return entry[0]

    def _trim_tokens(self) -> None:
        """Forget the least recently used tokens while over either bound (under ``mu``)."""
        tokens = self.tokens
        while len(tokens) > 1 and (len(tokens) > self.max_tokens
                                   or self.token_bytes > self.max_token_bytes):
            self.token_bytes -= tokens.popitem(last=False)[1][1]
            self.tokens_forgotten += 1

    def _recount(self, key: Any, clock: vectorclock.AccumulatedClock) -> None:
        """A release may have added entries to the token's clock: count them."""
        with self.mu:
            entry = self.tokens.get(key)
            if entry is None or entry[0] is not clock:
                return
            cost = TOKEN_BYTES + key_bytes(key) + CLOCK_ENTRY_BYTES * len(clock.vc)
            self.token_bytes += cost - entry[1]
            self.tokens[key] = (clock, cost)
            self._trim_tokens()

    def annotate(self, token: Any, release: bool) -> None:
        """``happens_before`` (release=True) or ``happens_after`` on ``token``'s clock."""
        try:
            state = vectorclock.current()
            if state.busy:
                return
            key = self._plain(state, token, None)[0]
            with vectorclock.quiet(state):
                clock = self._token(key)
            if release:
                clock.release(state)
                with vectorclock.quiet(state):
                    self._recount(key, clock)
            else:
                clock.acquire(state)
        except Exception as error:
            if signal_context.raised_by_a_handler(error):
                raise  # the application's own, from a signal handler run in there
            self.on_failure()

    def stats(self) -> dict[str, Any]:
        with vectorclock.quiet(vectorclock.current()):
            with self.mu:
                figures = {"resources_tracked": len(self.shadow), "max_resources":
                           self.shadow.max_resources, "resources_forgotten":
                           self.shadow.evicted, "shadow_bytes": self.shadow.bytes,
                           "max_shadow_bytes": self.shadow.max_bytes, "annotation_tokens":
                           len(self.tokens), "token_bytes": self.token_bytes,
                           "tokens_forgotten": self.tokens_forgotten}
                if self.locations is not None:
                    figures.update({
                        "instrumented_locations": len(self.locations),
                        "instrumented_location_bytes": self.locations.bytes,
                        "locations_forgotten": self.locations.evicted,
                        "locations_reused_address": self.locations.reused})
            figures.update(vectorclock.thread_counts())
        figures["races_seen"] = self.races_seen
        figures["races_suppressed"] = self.races_suppressed
        return figures


def activate(detector: Detector | None) -> None:
    global _detector
    _detector = detector


def active() -> Detector | None:
    return _detector


# --- public API (re-exported by labotel) ------------------------------------------------

def record_access(resource: str, write: bool = False, location: str | None = None) -> None:
    """Record a read (or a write) of ``resource`` by the calling thread.

    ``location`` defaults to the caller's file and line. A no-op unless ``labotel.start()``
    ran with ``race_detection=True``. A resource that is not a ``str`` is named by
    ``str(resource)`` (``dict``/``list``/``set`` by identity); see ``detect.keys``.
    """
    detector = _detector
    if detector is None:
        return
    detector.access(resource, write, cpython.getframe(1), location)


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
