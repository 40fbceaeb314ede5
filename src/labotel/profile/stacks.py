"""Goroutine and threadcreate views: every thread and every asyncio task with its stack.

Python has two kinds of "goroutine": threads, whose stacks come from
``sys._current_frames()``, and asyncio tasks, whose stacks are the chain of suspended
coroutines (``cr_await`` from the task's coroutine down to the awaited future). A task
that is running right now is read from its loop thread's live frames instead.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import sys
import threading
import weakref
from types import FrameType
from typing import Any

from labotel import fork_safe
from labotel.profile import symbols, text
from labotel.profile.pprof import ProfileBuilder
from labotel.runtime import aio, loops, origins
from labotel.runtime.thread_frames import current_frames, outward

_LINUX_STATES = {"R": "running", "S": "sleeping", "D": "disk wait", "T": "stopped",
                 "t": "stopped", "Z": "zombie", "I": "idle"}
# by id, each with a weak reference to tell it from a later object at the same address: a
# WeakKeyDictionary would hash the thread or task (a subclass's __hash__) under our lock
_ids: dict[int, tuple[weakref.ref, int]] = {}
_next_id = itertools.count(1)
_ids_lock = fork_safe.lock()


@dataclasses.dataclass
class Goroutine:
    """One thread or task: Go's goroutine, as the dumps show it."""

    id: int
    kind: str  # "thread" or "task"
    name: str
    state: str
    stack: tuple[int, ...]  # location ids, innermost first
    created_by: tuple[tuple[str, int, str], ...] | None
    details: tuple[str, ...] = ()

    @property
    def labels(self) -> tuple[tuple[str, str], ...]:
        return (("kind", self.kind), ("name", self.name))


def goroutine_id(obj: Any) -> int:
    """A small number that stays the same for a thread or task while it lives."""
    key = id(obj)
    ref = weakref.ref(obj, lambda _, key=key: _forget(key))  # type: ignore[misc]
    with _ids_lock:
        known = _ids.get(key)
        if known is not None and known[0]() is obj:
            return known[1]
        number = next(_next_id)
        _ids[key] = (ref, number)
        return number


def _forget(key: int) -> None:
    # a weakref callback may run in any thread, even one holding _ids_lock: no lock here,
    # and a later object at the same address keeps its own entry
    entry = _ids.get(key)
    if entry is not None and entry[0]() is None:
        _ids.pop(key, None)


def thread_state(native_id: int | None) -> str:
    """The kernel's scheduling state of a thread (Linux), else ``unknown``."""
    if not native_id or not sys.platform.startswith("linux"):
        return "unknown"
    try:
        with open(f"/proc/self/task/{native_id}/stat", "rb") as stat:
            fields = stat.read().rpartition(b")")[2].split()
    except OSError:
        return "exited"
    return _LINUX_STATES.get(fields[0].decode(), fields[0].decode()) if fields else "unknown"


def collect(builder: ProfileBuilder) -> list[Goroutine]:
    """Every live thread, then every unfinished task of every running loop."""
    frames = current_frames()
    result = []
    threads_by_ident = {t.ident: t for t in threading.enumerate()}
    for ident, frame in frames.items():
        thread = threads_by_ident.get(ident)
        name = thread.name if thread else f"thread-{ident}"
        native_id = getattr(thread, "native_id", None)
        details = [f"tid {native_id}"] if native_id else []
        if thread is not None and thread.daemon:
            details.append("daemon")
        result.append(Goroutine(
            goroutine_id(thread) if thread is not None else ident, "thread", name,
            thread_state(native_id), builder.frame_stack(frame),
            origins.thread_origin(thread) if thread is not None else None, tuple(details)))
    for loop, tasks in aio.all_tasks_by_loop().items():
        current = asyncio.current_task(loop)
        thread_id = loops.thread_of(loop)
        loop_frame = frames.get(thread_id) if thread_id is not None else None
        for task in tasks:
            state = aio.task_wait(task, current)
            result.append(Goroutine(
                goroutine_id(task), "task", task.get_name(), state,
                builder.frames_stack(task_frames(task, loop_frame if state == aio.RUNNING
                                                 else None)),
                origins.task_origin(task)))
    return result


def task_frames(task: asyncio.Task, thread_frame: FrameType | None = None) -> list[FrameType]:
    """The task's coroutine frames, innermost first.

    A suspended task is the ``cr_await`` chain; a running one is its loop thread's live
    frames down to (and including) the task's outermost coroutine frame.
    """
    chain = aio.await_chain(task)
    if thread_frame is not None and chain:
        live = []
        for frame in outward(thread_frame):
            live.append(frame)
            if frame is chain[0]:
                return live
    chain.reverse()
    return chain


def add_samples(builder: ProfileBuilder, goroutines: list[Goroutine]) -> None:
    for goroutine in goroutines:
        builder.add(goroutine.stack, [1], goroutine.labels)


def new_builder(name: str) -> ProfileBuilder:
    return ProfileBuilder([(name, "count")], (name, "count"), 1)


def threadcreate(builder: ProfileBuilder) -> None:
    """One sample per live thread at the stack that started it."""
    for thread in threading.enumerate():
        origin = origins.thread_origin(thread)
        if origin:
            stack = tuple(builder.line_location(f, line, fn) for f, line, fn in origin)
        elif thread is threading.main_thread():
            stack = (builder.line_location("", 0, "(main thread)"),)
        else:
            stack = (builder.line_location("", 0, "(started before labotel.start())"),)
        builder.add(stack, [1], (("name", thread.name),))


def count_text(name: str, builder: ProfileBuilder, label_keys: tuple[str, ...] = ()) -> str:
    """Go's ``debug=1`` count-profile text: identical stacks folded, biggest count first."""
    counts: dict[str, int] = {}
    stacks: dict[str, tuple[int, ...]] = {}
    total = 0
    for (stack, labels), values in builder.samples.items():
        locations = [builder.locations[i - 1] for i in stack]
        key = text.stack_key(locations)
        kept = {k: v for k, v in labels if k in label_keys}
        if kept:
            key += "\n# labels: {" + ", ".join(
                f"{json.dumps(k)}:{json.dumps(v)}" for k, v in sorted(kept.items())) + "}"
        counts[key] = counts.get(key, 0) + values[0]
        stacks[key] = stack
        total += values[0]
    lines = [f"{name} profile: total {total}"]
    for key in sorted(counts, key=lambda k: (-counts[k], k)):
        lines.append(f"{counts[key]} {key}")
        lines.extend(text.stack_record(builder.locations[i - 1] for i in stacks[key]))
    return text.tabwrite(lines) + "\n"


def dump_text(builder: ProfileBuilder, goroutines: list[Goroutine]) -> str:
    """Go's ``goroutine?debug=2``: one block per thread/task, like a panic's stack dump."""
    blocks = []
    for goroutine in goroutines:
        header = ", ".join([goroutine.state, f'{goroutine.kind} "{goroutine.name}"',
                            *goroutine.details])
        lines = [f"goroutine {goroutine.id} [{header}]:"]
        for location_id in goroutine.stack:
            location = builder.locations[location_id - 1]
            lines.append(f"{location.function}(...)")
            lines.append(f"\t{location.filename}:{location.line} +{location.offset:#x}")
        if goroutine.created_by:
            filename, line, function = goroutine.created_by[0]
            name, _ = symbols.line_function(filename, line)
            lines.append(f"created by {function if name == '?' else name}")
            lines.append(f"\t{filename}:{line}")
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)
