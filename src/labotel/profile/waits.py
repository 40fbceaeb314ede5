"""Waits by stack, since ``start()``: the data behind the mutex and block profiles.

``WaitRecorder`` is the wait subscriber of ``labotel.hooks``. Every wait it keeps is
added to one of two cumulative tables, as Go's runtime keeps its profiles:

- *block*: the waiting stack (the thread's, or the asyncio task's coroutine chain) ->
  (contentions, delay in ns);
- *mutex*: the stack that *released* a lock others waited for -> (contended releases,
  the time the waiters waited since the release before).

The innermost frame of every stack names the primitive (``threading.Lock.acquire``,
``threading.Condition.wait``, ``asyncio.Future.__await__`` ...), as Go's stacks start at
``sync.(*Mutex).Lock``. labotel's own waits are left out: a wait whose innermost frame
outside the standard library is labotel's, and any wait of a thread that labotel or the
OpenTelemetry SDK runs (its outermost such frame is theirs: samplers and exporters idle
there). An application thread waiting inside the SDK (a span processor's lock) is kept.

Sampling follows Go's ``SetBlockProfileRate``: a wait of ``rate_ns`` or longer is always
kept; a shorter one is kept with probability ``delay / rate_ns`` and then counts
``rate_ns / delay`` contentions and ``rate_ns`` of delay, so totals stay unbiased. The
hooks draw (``labotel.hooks.primitives.kept``), so a skipped wait costs no call in here;
what reaches the recorder is kept, and scaled here.

Memory is bounded in bytes (``max_bytes``, estimated from the objects kept: frames,
the code objects they name, stacks and their counters). Once it is reached, waits at
stacks not seen before are added to one overflow stack, so totals stay right and deltas
never go backwards.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from types import CodeType, FrameType
from typing import Any

from labotel import fork_safe
from labotel import frames as whose
from labotel.profile.pprof import ProfileBuilder

SAMPLE_TYPES = [("contentions", "count"), ("delay", "nanoseconds")]
MAX_DEPTH = 64  # frames kept per stack, innermost first (Go keeps 32)
# Estimated bytes per object kept (CPython 3.11, 64-bit): a frame entry is its
# (code, lasti) key tuple, the dict slot, its row and two ints; a stack adds its counter
# list, a float, an int and the dict slot to the size of its key tuple.
FRAME_BYTES = 240
STACK_BYTES = 200
OVERFLOW = "(labotel: contention_profile_max_bytes reached; stacks merged)"
LIBRARY, LABOTEL, TELEMETRY, APPLICATION = 0, 1, 2, 3
_TELEMETRY_DIR = os.sep + "opentelemetry" + os.sep

Samples = dict[tuple[int, ...], list]  # stack of frame ids -> [contentions, delay_ns]
Frame = tuple[CodeType | None, int, int, str]  # code, lasti, line, name (code None: a site)


def _frame_kind(filename: str) -> int:
    if whose.is_labotel(filename):
        return LABOTEL
    if whose.is_stdlib(filename):
        return LIBRARY
    return TELEMETRY if _TELEMETRY_DIR in filename else APPLICATION


class WaitRecorder:
    """The two wait tables and the frames their stacks are made of."""

    def __init__(self, rate_ns: int, max_bytes: int, on_failure: Callable[[], None]):
        self.rate_ns = max(int(rate_ns), 1)  # read by the hooks, which do the sampling
        self.max_bytes = max_bytes
        self._on_failure = on_failure
        self._lock = fork_safe.lock()  # raw: the hooks call in here
        self._reset()

    def _reset(self) -> None:
        self._ids: dict[Any, int] = {}  # (code, lasti) or a site name -> frame id
        self._frames: list[Frame] = []
        self._kinds: list[int] = []
        self._codes: set[CodeType] = set()
        self.block_table: Samples = {}
        self.mutex_table: Samples = {}
        self.bytes = 0
        self.dropped = 0  # waits merged into the overflow stack
        self.events = 0  # waits kept (before sampling weights)
        self._overflow = (self._site(OVERFLOW),)

    # -- the wait subscriber (called by labotel.hooks, never raising into the app) ---------
    def failed(self) -> None:
        self._on_failure()

    def stack(self, site: str, frame: FrameType | None,
              stop: FrameType | None = None) -> tuple[int, ...] | None:
        """The stack at ``frame`` now, for a wait about to start (None: labotel's own)."""
        return self._stack(site, frame, stop)

    def block(self, key: tuple[int, ...], delay_ns: int) -> None:
        """A kept wait at a stack taken before it started."""
        self._add(self.block_table, key, self._scaled(delay_ns))

    def blocked(self, site: str, frame: FrameType | None, delay_ns: int,
                stop: FrameType | Callable[[], FrameType | None] | None) -> None:
        """A kept wait that just ended, at ``frame`` (up to ``stop``, a task's coroutine,
        or a function that finds it)."""
        if callable(stop):
            stop = stop()
        key = self._stack(site, frame, stop)
        if key is not None:
            self._add(self.block_table, key, self._scaled(delay_ns))

    def handed_off(self, site: str, frame: FrameType | None, delay_ns: int) -> None:
        """A lock released at ``frame`` had kept threads waiting ``delay_ns`` in all (a
        charge the hooks kept)."""
        key = self._stack(site, frame, None)
        if key is not None:
            self._add(self.mutex_table, key, self._scaled(delay_ns))

    # -- sampling, stacks, tables -------------------------------------------------------------
    def _scaled(self, delay_ns: int) -> tuple[float, int]:
        """A kept wait's figures: a short one stands for rate/delay waits like it."""
        rate = self.rate_ns
        if delay_ns >= rate:
            return 1.0, delay_ns
        return rate / max(delay_ns, 1), rate

    def _stack(self, site: str, frame: FrameType | None,
               stop: FrameType | None) -> tuple[int, ...] | None:
        """Frame ids, the site first; None for labotel's own waits."""
        ids = self._ids
        first = ids.get(site)
        if first is None:
            first = self._site(site)
        key = [first]
        kinds = self._kinds
        innermost = outermost = LIBRARY  # the first and last kinds outside the stdlib
        whole = True  # the walk reached the thread's entry
        depth = 0
        while frame is not None:
            if depth == MAX_DEPTH:
                whole = False
                break
            code = frame.f_code
            lasti = frame.f_lasti
            frame_id = ids.get((code, lasti))
            if frame_id is None:
                frame_id = self._intern(code, lasti, frame.f_lineno)
                if frame_id is None:
                    return self._overflow
            kind = kinds[frame_id]
            if kind != LIBRARY:
                outermost = kind
                if innermost == LIBRARY:
                    innermost = kind
            key.append(frame_id)
            if frame is stop:
                whole = False
                break
            frame = frame.f_back
            depth += 1
        if innermost == LABOTEL or (whole and outermost in (LABOTEL, TELEMETRY)):
            return None
        return tuple(key)

    def _site(self, name: str) -> int:
        with self._lock:
            frame_id = self._ids.get(name)
            if frame_id is None:  # a handful of names: not counted against the budget
                frame_id = self._ids[name] = len(self._frames)
                self._frames.append((None, 0, 0, name))
                self._kinds.append(LIBRARY)
            return frame_id

    def _intern(self, code: CodeType, lasti: int, lineno: int | None) -> int | None:
        with self._lock:
            frame_id = self._ids.get((code, lasti))
            if frame_id is not None:
                return frame_id
            cost = FRAME_BYTES + (0 if code in self._codes else sys.getsizeof(code) + 64)
            if self.bytes + cost > self.max_bytes:
                return None
            self.bytes += cost
            self._codes.add(code)
            frame_id = self._ids[(code, lasti)] = len(self._frames)
            self._frames.append((code, lasti, lineno or code.co_firstlineno, ""))
            self._kinds.append(_frame_kind(code.co_filename))
            return frame_id

    def _add(self, table: Samples, key: tuple[int, ...], weight: tuple[float, int]) -> None:
        count, delay = weight
        with self._lock:
            self.events += 1
            values = table.get(key)
            if values is None:
                cost = STACK_BYTES + sys.getsizeof(key)
                if self.bytes + cost > self.max_bytes:
                    key = self._overflow
                    values = table.get(key)
                else:
                    self.bytes += cost
                if values is None:
                    values = table[key] = [0.0, 0]
            if key is self._overflow:
                self.dropped += 1
            values[0] += count
            values[1] += delay

    # -- reading --------------------------------------------------------------------------------
    def snapshot(self, name: str) -> Samples:
        """A copy of the ``block`` or ``mutex`` table."""
        table = self.block_table if name == "block" else self.mutex_table
        with self._lock:
            return {key: list(values) for key, values in table.items()}

    def records(self, name: str) -> int:
        return len(self.block_table if name == "block" else self.mutex_table)

    def profile(self, samples: Samples) -> ProfileBuilder:
        """A pprof builder with ``samples``: contentions rounded, delay in ns."""
        builder = ProfileBuilder(SAMPLE_TYPES, ("contentions", "count"), 1)
        with self._lock:
            frames = list(self._frames)
        locations: dict[int, int] = {}
        for key, (count, delay) in samples.items():
            stack = []
            for frame_id in key:
                location = locations.get(frame_id)
                if location is None:
                    code, lasti, line, name = frames[frame_id]
                    location = (builder.code_location(code, lasti, line) if code is not None
                                else builder.line_location("", 0, name))
                    locations[frame_id] = location
                stack.append(location)
            builder.add(tuple(stack), [round(count), int(delay)])
        return builder

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"block_stacks": len(self.block_table), "mutex_stacks": len(self.mutex_table),
                    "frames": len(self._frames), "bytes": self.bytes,
                    "max_bytes": self.max_bytes, "waits_kept": self.events,
                    "waits_merged_over_budget": self.dropped, "rate_ns": self.rate_ns}

    def reset_after_fork(self) -> None:
        """The parent's waits are not the child's."""
        self._reset()


def delta(after: Samples, before: Samples) -> Samples:
    """What was added between two snapshots (Go's ``?seconds=N`` profiles)."""
    result = {}
    for key, (count, delay) in after.items():
        old = before.get(key)
        if old is not None:
            count, delay = count - old[0], delay - old[1]
        if count or delay:
            result[key] = [count, delay]
    return result
