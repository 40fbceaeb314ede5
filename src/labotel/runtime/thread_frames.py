"""Other threads' frames, read without CPython 3.11's deadlock and crash.

On CPython 3.11 a frame object is made on demand (``sys._current_frames()``, ``f_back``,
``cr_frame``) and making one, or ``f_locals``' dict, can start a garbage collection. Two
things then go wrong when the frame belongs to another thread:

- *deadlock*: ``sys._current_frames()`` holds the interpreter's thread-list lock while
  it makes frame objects; freeing a ``threading.local`` in the garbage takes that lock;
- *crash*: the collection runs finalizers, that is Python code, so the GIL can pass to
  the frame's own thread, which returns from the frame (even frees its stack chunk) while
  the reader's C code still points into it: a segmentation fault, or a corrupted frame.
  Reproduced with threads returning from deep calls while another walks their
  ``f_back`` chains (``tests/chaos/test_thread_frames.py``); labotel's own CI hit it.

So on 3.11 every such read runs in one C-level sequence (no Python bytecode, so no
other thread runs) with the collector's first threshold out of reach, and the threshold,
read inside the same sequence, put back right after. 3.10 (frames are plain objects) and
3.12+ (a collection waits for the next bytecode boundary) are not affected: there the
frames are read plainly.
"""

from __future__ import annotations

import functools
import gc
import itertools
import operator
import sys
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, TypeVar

from labotel.compat import cpython

_T = TypeVar("_T")
_AFFECTED = sys.version_info[:2] == (3, 11)
_CALL = operator.methodcaller("__call__")
_READ_THRESHOLD = (gc.get_threshold,)
_OUT_OF_REACH = functools.partial(gc.set_threshold, 1 << 30)  # the first threshold only
_NOT_NONE = functools.partial(operator.is_not, None)
_BACK = itertools.repeat("f_back")
_GETATTR: Callable[[Any, Any], Any] = getattr
CHUNKS = (4, 16, 64)
"""Frames ``outward`` reads per C-level step on 3.11, then 64 at a time: its walks mostly
stop within a few frames (the profiler's, at the first frame it holds from its last tick),
and a step costs about 1.5 us besides its frames."""


def held_off(call: Callable[[], _T]) -> _T:
    """``call()`` (C code only: a builtin, a ``partial`` of one) with no collection able to
    start inside it on CPython 3.11."""
    if not _AFFECTED:
        return call()
    saved: list[tuple[int, ...]] = []
    # every iterator is built first; list() then runs the whole sequence in C
    steps = itertools.chain(map(saved.append, map(_CALL, _READ_THRESHOLD)),
                            map(_CALL, (_OUT_OF_REACH, call)),
                            itertools.starmap(gc.set_threshold, saved))
    try:
        return list(steps)[2]
    except BaseException:
        if saved:
            gc.set_threshold(*saved[0])
        raise


def current_frames() -> dict[int, FrameType]:
    """``sys._current_frames()``: thread ident -> innermost frame."""
    return held_off(cpython.current_frames_function())


def stack(frame: FrameType | None, limit: int | None = None) -> list[FrameType]:
    """``frame`` and its callers, innermost first (at most ``limit``), from any thread, in
    one step."""
    if not _AFFECTED:
        return list(_plain_walk(frame, limit))
    if frame is None:
        return []
    return held_off(functools.partial(list, _chain(frame, limit)))


def outward(frame: FrameType | None, limit: int | None = None) -> Iterator[FrameType]:
    """``frame`` and its callers, innermost first (at most ``limit``), from any thread, in
    steps growing from a few frames: for walks that mostly stop early."""
    if not _AFFECTED:
        yield from _plain_walk(frame, limit)
        return
    if frame is None or limit == 0:
        return
    yield frame  # given: nothing to read yet
    left = None if limit is None else limit - 1
    for size in itertools.chain(CHUNKS, itertools.repeat(CHUNKS[-1])):
        if left is not None:
            if left <= 0:
                return
            size = min(size, left)
            left -= size
        callers: list[FrameType] = held_off(functools.partial(
            list, itertools.islice(_chain(frame, size + 1), 1, None)))
        yield from callers
        if len(callers) < size:  # the stack's bottom
            return
        frame = callers[-1]


def _chain(frame: FrameType, limit: int | None) -> Iterator[FrameType]:
    """A lazy ``f_back`` chain of C iterators: nothing is read until it is consumed."""
    backs: Iterator[Any] = itertools.accumulate(itertools.chain((frame,), _BACK),
                                                _GETATTR)
    return itertools.islice(itertools.takewhile(_NOT_NONE, backs), limit)


def _plain_walk(frame: FrameType | None, limit: int | None) -> Iterator[FrameType]:
    left = -1 if limit is None else limit
    while frame is not None and left:
        yield frame
        frame = frame.f_back
        left -= 1


def attribute(obj: Any, name: str) -> Any:
    """``getattr(obj, name, None)`` for a frame or coroutine another thread may be running
    (``f_locals``, ``cr_frame``...)."""
    return held_off(functools.partial(getattr, obj, name, None))
