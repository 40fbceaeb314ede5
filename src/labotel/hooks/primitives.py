"""The instrumented lock classes and the calls into subscribers that every hook shares.

``threading.Lock`` and ``threading.RLock`` become ``InstrumentedLock`` /
``InstrumentedRLock`` while any subscriber listens (``patches.py``), so every lock created
then, and every Condition, Semaphore, Event, Barrier, queue and Future built on one, is
seen. An acquire first tries ``acquire(False)``. Only when that fails does it take its
stack (before blocking: the wait subscriber's work never lengthens anyone's hold of the
lock), leave a mark with the time on the lock, and time the blocking acquire. A release
looks at one attribute: if marks are there, once the lock is free it charges to its own
stack the time every waiter waited since the previous release, and moves their marks to
now (Go's mutex profile charges the unlocker; since Go 1.22 for all the waiters it kept).

Marks carry the fork ``generation`` they were made in: a releaser drops the marks a
forked child inherited from threads that do not exist there.

A signal handler that raises (Ctrl-C's ``KeyboardInterrupt``, a SIGTERM handler's
``SystemExit``) runs in the main thread at the next check point: a C lock's ``with lock:``
has none between taking the lock and entering the block, but a Python method has one
after every call it makes. Raised right after ``lock.acquire(False)`` returned, the
exception left ``__enter__`` with the lock held and no ``__exit__`` to come, and the next
acquire hung for ever. So the lock is taken through a per-lock iterator (``for got in
tries: break`` runs acquire and binds its result with no check point between), anything
that raises after it lets the lock go again, and a release lets go whatever its
bookkeeping raises. A signal pending when the acquire starts is handled before the lock is
taken. What stays is the check point at the start of ``__exit__`` (every Python function
has one): a signal that came in the block's last few instructions is raised there, before
the release. A handler that does not raise but takes the same lock is lent it there (see
_lend).
"""

from __future__ import annotations

import _thread
import functools
import itertools
import queue
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from labotel import fork_safe, own_random, signal_context
from labotel.compat import cpython, python
from labotel.hooks import active

# The subscribers again, as globals of this module: the lock methods below read them on
# every call, and a global is the cheapest read (``layer`` sets both copies together).
_edges: Any = None
_waits: Any = None
_allocate_lock = _thread.allocate_lock
_RawRLock = _thread.RLock
_waiting_lists_lock = fork_safe.lock()
_draw = own_random.generator.random  # never the application's generator
# What install() replaces, as the application may have imported them by name
# (``from threading import Lock``): adopt.py rebinds those names too.
ORIGINAL_FACTORIES = {"Lock": threading.Lock, "RLock": threading.RLock,
                      "SimpleQueue": queue.SimpleQueue}
LOCK_ACQUIRE = "threading.Lock.acquire"
LOCK_RELEASE = "threading.Lock.release"
RLOCK_ACQUIRE = "threading.RLock.acquire"
RLOCK_RELEASE = "threading.RLock.release"
SIMPLE_QUEUE_GET = "queue.SimpleQueue.get"
_ALWAYS_NONBLOCKING = itertools.repeat(False)  # shared: the tries' argument, for ever
_NOT_WAITED = [False]  # never written to: no blocking acquire was tried
# A call of a C function: a signal handler pending when an acquire starts runs after it,
# before the lock is taken. It gives the thread's ident too, which the lock records as its
# holder (``_owner``) with no call, hence no check point, after taking it (see _lend).
_check_point = _thread.get_ident


# -- calls into subscribers: never raise into the application ------------------------------
def edge_failed() -> None:
    try:
        _edges.failed()
    except Exception:
        pass


def call_waits(method: str, *args: Any) -> Any:
    """``waits.<method>(*args)``, unless this thread is inside a subscriber already."""
    waits = _waits
    local = active.local
    if waits is None or getattr(local, "busy", False):
        return None
    local.busy = True
    try:
        return getattr(waits, method)(*args)
    except Exception as error:
        if signal_context.raised_by_a_handler(error):
            raise  # the application's own, from a signal handler run in there
        try:
            waits.failed()
        except Exception:
            pass
        return None
    finally:
        local.busy = False


