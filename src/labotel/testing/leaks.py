"""Find threads and asyncio tasks that a piece of code started and left running: the
library behind ``pytest --leaks``, usable from any runner (goleak's ``Find``,
``VerifyNone`` and ``IgnoreCurrent``, for Python).

Live threads and unfinished tasks are grouped by the line that created them, as the leak
detector groups them (``runtime.origins`` records that line from ``install()`` on); each
group says how many members it has, where they were created and where they are now.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import os
import sys
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from labotel import frames as whose
from labotel.compat import cpython
from labotel.runtime import loops, origins
from labotel.runtime.thread_frames import current_frames, outward
from labotel.testing.functions import Frame, FunctionSet, ModuleNames, check_names

DEFAULT_GRACE = 1.0  # seconds a check keeps retrying before members count as leaked
FIRST_PAUSE = 0.001  # retries back off from 1 ms, doubling, to at most MAX_PAUSE
MAX_PAUSE = 0.05
STACK_FRAMES = 12
HOLDER = "labotel.testing"
_THREADING_FILE = threading.__file__
# Test runners: a creation stack is cut where the runner's frames begin (they are the same
# for every test and say nothing about the leak).
RUNNER_MODULES = ("_pytest", "pluggy", "unittest")


def install() -> None:
    """Record where threads and tasks are created from now on (until ``uninstall()``).

    Creation sites need it, and so do tasks on loops other than the caller's (they are
    found through the creation hook). ``pytest --leaks`` installs it at session start;
    ``ignore_current()`` and ``no_leaks()`` install it for you.
    """
    origins.install(HOLDER, every_loop=True)


def uninstall() -> None:
    origins.uninstall(HOLDER)


class Baseline:
    """Threads and tasks that lived when it was taken (``ignore_current()``): never leaks."""

    def __init__(self, members: Iterable[Any] = ()):
        self._members: weakref.WeakSet[Any] = weakref.WeakSet(members)

    def __contains__(self, member: Any) -> bool:
        return member in self._members

    def __len__(self) -> int:
        return len(self._members)

    def add(self, member: Any) -> None:
        self._members.add(member)

    def add_new_since(self, earlier: Baseline) -> int:
        """Add what lives now and was not in ``earlier``; returns how many were added."""
        added = 0
        for member in _live_members():
            if member not in earlier and member not in self._members:
                self._members.add(member)
                added += 1
        return added


def ignore_current() -> Baseline:
    """What lives now, to pass as ``baseline``: goleak's ``IgnoreCurrent()``."""
    install()
    return Baseline(_live_members())


@dataclasses.dataclass(frozen=True)
class LeakGroup:
    """Live threads (or tasks) created at the same line."""

    kind: str  # "thread" or "task"
    site: str  # file:line of the creation, or "unknown" (created before install())
    created_at: tuple[Frame, ...]  # the creation stack, innermost first
    count: int
    stack: tuple[Frame, ...]  # where most of them are now, innermost first
    at_stack: int  # members at that stack
    names: tuple[str, ...]  # thread or task names
    created_by: str | None  # module.function that created them (for ignore options)
    top: str | None  # module.function they sit in (for ignore options)
    members: tuple[Any, ...] = dataclasses.field(repr=False, compare=False)

    def describe(self) -> str:
        noun = self.kind if self.count == 1 else f"{self.kind}s"
        verb = "is" if self.count == 1 else "are"
        state = "running" if self.kind == "thread" else "pending"
        created_in = f" (in {self.created_at[0][2]})" if self.created_at else ""
        lines = [f"{self.count} {noun} created at {self.site}{created_in} {verb} still "
                 f"{state}:"]
        if self.stack:
            lines.append(f"  {self.at_stack} of {self.count} {verb if self.at_stack != 1 else 'is'}"
                         f" at:")
            lines += [f"    {fn} ({f}:{ln})" for f, ln, fn in self.stack]
        lines.append("  Created at:")
        lines += [f"    {fn} ({f}:{ln})" for f, ln, fn in self.created_at] or [
            "    unknown (created before labotel.testing.install())"]
        shown = ", ".join(self.names[:5]) + (f", ... ({len(self.names) - 5} more)"
                                             if len(self.names) > 5 else "")
        lines.append(f"  Names: {shown}")
        functions = [f"created by {self.created_by}" if self.created_by else "",
                     f"top {self.top}" if self.top else ""]
        if any(functions):
            lines.append("  Functions: " + ", ".join(f for f in functions if f))
        return "\n".join(lines)


