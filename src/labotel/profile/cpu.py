"""CPU and wall-clock profiles from a background sampler thread (the in-process backend).

Every tick (``1/profile_rate_hz`` s) the sampler reads ``sys._current_frames()``:

* CPU mode reads each thread's own CPU clock; a thread is charged one sample per
  full sampling period of CPU it used since the last tick (the remainder carries over),
  at the stack it is in now. A thread blocked in I/O or on a lock uses no CPU and gets no
  samples, which is what Go's SIGPROF-based profile shows.
* Wall mode charges every thread one sample per tick, blocked or not, weighted by the
  wall time since the previous tick.

Where a tick's time goes (measured, see README): the GIL hand-over that wakes the sampler,
then walking stacks, which grows with their depth (about 0.25 us a frame on 3.11, 0.5 us
on 3.12+). So a deep stack is not walked again from scratch: the sampler keeps the frames
it saw last time, and a new walk stops at the first frame it still holds that is a plain
function frame (not a generator or coroutine): that frame has been on the stack all along,
so its callers are the same calls, stopped at the same lines. Shallow stacks are walked
whole, which costs less than keeping track when their top frames change between ticks.
The frames are held for one tick only (a thread not charged in a tick lets go of them), so
a returned function's locals are never kept alive for longer than that.

The sampler has a CPU budget (``profile_cpu_budget``, a share of one core, measured on its
own thread's CPU clock): when a tick costs more than the budget allows at the requested
rate, it ticks less often, and the profile's ``period`` says the rate it really used.
"""

from __future__ import annotations

import _thread
import inspect
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Protocol

from labotel import fork_safe
from labotel.compat import cpython
from labotel.profile.pprof import ProfileBuilder
from labotel.runtime.thread_frames import current_frames, outward

CPU, WALL = "cpu", "wall"
_registered_threads: dict[int, threading.Thread] = cpython.THREADS_ACTIVE
_MAX_DEPTH = 256  # as ProfileBuilder.frame_stack: deeper stacks keep their innermost frames
_HOLD_DEPTH = 20  # stacks up to this deep are walked whole every time (cheaper, measured)
_SUSPENDABLE = inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR


def thread_cpu_clock(thread: threading.Thread) -> int | None:
    """The clock id of ``thread``'s CPU time, or None where the OS has none."""
    native_id = getattr(thread, "native_id", None)
    if sys.platform.startswith("linux") and native_id:
        # The kernel's per-thread clock id, built from the TID; unlike pthread_getcpuclockid
        # it fails cleanly (EINVAL) instead of touching freed memory once the thread exits.
        return (~native_id << 3) | 6
    if hasattr(time, "pthread_getcpuclockid") and thread.ident and thread.is_alive():
        try:
            return time.pthread_getcpuclockid(thread.ident)
        except OSError:
            return None
    return None


class RunningProfile(Protocol):
    """What a profile slot needs from a backend: the in-process Sampler or py-spy."""

    mode: str
    backend: str
    error: BaseException | None

    def start(self) -> None: ...

    def stop(self) -> ProfileBuilder: ...


def new_builder(mode: str, period_ns: int) -> ProfileBuilder:
    """An empty CPU or wall profile, the sample types Go's CPU profile has."""
    sample_type = ("cpu", "nanoseconds") if mode == CPU else ("wall", "nanoseconds")
    return ProfileBuilder([("samples", "count"), sample_type], sample_type, period_ns)


class _ThreadState:
    __slots__ = ("name", "native_id", "clock", "cpu_ns", "residual", "frames", "locations",
                 "index", "truncated", "top", "lasti", "stack")

    def __init__(self, name: str, native_id: int | None, clock: int | None, cpu_ns: int):
        self.name = name
        self.native_id = native_id
        self.clock = clock
        self.cpu_ns = cpu_ns
        self.residual = 0
        # The frames seen at the last walk, outermost first, their location ids, and
        # id(frame) -> position (the frames are held, so their ids stay theirs).
        self.frames: list[FrameType] = []
        self.locations: list[int] = []
        self.index: dict[int, int] = {}
        self.truncated = False
        self.top: FrameType | None = None
        self.lasti = -2
        self.stack: tuple[int, ...] = ()

    def forget_frames(self) -> None:
        """Let go of the frames (the last stack's location ids stay: how deep it was)."""
        if self.top is not None:
            self.frames, self.locations, self.index = [], [], {}
            self.truncated, self.top, self.lasti = False, None, -2