def kept(waits: Any, delay_ns: int) -> bool:
    """Go's block-rate rule, applied here so that a wait it skips costs no subscriber call:
    a wait of ``waits.rate_ns`` or longer is kept, a shorter one with probability
    delay / rate (the subscriber then scales it up)."""
    try:
        rate = waits.rate_ns
        return delay_ns >= rate or _draw() * rate < max(delay_ns, 1)
    except Exception as error:  # a broken subscriber: tell it, never the application
        if signal_context.raised_by_a_handler(error):
            raise
        call_waits("failed")
        return False


def timed_wait(site: str, frame: FrameType | None, function: Callable[..., Any], *args: Any,
               waited_errors: tuple[type[BaseException], ...] = ()) -> Any:
    """Call ``function(*args)``, which may block, and record how long it did.

    The stack is taken afterwards, and only for a wait the subscriber keeps. A call that
    raises is recorded only for ``waited_errors`` (a timeout that waited); other errors
    are usage errors raised before any wait.
    """
    local = active.local
    if _waits is None or getattr(local, "inside", False):  # an enclosing wait covers it
        return function(*args)
    local.inside = True
    clock = active.clock
    started = clock()
    waited = False
    try:
        result = function(*args)
        waited = True
        return result
    except waited_errors:
        waited = True
        raise
    finally:
        delay = clock() - started
        local.inside = False
        if waited and kept(_waits, delay):
            call_waits("blocked", site, frame, delay, None)


def _join(snapshot: Any) -> None:
    try:
        _edges.join(snapshot)
    except Exception as error:
        if signal_context.raised_by_a_handler(error):
            raise  # the application's own, from a signal handler run in there
        edge_failed()


def _publish(lock: InstrumentedLock) -> None:
    try:
        snapshot = _edges.publish()
        if snapshot is not None:
            lock._sync = snapshot
    except Exception as error:
        if signal_context.raised_by_a_handler(error):
            raise
        edge_failed()


# -- an application's finalizer or signal handler inside labotel's own code --------------
# labotel runs Python code while it holds an application's lock: joining the last
# releaser's clock right after the acquire, publishing this thread's clock right before the
# release, recording a contended acquire's wait, and every Python function's check point at
# the start of ``__exit__``/``release()``. Anything that allocates there can start a
# garbage collection, which runs the application's finalizers (``__del__``, weakref
# callbacks) on this thread, and a signal handler runs at any check point there. One that
# takes the same lock (a finalizer returning a connection to its pool, a handler recording
# the signal) waited for ever for its own thread, where with the C lock and a block that
# calls and allocates nothing it ran before or after the block. So the lock records its
# holder (``_owner``, with no check point after the raw acquire) and lends itself to it
# while one of the holder's outer frames is this lock's own acquire or release method: an
# acquire there gets it at once and its release gives it back (``_lent`` counts them), with
# the real lock left as it is (the application's block has not begun yet, or has ended).
# The frames are looked at only when the holder cannot take its own lock, a self-deadlock
# otherwise; the application's own block (no such frame) still cannot.
def _lend(lock: InstrumentedLock, me: int) -> bool:
    """Is thread ``me`` inside ``lock``'s methods while it holds it? Then lent (True)."""
    if lock._owner != me or not _inside_own_method(lock):
        return False
    lock._lent += 1
    return True


def _inside_own_method(lock: InstrumentedLock) -> bool:
    """Is an outer frame of this thread one of ``lock``'s acquire or release methods? The
    acquire asking (frame 2, which called _lend) is not: its caller's frame is first."""
    frame = cpython.getframe(3)
    for _ in range(_OWN_METHODS_DEPTH):
        if frame is None:
            return False
        if frame.f_code in _OWN_METHODS and frame.f_locals.get("self") is lock:
            return True
        frame = frame.f_back
    return False


def _give_back(lock: InstrumentedLock) -> bool:
    """A release of a lent acquire (True): the real lock stays with the holder."""
    if not lock._lent or lock._owner != _thread.get_ident():
        return False
    lock._lent -= 1
    return True


def _waiting_list(lock: InstrumentedLock) -> list:
    with _waiting_lists_lock:  # two first waiters must not each install their own list
        waiting = lock._waiting
        if waiting is None:
            waiting = lock._waiting = []
        return waiting


