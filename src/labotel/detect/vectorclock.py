"""Vector clocks and thread identity for the happens-before race detector.

Every thread gets a ``ThreadState`` on its first instrumented event. Its id comes from a
process-wide counter, so it is never reused (``threading.get_ident()`` values are reused as
soon as a thread exits). A thread's clock is its own epoch counter (``clock``) plus ``vc``:
for every other thread, the latest epoch of it that happens-before this thread's present.

A release publishes a *snapshot* ``(tid, clock, vc)`` and then advances ``clock``; the
snapshot shares the ``vc`` dict (copy-on-write), so an uncontended release copies nothing.
An acquire joins a snapshot into the acquiring thread's ``vc``.

Memory: ``vc`` holds one entry per thread this thread has synchronised with. Threads that
exited are remembered (``max_exited`` most recent); an epoch of a thread older than that is
treated as ordered before everything (it can no longer produce a report, never a false
one), and its entries are pruned from clocks that grow large.
"""

from __future__ import annotations

import _thread
import collections
import contextlib
import itertools
import threading
import weakref
from collections.abc import Iterator
from typing import Any

from labotel import fork_safe
from labotel.compat import cpython

Snapshot = tuple  # (tid, clock, vc dict) — never mutated after it is published

_ids = itertools.count(1)
_local = threading.local()
_registry_mu = fork_safe.lock()  # raw: never one of the instrumented locks
_live: set[int] = set()
_exited_queue: collections.deque[int] = collections.deque()
_exited: collections.OrderedDict[int, None] = collections.OrderedDict()
_limits = {"max_exited": 1024, "epoch": 0}  # epoch: bumped when the limit changes
_active = cpython.THREADS_ACTIVE  # ident -> Thread, no side effects
_limbo = cpython.THREADS_LIMBO  # threads between start() and run


class ThreadLabel:
    """Who made an access, as shadow memory keeps it: the thread's id and name, not its
    clock (so an exited thread's clock is freed while its accesses still name it)."""

    __slots__ = ("tid", "thread", "fallback_name")

    def __init__(self, tid: int, thread: threading.Thread | None, name: str):
        self.tid = tid
        self.thread = weakref.ref(thread) if thread is not None else None
        self.fallback_name = name

    @property
    def name(self) -> str:
        thread = self.thread() if self.thread is not None else None
        return thread.name if thread is not None else self.fallback_name


class ThreadState:
    """The clock of one thread (only that thread mutates it)."""

    __slots__ = ("tid", "clock", "vc", "shared", "joined", "busy", "label", "prune_at",
                 "prune_epoch",
                 "reads", "writes", "__weakref__")

    def __init__(self, tid: int, thread: threading.Thread | None, name: str):
        self.tid = tid
        self.clock = 1
        self.vc: dict[int, int] = {}
        self.shared = False  # vc is referenced by a published snapshot: copy before writing
        self.joined: dict[int, int] | None = None  # last vc joined (skip repeats cheaply)
        self.busy = False  # inside labotel's own work: hooks ignore this thread
        self.label = ThreadLabel(tid, thread, name)
        self.prune_at = 64
        self.prune_epoch = _limits["epoch"]
        # instrumented code's locations read, and written (flags), in this epoch
        # (``race_runtime``); a new epoch starts them afresh
        self.reads: set[tuple] = set()
        self.writes: dict[tuple, int] = {}

    @property
    def name(self) -> str:
        return self.label.name

    def snapshot(self) -> Snapshot:
        self.shared = True
        return (self.tid, self.clock, self.vc)

    def release(self) -> Snapshot:
        """Publish this thread's clock and start a new epoch."""
        self.shared = True
        snapshot = (self.tid, self.clock, self.vc)
        self.advance()
        return snapshot

    def advance(self) -> None:
        """A new epoch: what instrumented code read or wrote before this release no longer
        pairs with what it does after."""
        self.clock += 1
        self.reads.clear()
        self.writes.clear()

    def acquire(self, snapshot: Snapshot) -> None:
        """Everything before ``snapshot`` now happens-before this thread's present."""
        tid, clock, others = snapshot
        if tid == self.tid:
            return  # our own earlier release: already ordered
        vc = self.vc
        if others is self.joined and vc.get(tid, 0) >= clock:
            return
        me = self.tid
        updates = [(k, v) for k, v in others.items() if v > vc.get(k, 0) and k != me]
        if vc.get(tid, 0) < clock:
            updates.append((tid, clock))
        if updates:
            if self.shared:
                vc = self.vc = dict(vc)
                self.shared = False
            vc.update(updates)
            # (a thread older than the current limit was sized by the previous one)
            if len(vc) > self.prune_at or self.prune_epoch != _limits["epoch"]:
                self._prune()
        self.joined = others

    def ordered(self, tid: int, clock: int) -> bool:
        """Whether epoch ``clock`` of thread ``tid`` happens-before this thread's present."""
        return tid == self.tid or self.vc.get(tid, 0) >= clock

    def _prune(self) -> None:
        with quiet(self):  # forgotten() takes _registry_mu
            keep = {k: v for k, v in self.vc.items() if not forgotten(k)}
        self.vc = keep
        self.shared = False
        self.prune_at = len(keep) + max(64, _limits["max_exited"])
        self.prune_epoch = _limits["epoch"]


