"""Blocked event loops: a watchdog thread finds an asyncio loop that one callback (or one
step of one task) keeps from running anything else, and reports the line it is stuck at,
taken while it is still stuck.

Every running loop gets a heartbeat probe (``runtime.aio.LoopProbe``) every half
``loop_block_threshold``; the watchdog wakes just after each one is due. When a loop's
probe is overdue, the watchdog looks at the loop thread's stack for the callback being
run (the ``Handle._run`` frame asyncio runs every callback and task step in), and looks
again every quarter threshold while it stays overdue. The same callback found again
``loop_block_threshold`` after it was first seen has held the loop at least that long:
its stack is taken there and then, and reported when the loop runs again (or after one
more second if it does not) with how long it was blocked. So a block shorter than the
threshold is never reported, and one of twice the threshold or more always is.

Each wake of the watchdog takes the GIL from the loop's thread, so it wakes no more often
than the heartbeat (20 times a second at the default threshold), and twice a second while
no loop runs.

A loop that is merely busy runs many callbacks, so the watchdog finds a different one at
each look and never reports; an idle loop runs its probe on time. What this cannot tell
apart: a loop thread that waits for the GIL another thread holds (a long C call) is
blocked all the same and is reported at the line it was stopped at. A block that was
mostly garbage collection says so; a loop thread the OS did not run at all (ready, but
given no CPU: it hardly ran and was found runnable) is not reported.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
import threading
import time
from types import CodeType, FrameType
from typing import Any

from labotel.compat import cpython
from labotel.component import Component
from labotel.context import Context
from labotel.detect.detection import Detection, Stack
from labotel.frames import application_frame
from labotel.profile import symbols
from labotel.profile.stacks import thread_state
from labotel.runtime import aio, origins
from labotel.runtime.gc import GCCollector
from labotel.runtime.thread_frames import current_frames, outward, stack

# the function asyncio runs every callback and task step in (None: the detector is off,
# said once at start). Loops that run callbacks from C (uvloop) are watched through the
# code their heartbeat was called from instead.
_HANDLE_RUN = cpython.HANDLE_RUN_CODE
STACK_FRAMES = 64
STILL_BLOCKED = 1.0  # report a block that has not ended this long after the threshold
IDLE_PERIOD = 0.5  # how often the watchdog looks for loops while none runs
Frame = tuple[str, int, str]  # (filename, lineno, function)


@dataclasses.dataclass(frozen=True)
class Taken:
    """What the watchdog read off the loop thread while it was blocked."""

    stack: tuple[Frame, ...]  # innermost first
    callback: str | None  # the function asyncio's Handle._run called
    task: dict[str, Any] | None  # name, coroutine, created_at of the task running
    thread_name: str
    thread_id: int
    threshold: float


@dataclasses.dataclass(eq=False)
class Suspect:
    """The callback a loop was found running while its probe was overdue."""

    callback: FrameType  # its Handle._run frame: the same object while the same call lasts
    first_seen: float
    last_seen: float
    gc_at_first: float | None  # seconds of garbage collection in the process until then
    native_id: int | None  # the loop thread's kernel id
    cpu_at_first: int | None  # CPU the loop's thread had used until then (ns)
    looks: int = 0
    runnable_looks: int = 0  # looks that found its thread ready to run but not running
    taken: Taken | None = None  # read at the threshold, from the live stack
    blocked_before: float = 0.0  # seconds already counted in the metrics
    reported: bool = False


class BlockedLoopDetector(Component):
    """The watchdog: reports ``loop_blocked`` detections."""

    name = "detect.loop_blocked"

    def start(self, context: Context) -> None:
        self.context = context
        self.threshold = context.settings.loop_block_threshold
        self.period = self.threshold / 2  # heartbeat
        self.slack = self.threshold / 8  # a probe this late is overdue
        self.fast = self.threshold / 4  # how often to look while a probe is overdue
        self.suspects: dict[aio.Beat, Suspect] = {}
        self.reports = 0
        self.starved = 0
        meter = context.meter
        self.blocks = meter.create_counter(
            "labotel.asyncio.loop.blocks", unit="{block}",
            description="Times one callback held an asyncio event loop for "
                        "loop_block_threshold or longer")
        self.blocked_time = meter.create_counter(
            "labotel.asyncio.loop.blocked_time", unit="s",
            description="Time asyncio event loops were held by such callbacks")
        self._loop_found = threading.Event()  # wakes an idle watchdog when a loop starts
        self._series = False
        # made after _loop_found: a loop already running calls _first_loop at once
        self.probe = aio.LoopProbe(self.period, on_loop=self._first_loop,
                                   on_error=self._failed)
        self.probe.start()
        self._start_watchdog()
        context.add_view("goroutines", self.view)

    def _start_watchdog(self) -> None:
        self._stopping = False
        self.watchdog = threading.Thread(target=self._watch, name="labotel-loop-watchdog",
                                         daemon=True)
        self.watchdog.start()

    def stop(self) -> None:
        self._stopping = True
        self._loop_found.set()
        if self.watchdog is not threading.current_thread():
            self.watchdog.join(1.0)  # it sleeps one heartbeat at most
        self.probe.stop()

    def after_fork_in_child(self) -> None:
        self.suspects = {}
        self._loop_found = threading.Event()  # the parent's may have been locked at fork
        self._start_watchdog()  # the parent's thread does not exist here

    def _failed(self) -> None:
        self.context.failed(self.name)

    def _first_loop(self, _: asyncio.AbstractEventLoop) -> None:
        self._loop_found.set()
        # The series start at 0 with the first loop (no asyncio series without a loop), so
        # the first block is an increase the alert rule sees.
        if not self._series:
            self._series = True
            self.blocks.add(0)
            self.blocked_time.add(0.0)

    # -- the watchdog thread ----------------------------------------------------------------
    def _watch(self) -> None:
        # A plain sleep, not Event.wait: waking through a Condition cost more than the look
        # itself. Without a running loop it looks twice a second (or when one starts).
        while not self._stopping:
            delay = self._next_look()
            if delay is None:
                self._loop_found.wait(IDLE_PERIOD)
                self._loop_found.clear()
            else:
                time.sleep(delay)
            if self._stopping:
                return
            try:
                self.tick()
            except Exception:
                self._failed()

    def _next_look(self) -> float | None:
        """Seconds until the next look: just after the next heartbeat is due, or a quarter
        threshold while one is overdue; None while no loop runs."""
        dues = [beat.due for beat in self.probe.beats() if _running(beat)]
        if not dues:
            return None
        if self.suspects:
            return self.fast
        return min(max(min(dues) + self.slack - time.monotonic(), self.fast), self.period)

    def tick(self) -> None:
        now = time.monotonic()
        frames: dict[int, FrameType] | None = None
        beats = self.probe.beats()
        for gone in set(self.suspects) - set(beats):  # its loop was collected
            self._ended(gone, now)
        for beat in beats:
            loop = beat.loop()
            if loop is None or not loop.is_running() or now - beat.due <= self.slack:
                self._ended(beat, now)
                continue
            if frames is None:  # only when some probe is overdue
                frames = current_frames()
            frame = frames.get(beat.thread_id)
            callback = _running_callback(frame, beat.dispatcher)
            suspect = self.suspects.get(beat)
            if callback is None or (suspect is not None and suspect.callback is not callback):
                self._ended(beat, now)
                suspect = None
            if callback is None:
                continue
            if suspect is None:
                self.suspects[beat] = Suspect(callback, now, now, self._gc_seconds(),
                                              beat.native_id, _thread_cpu(beat.native_id))
                continue
            suspect.last_seen = now
            suspect.looks += 1
            if beat.native_id and thread_state(beat.native_id) == "running":
                suspect.runnable_looks += 1
            held = now - suspect.first_seen
            if suspect.taken is None and held >= self.threshold:
                suspect.taken = self._take(loop, beat, frame, callback, held)
            if suspect.taken is not None and not suspect.reported \
                    and held >= self.threshold + STILL_BLOCKED:
                self._report(suspect, held, still=True)
        del frames  # frames of every thread: do not keep them past the tick

    def _ended(self, beat: aio.Beat, now: float) -> None:
        suspect = self.suspects.pop(beat, None)
        if suspect is None or suspect.taken is None:
            return
        # Until the loop's next heartbeat if it ran since, else the last look that saw it.
        held = max(beat.ran, suspect.last_seen) - suspect.first_seen
        if suspect.reported:
            self.blocked_time.add(max(held - suspect.blocked_before, 0.0))
        else:
            self._report(suspect, held, still=False)

    def _report(self, suspect: Suspect, held: float, still: bool) -> None:
        assert suspect.taken is not None
        if _starved(suspect, held):
            # The loop's thread was ready to run but the machine gave it no CPU: no line
            # of the application held the loop. Counted in the view, not reported.
            suspect.reported = True
            self.starved += 1
            return
        suspect.reported = True
        suspect.blocked_before = held
        self.reports += 1
        self.blocks.add(1)
        self.blocked_time.add(held)
        now_gc = self._gc_seconds()
        first_gc = suspect.gc_at_first
        in_gc = now_gc - first_gc if now_gc is not None and first_gc is not None else None
        self.context.reporter.report(blocked_loop_detection(suspect.taken, held, still, in_gc))

    def _gc_seconds(self) -> float | None:
        """Garbage-collection time of the process so far, as the GC collector measures it
        (None without it): a collection stops the loop's thread wherever it is."""
        collector = self.context.peer(GCCollector.name)
        if not isinstance(collector, GCCollector):
            return None
        return sum(collector.recorder.totals)

    def _take(self, loop: asyncio.AbstractEventLoop, beat: aio.Beat, frame: FrameType | None,
              callback: FrameType, held: float) -> Taken:
        frames = stack(frame)  # one read: on 3.11 each read of another thread costs a step
        name = _callback_name(frames, callback, inside=_dispatched_from_c(beat.dispatcher))
        return Taken(_stack(frames), name, _current_task(loop),
                     _thread_name(beat.thread_id), beat.thread_id, self.threshold)

    def view(self) -> dict[str, Any]:
        now = time.monotonic()
        return {"loop_block_detection": {
            "loop_block_threshold": self.threshold,
            "loops_watched": len(self.probe.beats()),
            "reports": self.reports,
            "not_reported_starved_of_cpu": self.starved,
            "blocked_now": [{"thread.id": beat.thread_id,
                             "seconds": round(now - suspect.first_seen, 3)}
                            for beat, suspect in list(self.suspects.items())
                            if now - suspect.first_seen >= self.threshold],
        }}