def _tries_of(lock: InstrumentedLock) -> Iterator[bool]:
    """``acquire(False)`` of the lock's raw lock, once per step (see the module's doc)."""
    tries = lock._tries = map(lock._lock.acquire, _ALWAYS_NONBLOCKING)
    return tries


def _acquire_noted(taken: list, lock: InstrumentedLock, me: int,
                   acquire: Callable[..., Any], *args: Any) -> Any:
    """``acquire(*args)``; once it took the lock, ``taken[0]`` says so and thread ``me`` is
    its holder (see _lend), both before the next check point."""
    for got in itertools.starmap(acquire, (args,)):  # noqa: B007 - bound, then used
        break
    if got:
        taken[0] = True
        lock._owner = me
    return got


def _contended(lock: InstrumentedLock, acquire: Callable[..., Any], args: tuple,
               frame: FrameType | None, site: str, inside: bool = False,
               taken: list | None = None, me: int = 0) -> Any:
    """A blocking acquire that could not take the lock at once: stack, mark, time.
    With ``taken``, ``taken[0]`` is set as the lock is taken (see the module's doc), so
    that a caller's ``except`` knows whether to let the lock go, and so is its holder,
    thread ``me``."""
    if taken is not None:
        acquire = functools.partial(_acquire_noted, taken, lock, me, acquire)
    if _waits is None:
        return acquire(*args)
    inside = inside or getattr(active.local, "inside", False)  # in a timed Condition.wait
    key = None if inside else call_waits("stack", site, frame)
    waiting = lock._waiting
    if waiting is None:
        waiting = _waiting_list(lock)
    clock = active.clock
    started = clock()
    mark = [active.generation, started]  # releasers move mark[1] on as they charge it
    waiting.append(mark)
    try:
        got = acquire(*args)
    finally:
        delay = clock() - started
        try:
            waiting.remove(mark)  # equal marks are interchangeable: any one will do
        except ValueError:  # dropped with the parent's marks after fork
            pass
    if key is not None and kept(_waits, delay):
        call_waits("block", key, delay)
    return got


def _handed_off(lock: InstrumentedLock, waiting: list, site: str) -> None:
    """The lock was released while threads waited for it: charge the releasing stack (the
    caller of the method calling this) with their waiting since the last charge. The lock
    is already free: none of this delays its next holder.

    A holder that takes the lock again and again while others wait releases it every
    microsecond or so, so a lock is charged at most once per ``waits.rate_ns``: releases in
    between let the waiting roll over to the next charge, which therefore lands on a
    holder with a probability that grows with how long it held the lock. A charge shorter
    than the rate is kept by Go's block-rate rule. A release that charges nothing costs a
    clock read.
    """
    waits = _waits
    if waits is None:
        return
    now = active.clock()
    try:
        if now - lock._charged < waits.rate_ns:
            return
    except Exception as error:  # a broken subscriber: tell it, never the application
        if signal_context.raised_by_a_handler(error):
            raise
        call_waits("failed")
        return
    lock._charged = now
    generation = active.generation
    delay = 0
    for mark in waiting:  # a list may grow or shrink under iteration: never an error
        if mark[0] != generation:  # marks of the parent's threads, in a forked child
            waiting.clear()
            return
        since, mark[1] = mark[1], now
        delay += now - since
    if delay > 0 and kept(waits, delay):
        call_waits("handed_off", site, cpython.getframe(2), delay)


class _LockClass(type):
    """From 3.13 ``threading.Lock`` is a type that code may ``isinstance``-check. While it is
    patched, a plain lock made before start() still passes and an RLock still does not,
    as with the real type; labotel's own checks use ``instrumented()`` instead."""

    def __instancecheck__(cls, obj: Any) -> bool:
        if cls is InstrumentedLock:
            return type(obj) is InstrumentedLock or type(obj) is python.PLAIN_LOCK_TYPE
        return type.__instancecheck__(cls, obj)