def format_leaks(groups: list[LeakGroup]) -> str:
    """The report: a headline with the totals, then each group."""
    threads = sum(g.count for g in groups if g.kind == "thread")
    tasks = sum(g.count for g in groups if g.kind == "task")
    parts = [f"{n} leaked {kind}{'' if n == 1 else 's'}"
             for n, kind in ((threads, "thread"), (tasks, "task")) if n]
    return "\n\n".join([" and ".join(parts) + ":"] + [g.describe() for g in groups])


class Ignore:
    """The ignore options of one check, resolved against the modules imported now."""

    def __init__(self, ignore: Iterable[str] = (), ignore_top: Iterable[str] = (),
                 ignore_created_by: Iterable[str] = (), ignore_any: Iterable[str] = ()):
        either = check_names("ignore", ignore)
        self.top = FunctionSet(either + check_names("ignore_top", ignore_top))
        self.created_by = FunctionSet(either + check_names("ignore_created_by",
                                                           ignore_created_by))
        self.any = FunctionSet(check_names("ignore_any", ignore_any))

    def __bool__(self) -> bool:
        return bool(self.top or self.created_by or self.any)

    def matches(self, origin: tuple[Frame, ...], stack: tuple[Frame, ...]) -> bool:
        if self.created_by and origin and self.created_by.matches(origin[0]):
            return True
        if self.top and self.top.matches(top_frame(stack)):
            return True
        return bool(self.any) and any(self.any.matches(frame) for frame in stack)


def top_frame(stack: tuple[Frame, ...]) -> Frame | None:
    """The innermost frame outside threading/asyncio/concurrent.futures (else the first):
    the code that waits, not the primitive every waiting member sits in."""
    for frame in stack:
        if not origins.is_machinery(frame[0]):
            return frame
    return stack[0] if stack else None


def find_leaks(baseline: Baseline | None = None, *, grace: float = 0.0,
               ignore: Iterable[str] = (), ignore_top: Iterable[str] = (),
               ignore_created_by: Iterable[str] = (),
               ignore_any: Iterable[str] = ()) -> list[LeakGroup]:
    """Live threads and unfinished tasks, grouped by creation line, biggest group first.

    Left out: the main and the calling thread, the calling task, labotel's own threads,
    what is in ``baseline``, and members matching an ignore option (each a list of
    ``module.function`` names): ``ignore_top`` (the function a member sits in now, passing
    over threading/asyncio frames), ``ignore_created_by`` (the function that started the
    thread or created the task), ``ignore_any`` (any function on its current stack);
    ``ignore`` is ``ignore_top`` or ``ignore_created_by``. With ``grace``, it looks again
    (after 1 ms, then twice as long each time, at most 50 ms) until nothing is left or
    ``grace`` seconds have passed, so members that are finishing are not reported.
    """
    rules = Ignore(ignore, ignore_top, ignore_created_by, ignore_any)
    groups = _groups(_candidates(baseline), rules)
    for pause in _pauses(grace):
        if not groups:
            break
        time.sleep(pause)
        groups = _groups(_candidates(baseline), rules)
    return groups


def verify_no_leaks(baseline: Baseline | None = None, *, grace: float = DEFAULT_GRACE,
                    ignore: Iterable[str] = (), ignore_top: Iterable[str] = (),
                    ignore_created_by: Iterable[str] = (),
                    ignore_any: Iterable[str] = ()) -> None:
    """Raise ``AssertionError`` with the report if ``find_leaks`` still finds something
    after retrying for ``grace`` seconds (members that are finishing get the time to).

    It sleeps between retries: inside a coroutine use ``async with no_leaks()``, so the
    loop's own tasks can finish meanwhile.
    """
    groups = find_leaks(baseline, grace=grace, ignore=ignore, ignore_top=ignore_top,
                        ignore_created_by=ignore_created_by, ignore_any=ignore_any)
    if groups:
        raise AssertionError(format_leaks(groups))