# -- reading the loop thread ------------------------------------------------------------
def _thread_cpu(native_id: int | None) -> int | None:
    """CPU time (ns) a thread has used, from the kernel's per-thread clock (Linux)."""
    if not native_id or not sys.platform.startswith("linux"):
        return None
    try:
        return time.clock_gettime_ns((~native_id << 3) | 6)  # the thread's CPU clock id
    except OSError:
        return None


def _starved(suspect: Suspect, held: float) -> bool:
    """The loop's thread hardly ran while it was seen stuck, and was found runnable at most
    looks: the machine (CPU quota, overload) stopped it, not a line of the application.
    A callback in ``time.sleep`` or a blocking call sleeps instead; a CPU-bound one runs."""
    if suspect.cpu_at_first is None or suspect.looks == 0:
        return False
    cpu = _thread_cpu(suspect.native_id)
    if cpu is None:
        return False
    return (cpu - suspect.cpu_at_first) < 0.1 * held * 1e9 \
        and suspect.runnable_looks * 2 > suspect.looks

def _running(beat: aio.Beat) -> bool:
    loop = beat.loop()
    return loop is not None and loop.is_running()


def _dispatched_from_c(dispatcher: CodeType | None) -> bool:
    """Whether the loop calls its callbacks from C (uvloop): the heartbeat's caller was not
    ``Handle._run`` but the code that started the loop."""
    return dispatcher is not None and dispatcher is not _HANDLE_RUN