class InstrumentedLock(metaclass=_LockClass):
    """``threading.Lock`` that tells the subscribers about its waits and hand-offs."""

    __slots__ = ("_lock", "_sync", "_waiting", "_charged", "_tries", "_owner", "_lent",
                 "__weakref__")
    _acquire_site = LOCK_ACQUIRE
    _release_site = LOCK_RELEASE

    def __init__(self, lock: Any = None) -> None:
        self._lock: Any = _allocate_lock() if lock is None else lock
        self._sync: tuple | None = None  # the edges subscriber's: the last releaser's clock
        self._waiting: list | None = None  # [generation, since] per thread blocked on it
        self._charged = 0  # when a release last charged the waiters' waiting (clock ns)
        self._tries: Iterator[bool] | None = None  # made at the first acquire
        self._owner = 0  # the ident of the thread that took it, until it lets it go
        self._lent = 0  # acquires lent to that thread inside our methods, not given back

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        lock = self._lock
        me = _check_point()  # before the lock is taken (see _check_point)
        got, taken = False, _NOT_WAITED
        try:
            if timeout == -1 or (blocking and timeout > 0):  # acquire(False) first
                for got in self._tries or _tries_of(self):  # noqa: B007 - bound, then used
                    break
                if got:
                    self._owner = me
                elif _lend(self, me):
                    return True
                elif blocking:
                    taken = [False]
                    got = _contended(self, lock.acquire, (True, timeout), cpython.getframe(1),
                                     self._acquire_site, taken=taken, me=me)
            else:  # a timeout of 0 (never waits), or a bad argument: the raw lock's error
                taken = [False]
                got = _acquire_noted(taken, self, me, lock.acquire, blocking, timeout)
                if not got and _lend(self, me):
                    return True
            if got and _edges is not None and self._sync is not None:
                _join(self._sync)
        except BaseException:  # a signal handler's, once the lock may be ours: let it go
            if got or taken[0]:
                self._owner = 0
                lock.release()
            raise
        return got

    def __enter__(self) -> bool:
        # acquire() without its arguments: ``with lock:`` is the common case, keep it short
        lock = self._lock
        me = _check_point()
        got, taken = False, _NOT_WAITED
        try:
            for got in self._tries or _tries_of(self):  # noqa: B007 - bound, then used
                break
            if got:
                self._owner = me
            else:
                if _lend(self, me):
                    return True
                taken = [False]
                _contended(self, lock.acquire, (), cpython.getframe(1), self._acquire_site,
                           taken=taken, me=me)
            if _edges is not None and self._sync is not None:
                _join(self._sync)
        except BaseException:
            if got or taken[0]:
                self._owner = 0
                lock.release()
            raise
        return True

    def release(self) -> None:
        if self._lent and _give_back(self):
            return
        waiting = self._waiting
        try:
            if _edges is not None:
                _publish(self)
        finally:  # let go even if a signal handler's exception comes in the bookkeeping
            self._owner = 0
            self._lock.release()
        if waiting:
            _handed_off(self, waiting, self._release_site)

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> None:
        # release() inlined: one Python call less per ``with`` block
        if self._lent and _give_back(self):
            return
        waiting = self._waiting
        try:
            if _edges is not None:
                _publish(self)
        finally:
            self._owner = 0
            self._lock.release()
        if waiting:
            _handed_off(self, waiting, self._release_site)

    def _acquire_restore(self, saved: Any) -> None:
        # Condition.wait() takes the lock back with this, in a ``finally``: the block it
        # returns to lets the lock go, so what raises once the lock is ours (a Ctrl-C in the
        # join) leaves it held, as the C lock does there. acquire() let it go, and the
        # block's exit released it a second time (RuntimeError, or another thread's hold).
        me = _check_point()
        for got in self._tries or _tries_of(self):  # noqa: B007 - bound, then used
            break
        if got:
            self._owner = me
        elif not _lend(self, me):
            _contended(self, self._lock.acquire, (), cpython.getframe(1), self._acquire_site,
                       inside=True, taken=[False], me=me)
        if _edges is not None and self._sync is not None:
            _join(self._sync)

    def locked(self) -> bool:
        return self._lock.locked()

    @property
    def _is_owned(self) -> Callable[[], bool]:
        # Condition(lock) binds this once; without it, its notify() tries acquire(False) and
        # release() on us, two Python calls, where the raw lock's locked() says the same.
        return self._lock.locked

    def _at_fork_reinit(self) -> None:
        cpython.at_fork_reinit(self._lock)
        self._sync = None
        self._waiting = None
        self._owner = self._lent = 0  # a parent thread's, at the fork

    def __repr__(self) -> str:
        return f"<labotel instrumented {self._lock!r}>"