async def _verify_async(baseline: Baseline, grace: float, rules: Ignore) -> None:
    groups = _groups(_candidates(baseline), rules)
    for pause in _pauses(grace):
        if not groups:
            return
        await asyncio.sleep(pause)
        groups = _groups(_candidates(baseline), rules)
    if groups:
        raise AssertionError(format_leaks(groups))


class no_leaks:  # noqa: N801 - used like a function: `with no_leaks():`, `@no_leaks()`
    """Fail (AssertionError) when the block or function leaves threads or tasks behind.

    ``with no_leaks():``, ``async with no_leaks():``, ``@no_leaks()`` on a function or a
    coroutine function. What lived on entry is ignored; the options are
    ``verify_no_leaks``'s. When the block raises, its exception goes through unchecked.
    """

    def __init__(self, *, grace: float = DEFAULT_GRACE, ignore: Iterable[str] = (),
                 ignore_top: Iterable[str] = (), ignore_created_by: Iterable[str] = (),
                 ignore_any: Iterable[str] = ()):
        if not isinstance(grace, (int, float)) or grace < 0:
            raise ValueError(f"grace: expected seconds >= 0, got {grace!r}")
        self.grace = float(grace)
        self._options = dict(ignore=tuple(ignore), ignore_top=tuple(ignore_top),
                             ignore_created_by=tuple(ignore_created_by),
                             ignore_any=tuple(ignore_any))
        Ignore(**self._options)  # bad names fail here, not at the end of the block
        self._baselines: list[Baseline] = []

    def __enter__(self) -> no_leaks:
        self._baselines.append(ignore_current())
        return self

    def __exit__(self, kind: Any, error: Any, traceback: Any) -> None:
        baseline = self._baselines.pop()
        if kind is None:
            verify_no_leaks(baseline, grace=self.grace, **self._options)

    async def __aenter__(self) -> no_leaks:
        return self.__enter__()

    async def __aexit__(self, kind: Any, error: Any, traceback: Any) -> None:
        baseline = self._baselines.pop()
        if kind is None:
            await _verify_async(baseline, self.grace, Ignore(**self._options))

    def __call__(self, function: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.iscoroutinefunction(function):
            @functools.wraps(function)
            async def checked_coroutine(*args: Any, **kwargs: Any) -> Any:
                async with self._fresh():
                    return await function(*args, **kwargs)

            return checked_coroutine

        @functools.wraps(function)
        def checked(*args: Any, **kwargs: Any) -> Any:
            with self._fresh():
                return function(*args, **kwargs)

        return checked

    def _fresh(self) -> no_leaks:
        return no_leaks(grace=self.grace, **self._options)  # one per call: reentrant


# -- finding the members -----------------------------------------------------------------
def _pauses(grace: float) -> Iterator[float]:
    deadline = time.monotonic() + grace
    pause = FIRST_PAUSE
    while (left := deadline - time.monotonic()) > 0:
        yield min(pause, left)
        pause = min(pause * 2, MAX_PAUSE)


def _current_task() -> asyncio.Task | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no loop running in this thread
        return None


def _all_tasks() -> set[asyncio.Future]:
    """Unfinished tasks we can see: recorded at creation, or on a loop running now."""
    tasks = set(origins.recorded_tasks())
    running = loops.running_loops()  # known while a monitor runs
    try:
        running.append(asyncio.get_running_loop())
    except RuntimeError:
        pass
    for loop in running:
        try:
            tasks.update(asyncio.all_tasks(loop))
        except RuntimeError:  # the loop's task set changed while it was copied
            pass
    return {t for t in tasks if not t.done() and not t.get_loop().is_closed()}


def _live_threads() -> list[threading.Thread]:
    me, main = threading.current_thread(), threading.main_thread()
    return [t for t in threading.enumerate()
            if t is not me and t is not main and not origins.is_labotel_thread(t)]


def _live_members() -> list[Any]:
    return [*threading.enumerate(), *_all_tasks()]


def _candidates(baseline: Baseline | None) -> tuple[list[threading.Thread], list[asyncio.Task]]:
    current = _current_task()
    threads = [t for t in _live_threads() if baseline is None or t not in baseline]
    tasks = [t for t in _all_tasks()
             if t is not current and (baseline is None or t not in baseline)]
    return threads, tasks  # type: ignore[return-value]


def _thread_stack(innermost: Any) -> tuple[Frame, ...]:
    """A thread's stack, innermost first, without labotel's wrappers (the race detector's
    hooks on Event.wait...) and threading's bootstrap frames."""
    frames: list[Frame] = []
    for frame in outward(innermost):  # read in small steps: it stops at STACK_FRAMES kept
        if len(frames) >= STACK_FRAMES:
            break
        where = whose.located(frame)
        filename, _, function = where
        if not ((filename == _THREADING_FILE and cpython.is_thread_bootstrap(function))
                or whose.is_labotel(filename)):
            frames.append(where)
    return tuple(frames)


def _runner_dirs() -> tuple[str, ...]:
    dirs = []
    for name in RUNNER_MODULES:
        filename = getattr(sys.modules.get(name), "__file__", None)
        if isinstance(filename, str):
            dirs.append(os.path.dirname(filename) + os.sep)
    return tuple(dirs)


def _without_runner(frames: tuple[Frame, ...], runner: tuple[str, ...]) -> tuple[Frame, ...]:
    """The creation stack up to the first frame of the test runner."""
    for index, frame in enumerate(frames):
        if index and runner and frame[0].startswith(runner):
            return frames[:index]
    return frames


def _task_stack(task: asyncio.Task) -> tuple[Frame, ...]:
    from labotel.detect.threads import task_stack

    return task_stack(task, STACK_FRAMES)


def _task_name(task: asyncio.Task) -> str:
    coro = task.get_coro()
    return f"{task.get_name()} ({getattr(coro, '__qualname__', type(coro).__name__)})"


def _groups(candidates: tuple[list[threading.Thread], list[asyncio.Task]],
            rules: Ignore) -> list[LeakGroup]:
    threads, tasks = candidates
    if not threads and not tasks:
        return []
    frames = current_frames()
    members: list[tuple[str, Any, tuple[Frame, ...], tuple[Frame, ...], str]] = []
    for thread in threads:
        frame = frames.get(thread.ident) if thread.ident is not None else None
        if frame is None and thread.ident is not None:
            continue  # no Python code running: a foreign thread's stand-in that has ended
        stack = _thread_stack(frame)
        members.append(("thread", thread, origins.thread_origin(thread) or (), stack,
                        thread.name))
    for task in tasks:
        members.append(("task", task, origins.task_origin(task) or (), _task_stack(task),
                        _task_name(task)))
    if rules:
        members = [m for m in members if not rules.matches(m[2], m[3])]
    by_site: dict[tuple[str, str], list[tuple[Any, ...]]] = {}
    for member in members:
        by_site.setdefault((member[0], origins.site(member[2] or None)), []).append(member)
    names = ModuleNames() if by_site else None
    runner = _runner_dirs()
    groups = []
    for (kind, site), group in by_site.items():
        stacks = Counter(m[3] for m in group)
        stack, at_stack = stacks.most_common(1)[0]
        origin = _without_runner(group[0][2], runner)
        groups.append(LeakGroup(
            kind=kind, site=site, created_at=origin, count=len(group), stack=stack,
            at_stack=at_stack, names=tuple(m[4] for m in group),
            created_by=names.qualified(origin[0] if origin else None),  # type: ignore[union-attr]
            top=names.qualified(top_frame(stack)),  # type: ignore[union-attr]
            members=tuple(m[1] for m in group)))
    groups.sort(key=lambda g: (g.kind != "thread", -g.count, g.site))
    return groups