def _running_callback(frame: FrameType | None,
                      dispatcher: CodeType | None = None) -> FrameType | None:
    """The frame of the callback a loop thread runs now (None when idle): asyncio's
    innermost ``Handle._run`` frame, one per callback run. A loop that calls callbacks from
    C has no such frame: there it is the frame just inside the code that started the loop
    (a task's coroutine keeps its frame from one step to the next, but the heartbeat runs
    between two steps, so two long steps are never taken for one)."""
    if not _dispatched_from_c(dispatcher):
        for caller in outward(frame):
            if caller.f_code is _HANDLE_RUN:
                return caller
        return None
    inner = None
    for caller in outward(frame):
        if caller.f_code is dispatcher:
            return inner
        inner = caller
    return None


def _stack(frames: list[FrameType]) -> tuple[Frame, ...]:
    located: list[Frame] = []
    for caller in frames[:STACK_FRAMES]:
        code = caller.f_code
        located.append((code.co_filename, caller.f_lineno or code.co_firstlineno,
                        symbols.qualname(code)))
    return tuple(located)


def _callback_name(frames: list[FrameType], callback: FrameType,
                   inside: bool = False) -> str | None:
    """The function ``Handle._run`` called: the frame just inside it (``frames`` is the
    loop thread's stack, innermost first); ``inside``: ``callback`` is that function's
    frame itself (a loop that calls callbacks from C)."""
    if inside:
        if callback not in frames:
            return None  # the stack was read after it returned
        code = callback.f_code
        return f"{symbols.qualname(code)} ({code.co_filename}:{code.co_firstlineno})"
    inner = None
    for caller in frames:
        if caller is callback:
            break
        inner = caller
    else:
        return None  # not under this callback (the stack was read after it returned)
    if inner is None:
        return None
    code = inner.f_code
    return f"{symbols.qualname(code)} ({code.co_filename}:{code.co_firstlineno})"