# The methods inside which the holder's own acquire is lent (see _lend). Between the
# asking acquire and such a frame sit a finalizer's or handler's frames and labotel's own
# bookkeeping, rarely more than a few dozen.
_OWN_METHODS = frozenset(method.__code__ for method in (
    InstrumentedLock.acquire, InstrumentedLock.__enter__, InstrumentedLock.release,
    InstrumentedLock.__exit__))
_OWN_METHODS_DEPTH = 64


_LETTING_GO = (InstrumentedLock.__exit__.__code__, InstrumentedLock.release.__code__)


def let_go_of_an_interrupted_release(frame: FrameType | None) -> None:
    """A signal handler raised in ``frame``: if that is an instrumented lock's
    ``__exit__``/``release()`` at its very first check point (none of its code ran), let
    the lock go as that call would have (see hooks/signals.py). Never raises."""
    try:
        if frame is None or frame.f_code not in _LETTING_GO or frame.f_lasti != 0:
            return
        interrupted: Any = frame.f_locals.get("self")
        if instrumented(interrupted):
            _let_go_of(interrupted)
    except Exception:  # the handler's exception is what the application hears of
        pass


def _let_go_of(lock: InstrumentedLock) -> None:
    if not lock._lent and lock._owner == _thread.get_ident():
        lock._owner = 0
        lock._lock.release()


class InstrumentedRLock(InstrumentedLock):
    """``threading.RLock``; Condition uses ``_release_save``/``_acquire_restore`` in wait()."""

    __slots__ = ()
    _acquire_site = RLOCK_ACQUIRE
    _release_site = RLOCK_RELEASE

    def __init__(self, lock: Any = None) -> None:
        super().__init__(_RawRLock() if lock is None else lock)

    @property
    def _is_owned(self) -> Callable[[], bool]:
        return cpython.lock_is_owned(self._lock)

    def _release_save(self) -> Any:
        if _edges is not None:
            _publish(self)
        waiting = self._waiting
        self._owner = 0
        saved = cpython.release_save(self._lock)
        if waiting:
            _handed_off(self, waiting, self._release_site)
        return saved

    def _acquire_restore(self, saved: Any) -> None:
        # Only Condition.wait() calls this, as it takes the lock back: that wait is timed
        # as a whole, so only a releaser that kept it waiting is charged (mutex profile).
        if _waits is not None:
            _contended(self, cpython.acquire_restore(self._lock), (saved,), cpython.getframe(1),
                       self._acquire_site, inside=True)
        else:
            cpython.acquire_restore(self._lock)(saved)
        if _edges is not None and self._sync is not None:
            _join(self._sync)

    def __getattr__(self, name: str) -> Any:  # _recursion_count and future additions
        return getattr(self._lock, name)


_simple_get = queue.SimpleQueue.get


def instrumented(lock: Any) -> bool:
    """One of ours (not ``isinstance``: that also accepts plain locks, see _LockClass)."""
    return type(lock) is InstrumentedLock or type(lock) is InstrumentedRLock


def raw_lock(lock: InstrumentedLock) -> Any:
    """The plain lock an instrumented one wraps."""
    return lock._lock


class InstrumentedSimpleQueue(queue.SimpleQueue):
    """``queue.SimpleQueue`` is C code: this subclass adds put -> get edges and times a
    ``get()`` that has to wait for an item."""

    __qualname__ = "SimpleQueue"

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        edges = _edges
        if edges is not None:
            try:
                edges.release_into(self, "_labotel_clock")
            except Exception as error:
                if signal_context.raised_by_a_handler(error):
                    raise
                edge_failed()
        super().put(item, block, timeout)

    def put_nowait(self, item: Any) -> None:
        self.put(item, False)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if _waits is not None and block and (timeout is None or timeout > 0) \
                and self.empty():
            item = timed_wait(SIMPLE_QUEUE_GET, cpython.getframe(1), _simple_get, self, block,
                              timeout, waited_errors=(queue.Empty,))
        else:
            item = _simple_get(self, block, timeout)
        edges = _edges
        if edges is not None:
            try:
                edges.acquire_from(self, "_labotel_clock")
            except Exception as error:
                if signal_context.raised_by_a_handler(error):
                    raise
                edge_failed()
        return item

    def get_nowait(self) -> Any:
        return self.get(False)
