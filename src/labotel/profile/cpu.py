"""CPU and wall-clock profiles from a background sampler thread.

Every tick (``1/profile_rate_hz`` s) the sampler reads ``sys._current_frames()``:

* CPU mode reads each thread's own CPU clock; a thread is charged one sample per
  full sampling period of CPU it used since the last tick (the remainder carries over),
  at the stack it is in now. A thread blocked in I/O or on a lock uses no CPU and gets no
  samples, which is what Go's SIGPROF-based profile shows.
* Wall mode charges every thread one sample per tick, blocked or not, weighted by the
  wall time since the previous tick.

Stacks are interned as tuples of location ids and counted in a dict; a thread whose
innermost frame and instruction did not move since the last tick reuses its previous
stack tuple without walking it again.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from labotel.profile.pprof import ProfileBuilder

CPU, WALL = "cpu", "wall"
_registered_threads: dict[int, threading.Thread] = getattr(threading, "_active", {})


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


class _ThreadState:
    __slots__ = ("name", "native_id", "clock", "cpu_ns", "residual", "frame", "lasti", "stack")

    def __init__(self, name: str, native_id: int | None, clock: int | None, cpu_ns: int):
        self.name = name
        self.native_id = native_id
        self.clock = clock
        self.cpu_ns = cpu_ns
        self.residual = 0
        self.frame: FrameType | None = None
        self.lasti = -2
        self.stack: tuple[int, ...] = ()


class Sampler:
    """One profile in progress: a daemon thread ticking until ``stop()``."""

    def __init__(self, mode: str, rate_hz: int, on_failure: Callable[[], None]):
        self.mode = mode
        self.period_ns = max(1, 1_000_000_000 // rate_hz)
        sample_type = ("cpu", "nanoseconds") if mode == CPU else ("wall", "nanoseconds")
        self.builder = ProfileBuilder([("samples", "count"), sample_type], sample_type,
                                      self.period_ns)
        self.error: BaseException | None = None
        self._on_failure = on_failure
        self._running = True
        self._threads: dict[int, _ThreadState] = {}
        self._counts: dict[tuple[str, tuple[int, ...]], list[int]] = {}
        self._thread = threading.Thread(target=self._run, name=f"labotel-{mode}-profiler",
                                        daemon=True)
        self._stop_lock = threading.Lock()
        self._stopped = False

    def start(self) -> None:
        self._refresh_threads(at_start=True)
        self._thread.start()

    def stop(self) -> ProfileBuilder:
        """Stop ticking, wait for the thread, and hand over the samples (idempotent)."""
        with self._stop_lock:
            if not self._stopped:
                self._stopped = True
                self._running = False
                if self._thread.ident is not None:
                    self._thread.join()
                self.builder.duration_ns = time.time_ns() - self.builder.start_ns
                for (name, stack), values in self._counts.items():
                    self.builder.add(stack, values, (("thread", name),))
        return self.builder

    # -- the sampler thread --------------------------------------------------------------
    def _run(self) -> None:
        tick = self._tick_cpu if self.mode == CPU else self._tick_wall
        period = self.period_ns / 1e9
        next_tick = time.monotonic() + period
        last_ns = time.monotonic_ns()
        refresh_at = next_tick + 1.0
        try:
            while self._running:
                delay = next_tick - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                now = time.monotonic()
                # After a long stall (GIL held elsewhere, suspended VM) resume the cadence
                # instead of firing a burst of catch-up ticks.
                next_tick = max(next_tick + period, now + period / 2)
                if now >= refresh_at:
                    self._refresh_threads()
                    refresh_at = now + 1.0
                now_ns = time.monotonic_ns()
                tick(now_ns - last_ns)
                last_ns = now_ns
        except Exception as error:  # reported by the endpoint; the app keeps running
            self.error = error
            self._on_failure()

    def _refresh_threads(self, at_start: bool = False) -> None:
        """Names and CPU clocks of live threads."""
        live = {thread.ident: thread for thread in threading.enumerate()}
        for ident in list(self._threads):
            if ident not in live:
                del self._threads[ident]
        for ident, thread in live.items():
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
        lasti = frame.f_lasti
        if frame is not state.frame or lasti != state.lasti:
            state.stack = self.builder.frame_stack(frame)
            state.frame, state.lasti = frame, lasti
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
        for ident, frame in sys._current_frames().items():
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
        for ident, frame in sys._current_frames().items():
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


class ProfileSlot:
    """At most one running sampler per mode, as Go allows one CPU profile at a time."""

    def __init__(self, mode: str):
        self.mode = mode
        self._lock = threading.Lock()
        self._sampler: Sampler | None = None
        self._finished = threading.Event()

    def begin(self, rate_hz: int, on_failure: Callable[[], None]) -> Sampler:
        with self._lock:
            if self._sampler is not None:
                raise Busy(f"{self.mode} profiling already in use")
            sampler = Sampler(self.mode, rate_hz, on_failure)
            self._finished = threading.Event()
            sampler.start()
            self._sampler = sampler
            return sampler

    def wait(self, seconds: float) -> None:
        """Sleep for the profile's duration; returns early at shutdown."""
        self._finished.wait(seconds)

    def end(self, sampler: Sampler) -> ProfileBuilder:
        try:
            return sampler.stop()
        finally:
            with self._lock:
                if self._sampler is sampler:
                    self._sampler = None

    def cancel(self) -> None:
        """Wake the request waiting on this slot (shutdown); it stops its sampler."""
        self._finished.set()
        with self._lock:
            sampler = self._sampler
        if sampler is not None:
            sampler.stop()

    def reset_after_fork(self) -> None:
        self._lock = threading.Lock()
        self._sampler = None
        self._finished = threading.Event()


def profile_for(slot: ProfileSlot, seconds: float, rate_hz: int,
                on_failure: Callable[[], None]) -> Any:
    """Run one profile of ``seconds`` in ``slot``; returns the builder (raises Busy)."""
    sampler = slot.begin(rate_hz, on_failure)
    try:
        slot.wait(seconds)
    finally:
        builder = slot.end(sampler)
    if sampler.error is not None:
        raise RuntimeError(f"the {slot.mode} sampler failed: {sampler.error!r}")
    return builder