def _current_task(loop: asyncio.AbstractEventLoop) -> dict[str, Any] | None:
    try:
        task = asyncio.current_task(loop)
    except Exception:
        return None
    if task is None:
        return None
    coro = task.get_coro()
    origin = origins.task_origin(task)
    return {"name": task.get_name(),
            "coroutine": getattr(coro, "__qualname__", type(coro).__name__),
            "created_at": origins.site(origin) if origin else None}


def _thread_name(ident: int) -> str:
    for thread in threading.enumerate():
        if thread.ident == ident:
            return thread.name
    return f"thread-{ident}"


# -- the report ------------------------------------------------------------------------------
def blocked_loop_detection(taken: Taken, held: float, still: bool,
                           in_gc: float | None = None) -> Detection:
    """The ``loop_blocked`` detection: the line, the whole stack, what ran, how long.

    When garbage collection (in any thread) took half the time or more, the line is only
    where the loop's thread happened to be: the report says so, and all such blocks are
    one entry, not one per innocent line.
    """
    stack = taken.stack
    filename, lineno, function = stack[application_frame(stack)] if stack else ("?", 0, "?")
    site = f"{filename}:{lineno}"
    task = taken.task
    if task is not None:
        running = f"task {task['name']!r} (coroutine {task['coroutine']}" + (
            f", created at {task['created_at']})" if task["created_at"] else ")")
    else:
        running = f"callback {taken.callback}" if taken.callback else "a callback"
    how_long = f"for {held:.3f} s and is still blocked" if still else f"for {held:.3f} s"
    attributes: dict[str, Any] = {
        "code.filepath": filename, "code.lineno": lineno, "code.function": function,
        "thread.id": taken.thread_id, "thread.name": taken.thread_name,
        "labotel.loop.blocked_seconds": round(held, 3),
        "labotel.loop.still_blocked": still,
        "labotel.loop.threshold": taken.threshold,
        "labotel.loop.callback": taken.callback,
        "labotel.loop.task": task["name"] if task else None,
        "labotel.loop.task.coroutine": task["coroutine"] if task else None,
        "labotel.loop.task.created_at": task["created_at"] if task else None,
        "labotel.loop.gc_seconds": round(in_gc, 3) if in_gc is not None else None,
    }
    by_gc = in_gc is not None and in_gc >= held / 2
    if by_gc:
        how_long += f", {in_gc:.3f} s of it in garbage collection"
    trace = Stack(f"event loop thread {taken.thread_name} while blocked", stack)
    message = "\n".join([
        "EVENT LOOP BLOCKED",
        "",
        f"The asyncio event loop on thread {taken.thread_name} (id {taken.thread_id}) in pid "
        f"{os.getpid()} ran one callback {how_long} (loop_block_threshold "
        f"{taken.threshold} s); no other task or callback on that loop could run meanwhile.",
        f"Blocked at: {site} in {function}",
        f"Running: {running}",
        *(["Mostly garbage collection: the loop's thread was stopped at that line, which",
           "need not be at fault. See LabotelGCPausesLong and /admin/monitoring/gc."]
          if by_gc else []),
        "",
        "ACTION REQUIRED:",
        "1. Move the blocking call off the loop: await asyncio.to_thread(...) or "
        "loop.run_in_executor(...), or use an asyncio library for it.",
        "2. Split long CPU work into steps that await in between, or run it in a process "
        "pool.",
        "",
        "Stack of the loop thread while it was blocked:",
        trace.format(),
    ])
    return Detection(kind="loop_blocked",
                     summary=f"event loop blocked {how_long} at {site} in {function} "
                             f"({running})",
                     attributes=attributes, stacks=(trace,), message=message,
                     fingerprint=("garbage collection",) if by_gc else (site,))
