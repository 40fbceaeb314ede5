"""Python signal handlers that run inside labotel's own code.

A handler runs in the main thread at any check point of the code it interrupts, labotel's
included. That code may hold one of labotel's locks then (the loop registry's, say, as a
loop announces itself): a handler calling ``labotel.shutdown()`` there waited for ever for
a lock its own thread held, so ``shutdown()`` asks ``interrupted_own_code()`` first and, if
so, stops labotel on a thread of its own once the handler has returned. And the handler's
exception (a SIGALRM time limit's ``TimeoutError``) comes out of labotel's code: the
catch-alls that keep labotel's own failures from the application ask
``raised_by_a_handler()`` and let the application's exception through.
"""

from __future__ import annotations

import os
import signal
import threading
from types import CodeType, FrameType
from typing import Any

from labotel.compat import cpython

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def interrupted_own_code() -> bool:
    """Is the caller's caller in a signal handler that interrupted labotel's code?"""
    if threading.current_thread() is not threading.main_thread():  # handlers run only there
        return False
    handlers = _handler_codes()
    frame = cpython.getframe(2)
    while frame is not None and handlers:
        if frame.f_code in handlers:  # the handler: the frames it interrupted are below
            return _ours_among(frame.f_back)
        frame = frame.f_back
    return False


def raised_by_a_handler(error: BaseException) -> bool:
    """Did a Python signal handler raise ``error`` (one of its frames is in the traceback)?
    Asked only as labotel catches an exception, which is rare."""
    frames: list[CodeType] = []
    traceback = error.__traceback__
    while traceback is not None and len(frames) < 200:
        frames.append(traceback.tb_frame.f_code)
        traceback = traceback.tb_next
    if not frames:
        return False
    handlers = _handler_codes()
    return any(code in handlers for code in frames)


def _ours_among(frame: FrameType | None) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith(_PACKAGE):
            return True
        frame = frame.f_back
    return False


def _handler_codes() -> set[CodeType]:
    """The code objects of the Python signal handlers installed now."""
    codes = set()
    for number in signal.valid_signals():
        try:
            code = _code_of(signal.getsignal(number))
        except Exception:  # a signal this platform will not report, a hostile handler
            continue
        if code is not None:
            codes.add(code)
    return codes


def _code_of(handler: Any) -> CodeType | None:
    """A function's, a bound method's or a callable object's ``__call__`` code."""
    if handler is None or isinstance(handler, int):  # SIG_DFL, SIG_IGN, not set from Python
        return None
    function = getattr(handler, "__func__", handler)
    code = getattr(function, "__code__", None)
    if code is None:
        call = type(handler).__call__  # a Python method for a callable object
        code = getattr(getattr(call, "__func__", call), "__code__", None)
    return code if isinstance(code, CodeType) else None