@contextlib.contextmanager
def quiet(state: ThreadState) -> Iterator[None]:
    """Hooks ignore this thread while it holds one of the detector's raw locks.

    The garbage collector may run finalizers at any allocation, on the thread that happens
    to be allocating (a gRPC channel's ``__del__`` takes a Condition); if that thread holds
    one of these non-reentrant locks, a hook inside the finalizer that takes it again would
    wait for itself forever. The finalizer's own sync events go unseen instead. The hot
    paths write the flag inline rather than through this context manager.
    """
    busy, state.busy = state.busy, True
    try:
        yield
    finally:
        state.busy = busy


class _ExitSentinel:
    """Lives in the thread-local dict; freed when the thread's state is torn down."""

    __slots__ = ("tid",)

    def __init__(self, tid: int):
        self.tid = tid

    def __del__(self) -> None:
        try:
            _exited_queue.append(self.tid)  # atomic; drained under _registry_mu later
        except Exception:  # interpreter shutdown: module globals may be gone
            pass


def current() -> ThreadState:
    """The calling thread's state, created on its first instrumented event."""
    try:
        return _local.state
    except AttributeError:
        return _new_state()


def usable() -> ThreadState | None:
    """The calling thread's state, or None while the detector itself is busy on it."""
    try:
        state = _local.state
    except AttributeError:
        state = _new_state()
    return None if state.busy else state


def _find_thread(ident: int) -> threading.Thread | None:
    # Never threading.current_thread(): for a foreign thread it builds a _DummyThread, whose
    # constructor sets an Event -> our hooks -> here again.
    thread = _active.get(ident)
    if thread is None:  # between start() and registration in _active: still in _limbo
        for candidate in list(_limbo):
            if cpython.thread_ident(candidate) == ident:
                return candidate
    return thread


def _new_state() -> ThreadState:
    ident = _thread.get_ident()
    thread = _find_thread(ident)
    state = ThreadState(next(_ids), thread, thread.name if thread else f"thread-{ident}")
    _local.state = state
    _local.exit_sentinel = _ExitSentinel(state.tid)
    state.busy = True  # see quiet()
    try:
        with _registry_mu:
            _live.add(state.tid)
            _drain_exited()
    finally:
        state.busy = False
    if thread is not None:
        fork = getattr(thread, "_labotel_fork", None)
        if fork is not None:
            state.acquire(fork)
        try:
            thread._labotel_state = state  # type: ignore[attr-defined]  # read by join()
        except Exception:  # a Thread subclass with __slots__: joins are not seen
            pass
    return state


def _drain_exited() -> None:
    limit = _limits["max_exited"]
    while _exited_queue:
        tid = _exited_queue.popleft()
        _live.discard(tid)
        _exited[tid] = None
    while len(_exited) > limit:
        _exited.popitem(last=False)


def forgotten(tid: int) -> bool:
    """A thread that exited longer ago than the ``max_exited`` most recent ones."""
    with _registry_mu:
        _drain_exited()
        return tid not in _live and tid not in _exited


def configure(max_exited: int) -> None:
    if max_exited != _limits["max_exited"]:
        _limits["max_exited"] = max_exited
        _limits["epoch"] += 1


def thread_counts() -> dict[str, int]:
    with _registry_mu:
        _drain_exited()
        return {"live_threads": len(_live), "exited_threads_remembered": len(_exited)}


def final_snapshot(thread: threading.Thread) -> Snapshot | None:
    """What a finished ``thread`` publishes to whoever joins it."""
    state = getattr(thread, "_labotel_state", None)
    if state is not None:
        return state.snapshot()
    return getattr(thread, "_labotel_fork", None)  # it never touched anything we track


class AccumulatedClock:
    """The clock of a sync object many threads release into (an Event, a queue, a token).

    Its dict is never changed in place: a release merges into a copy and swaps it in under
    one raw lock (several threads may release at once), and an acquire reads the current
    one with no lock at all. Nothing is allocated while the lock is held, so no garbage
    collection, and no application finalizer, runs under it: one that did, blocked on an
    application lock whose holder waited for this lock, stopped both threads.
    """

    __slots__ = ("vc", "__weakref__")
    _mu = fork_safe.lock()

    def __init__(self) -> None:
        self.vc: dict[int, int] = {}

    def release(self, state: ThreadState) -> None:
        busy, state.busy = state.busy, True  # see quiet(): a finalizer must not re-enter _mu
        try:
            while True:
                current = self.vc
                merged = dict(current)
                for k, v in state.vc.items():
                    if merged.get(k, 0) < v:
                        merged[k] = v
                if merged.get(state.tid, 0) < state.clock:
                    merged[state.tid] = state.clock
                with self._mu:
                    if self.vc is current:  # no other release came in between
                        self.vc = merged
                        break
        finally:
            state.busy = busy
        state.advance()

    def acquire(self, state: ThreadState) -> None:
        vc = self.vc  # a whole clock: never changed once swapped in
        if vc:
            state.acquire((0, 0, vc))


def attach(holder: Any, attribute: str = "_labotel_clock") -> AccumulatedClock:
    """The AccumulatedClock stored on ``holder`` (created on first use)."""
    clock = holder.__dict__.get(attribute)
    if clock is None:
        clock = holder.__dict__.setdefault(attribute, AccumulatedClock())
    return clock