class Sampler:
    """One in-process profile in progress: a daemon thread ticking until ``stop()``."""

    backend = "in-process"

    def __init__(self, mode: str, rate_hz: int, on_failure: Callable[[], None],
                 cpu_budget: float = 0.01):
        self.mode = mode
        self.rate_hz = rate_hz
        self.cpu_budget = cpu_budget
        self.nominal_period_ns = max(1, 1_000_000_000 // rate_hz)
        self.period_ns = self.nominal_period_ns
        self.builder = new_builder(mode, self.period_ns)
        self.error: BaseException | None = None
        self.note = ""  # why this backend was chosen, when another was preferred
        self.ticks = 0
        self.own_cpu_ns = 0
        self.slowed = False
        self._on_failure = on_failure
        self._running = True
        self._threads: dict[int, _ThreadState] = {}
        self._counts: dict[tuple[str, tuple[int, ...]], list[int]] = {}
        self._thread = threading.Thread(target=self._run, name=f"labotel-{mode}-profiler",
                                        daemon=True)
        self._stop_lock = threading.Lock()
        # held until stop(): the sampler waits on it with a timeout, so stop() ends a long
        # wait at once without the sampler polling (each wake-up costs CPU: polling every
        # 50 ms took as much as the whole budget at 0.2%); a raw lock, never a hooked one
        self._wake = _thread.allocate_lock()
        self._wake.acquire()
        self._stopped = False
        self._started_ns = 0
        self._last_tick_ns = 0

    def start(self) -> None:
        # Reading every thread's clock, here and in the last tick, runs on the requesting
        # thread: counted in the profile's own CPU too (16-35 ms with 5000 threads).
        began = time.thread_time_ns()
        self._refresh_threads(at_start=True)
        self.own_cpu_ns += time.thread_time_ns() - began
        self._started_ns = time.monotonic_ns()
        self._thread.start()

    def stop(self) -> ProfileBuilder:
        """Stop ticking, wait for the thread, and hand over the samples (idempotent)."""
        with self._stop_lock:
            if not self._stopped:
                self._stopped = True
                self._running = False
                self._wake.release()
                if self._thread.ident is not None:
                    self._thread.join()
                    began = time.thread_time_ns()
                    self._last_tick()
                    self.own_cpu_ns += time.thread_time_ns() - began
                builder = self.builder
                builder.duration_ns = time.time_ns() - builder.start_ns
                samples = charged = 0
                for (name, stack), values in self._counts.items():
                    builder.add(stack, values, (("thread", name),))
                    samples += values[0]
                    charged += values[1]
                if self.slowed and samples:  # the mean period the samples were taken at
                    builder.period = round(charged / samples)
                builder.comments.append(self._describe())
                self._threads.clear()
        return self.builder

    def _last_tick(self) -> None:
        """Charge what the threads did since the sampler's last tick (maybe long, when the
        budget spaced the ticks out), from the thread that stops the profile."""
        if self.error is not None:
            return
        try:
            elapsed = time.monotonic_ns() - self._last_tick_ns
            if self.mode == CPU:
                # The last charge in requested periods, rounded rather than cut: what is
                # left over is under one period of the (maybe long) last wait.
                self.period_ns = self.nominal_period_ns
                for state in self._threads.values():
                    state.residual += self.period_ns // 2
                self._tick_cpu(elapsed)
            elif elapsed >= self.nominal_period_ns // 2:
                self._tick_wall(elapsed)
        except Exception as error:
            self.error = error
            self._on_failure()

    def _describe(self) -> str:
        seconds = max(time.monotonic_ns() - self._started_ns, 1) / 1e9
        text = (f"labotel {self.mode} profile: in-process sampler at {self.rate_hz} Hz, "
                f"its own CPU {100 * self.own_cpu_ns / 1e9 / seconds:.2f}% of one core "
                f"(budget {100 * self.cpu_budget:g}%)")
        if self.slowed:
            text += (f"; slowed to {self.ticks / seconds:.0f} Hz on average to keep to its "
                     f"budget (the period is the mean sampling interval)")
        return text + (f"; {self.note}" if self.note else "")

    # -- the sampler thread --------------------------------------------------------------
    def _run(self) -> None:
        tick = self._tick_cpu if self.mode == CPU else self._tick_wall
        nominal = self.nominal_period_ns / 1e9
        budget = self.cpu_budget
        # A token bucket of CPU seconds: the sampler earns ``budget`` per second and may
        # save up to one second's worth, so a slow tick now and then (a thread refresh, a
        # page fault) changes nothing, while steady overspending spaces the ticks out.
        allowance = credit = budget * 1.0
        thread_time = time.thread_time_ns
        next_tick = time.monotonic() + nominal
        self._last_tick_ns = time.monotonic_ns()
        refresh_at = next_tick + 1.0
        cpu_mark = thread_time()
        earned_at = time.monotonic()
        try:
            while self._running:
                delay = next_tick - time.monotonic()
                if delay > 0 and self._wake.acquire(timeout=delay):
                    break  # stop() released it
                if not self._running:
                    break  # stop() charges the last stretch
                now = time.monotonic()
                if now >= refresh_at:
                    self._refresh_threads()
                    refresh_at = now + 1.0
                now_ns = time.monotonic_ns()
                tick(now_ns - self._last_tick_ns)
                self._last_tick_ns = now_ns
                self.ticks += 1
                cpu_now, done = thread_time(), time.monotonic()
                spent, cpu_mark = cpu_now - cpu_mark, cpu_now
                self.own_cpu_ns += spent
                credit = min(allowance, credit + budget * (done - earned_at)) - spent / 1e9
                earned_at = done
                if credit < 0:  # over budget: wait until the debt is paid
                    # no cap: a tick dearer than a second's budget (a slow machine, many
                    # threads) spaces the ticks further than a second rather than overspend
                    wait = max(-credit / budget, nominal)
                    next_tick = done + wait
                    self.period_ns = round(wait * 1e9)
                    self.slowed = True
                else:
                    # After a long stall (GIL held elsewhere, suspended VM) resume the
                    # cadence instead of firing a burst of catch-up ticks.
                    next_tick = max(next_tick + nominal, now + nominal / 2)
                    self.period_ns = self.nominal_period_ns
        except Exception as error:  # reported by the endpoint; the app keeps running
            self.error = error
            self._on_failure()

    def _refresh_threads(self, at_start: bool = False) -> None:
        """Names and CPU clocks of live threads."""
        live = {thread.ident: thread for thread in threading.enumerate()}
        for ident in list(self._threads):
            if ident not in live:
                del self._threads[ident]
        for ident, thread in live.items():  # type: ignore[assignment]
            if ident is None:
                continue
            state = self._threads.get(ident)
            native_id = getattr(thread, "native_id", None)
            if state is None or state.native_id != native_id:  # new, or a reused ident
                clock = thread_cpu_clock(thread) if self.mode == CPU else None
                # A thread already running when the profile starts is charged only for
                # CPU it uses from now on; one born later is charged from its birth.
                started = self._read_clock(clock) if clock is not None and at_start else 0
                self._threads[ident] = _ThreadState(thread.name, native_id, clock, started or 0)
            else:
                state.name = thread.name

    @staticmethod
    def _read_clock(clock: int) -> int | None:
        try:
            return time.clock_gettime_ns(clock)
        except OSError:
            return None

    def _stack(self, state: _ThreadState, frame: FrameType) -> tuple[int, ...]:
        """Location ids of ``frame`` and its callers, innermost first."""
        lasti = frame.f_lasti
        if frame is state.top and lasti == state.lasti and not (
                frame.f_code.co_flags & _SUSPENDABLE):  # (a generator changes callers)
            return state.stack
        if not state.frames and len(state.stack) <= _HOLD_DEPTH:
            # A shallow stack: walking all of it costs less than keeping track of it.
            state.stack = self.builder.frame_stack(frame)
            state.top, state.lasti = frame, lasti
            return state.stack
        return self._walk_changed(state, frame, lasti)

    def _walk_changed(self, state: _ThreadState, frame: FrameType,
                      lasti: int) -> tuple[int, ...]:
        """The stack of a deep thread, walking only the frames that changed since its last
        walk: the walk stops at the first plain function frame the sampler still holds."""
        frames, index = state.frames, state.index
        fresh: list[FrameType] = []  # innermost first
        keep = 0  # how many of the held frames (outermost first) are still its callers
        beyond = False  # whether frames past the depth limit were left out
        walk = outward(frame, _MAX_DEPTH + 1)
        # Held frames cut off at the depth limit are not a stack's true bottom: walk anew.
        reuse = not state.truncated
        for walked in walk:
            if len(fresh) == _MAX_DEPTH:
                beyond = True
                break
            fresh.append(walked)
            position = index.get(id(walked)) if reuse else None
            if (position is not None and frames[position] is walked
                    and not walked.f_code.co_flags & _SUSPENDABLE):
                keep = position  # its own line may have moved: it is walked again
                break
        if keep + len(fresh) > _MAX_DEPTH:  # deeper than the limit: the innermost frames
            keep = 0
            for walked in walk:  # on from the held frame it stopped at
                if len(fresh) == _MAX_DEPTH:
                    beyond = True
                    break
                fresh.append(walked)
        state.truncated = beyond
        for held in frames[keep:]:
            del index[id(held)]
        del frames[keep:]
        locations = state.locations
        del locations[keep:]
        builder = self.builder
        by_code = builder._by_code
        for new in reversed(fresh):
            code = new.f_code
            new_lasti = new.f_lasti
            location = by_code.get((code, new_lasti))
            if location is None:
                location = builder.code_location(code, new_lasti, new.f_lineno)
            index[id(new)] = len(frames)
            frames.append(new)
            locations.append(location)
        state.stack = tuple(reversed(locations))
        if len(locations) <= _HOLD_DEPTH:  # shallow again: plain walks from now on
            state.forget_frames()
        state.top, state.lasti = frame, lasti
        return state.stack

    def _state(self, ident: int) -> _ThreadState:
        state = self._threads.get(ident)
        # A thread that is still starting has frames before threading registers it: look
        # again once it is registered, so short-lived threads are not missed.
        if state is None or (state.native_id is None and ident in _registered_threads):
            self._refresh_threads()
            state = self._threads.get(ident)
            if state is None:  # a thread not created through threading
                state = self._threads[ident] = _ThreadState(f"thread-{ident}", None, None, 0)
        return state

    def _tick_cpu(self, _elapsed_ns: int) -> None:
        own = threading.get_ident()
        period = self.period_ns
        counts = self._counts
        for ident, frame in current_frames().items():
            if ident == own:
                continue
            state = self._state(ident)
            if state.clock is None:
                continue
            cpu_ns = self._read_clock(state.clock)
            if cpu_ns is None:  # exited, or its ident now belongs to a newer thread
                del self._threads[ident]
                continue
            used = cpu_ns - state.cpu_ns + state.residual
            state.cpu_ns = cpu_ns
            if used < period:
                state.residual = max(used, 0)
                state.forget_frames()  # hold no frames of a thread that is not running
                continue
            units, state.residual = divmod(used, period)
            key = (state.name, self._stack(state, frame))
            values = counts.get(key)
            if values is None:
                counts[key] = [units, units * period]
            else:
                values[0] += units
                values[1] += units * period

    def _tick_wall(self, elapsed_ns: int) -> None:
        own = threading.get_ident()
        counts = self._counts
        for ident, frame in current_frames().items():
            if ident == own:
                continue
            state = self._state(ident)
            key = (state.name, self._stack(state, frame))
            values = counts.get(key)
            if values is None:
                counts[key] = [1, elapsed_ns]
            else:
                values[0] += 1
                values[1] += elapsed_ns


class Busy(Exception):
    """A profile of this kind is already being collected."""


class Unavailable(RuntimeError):
    """The configured backend cannot take this profile (the message says why)."""


class Backend(Protocol):
    """Starts a profile: ``(mode, rate_hz, on_failure, seconds)`` -> a running profile."""

    def __call__(self, mode: str, rate_hz: int, on_failure: Callable[[], None],
                 seconds: float | None = None) -> RunningProfile: ...


def in_process(cpu_budget: float = 0.01) -> Backend:
    """A backend that always samples from a thread of this process."""
    def start(mode: str, rate_hz: int, on_failure: Callable[[], None],
              seconds: float | None = None) -> RunningProfile:
        sampler = Sampler(mode, rate_hz, on_failure, cpu_budget)
        sampler.start()
        return sampler
    return start


class ProfileSlot:
    """At most one running profile per mode, as Go allows one CPU profile at a time."""

    def __init__(self, mode: str, backend: Backend | None = None):
        self.mode = mode
        self._backend = backend or in_process()
        self._lock = fork_safe.lock()
        self._busy = False
        self._sampler: RunningProfile | None = None
        self._finished = threading.Event()

    def begin(self, rate_hz: int, on_failure: Callable[[], None],
              seconds: float | None = None) -> RunningProfile:
        """Start a profile (raises Busy, or Unavailable from the backend)."""
        with self._lock:
            if self._busy:
                raise Busy(f"{self.mode} profiling already in use")
            self._busy = True
            self._finished = threading.Event()
        try:  # outside the lock: starting py-spy takes a moment, shutdown must not wait
            sampler = self._backend(self.mode, rate_hz, on_failure, seconds)
        except BaseException:
            with self._lock:
                self._busy = False
            raise
        with self._lock:
            self._sampler = sampler
        return sampler

    @property
    def running(self) -> RunningProfile | None:
        """The profile being taken now, once its backend has started it."""
        with self._lock:
            return self._sampler

    def wait(self, seconds: float) -> None:
        """Sleep for the profile's duration; returns early at shutdown."""
        self._finished.wait(seconds)

    def end(self, sampler: RunningProfile) -> ProfileBuilder:
        try:
            return sampler.stop()
        finally:
            with self._lock:
                if self._sampler is sampler:
                    self._sampler = None
                    self._busy = False

    def cancel(self) -> None:
        """Wake the request waiting on this slot (shutdown); it stops its sampler."""
        self._finished.set()
        with self._lock:
            sampler = self._sampler
        if sampler is not None:
            sampler.stop()

    def reset_after_fork(self) -> None:
        self._busy = False
        self._sampler = None
        self._finished = threading.Event()
