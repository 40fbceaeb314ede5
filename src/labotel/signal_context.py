"""Whether a call runs in a Python signal handler that interrupted labotel's own code.

A handler runs in the main thread at any check point of the code it interrupts, labotel's
included, and that code may hold one of labotel's locks then (the loop registry's, say, as
a loop announces itself). A handler calling ``labotel.shutdown()`` there waited for ever
for a lock its own thread held; ``shutdown()`` asks this first and, if so, stops labotel
on a thread of its own once the handler has returned.
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
