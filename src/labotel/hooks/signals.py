"""Python signal handlers, wrapped while labotel's locks are in use.

A handler runs at the next check point of the code it interrupts. The C lock's ``with
lock:`` has none between taking the lock and letting it go; labotel's instrumented lock is
Python, and every Python function has one at its start: a handler that raises there
(Ctrl-C's ``KeyboardInterrupt``, a SIGTERM handler's ``SystemExit``, a SIGALRM time
limit's ``TimeoutError``) left the start of ``__exit__``/``release()`` before any of its
code ran, and the lock stayed held for ever (the next acquire hung, often at exit). So
while any hook subscriber listens, every Python handler installed through
``signal.signal`` (and those installed before, when labotel starts on the main thread) is
wrapped: when it raises and the frame it interrupted is one of those methods at its very
start, the lock is let go first, as that call would have. ``signal.getsignal`` and
``signal.signal``'s return value still give the application's own handlers.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from labotel.hooks import primitives

_ORIGINAL_SIGNAL = signal.signal
_ORIGINAL_GETSIGNAL = signal.getsignal
# signal number -> (the wrapper installed, the application's handler it wraps)
_wrapped: dict[int, tuple[Callable[..., Any], Any]] = {}


def _wrap(handler: Any) -> Any:
    """``handler`` wrapped, or as given when it is not a Python-callable one (SIG_DFL...)."""
    if isinstance(handler, int) or not callable(handler):
        return handler

    def wrapper(signum: int, frame: FrameType | None) -> Any:
        try:
            return handler(signum, frame)
        except BaseException:
            primitives.let_go_of_an_interrupted_release(frame)
            raise

    return wrapper


def _unwrapped(signalnum: Any, handler: Any) -> Any:
    entry = _wrapped.get(signalnum)
    if entry is not None and handler is entry[0]:
        return entry[1]
    return handler


def _signal(signalnum: Any, handler: Any) -> Any:
    wrapper = _wrap(handler)
    previous = _ORIGINAL_SIGNAL(signalnum, wrapper)  # its errors (not the main thread...)
    previous = _unwrapped(signalnum, previous)  # the application's, before the entry moves
    if wrapper is handler:
        _wrapped.pop(signalnum, None)
    else:
        _wrapped[signalnum] = (wrapper, handler)
    return previous


def _getsignal(signalnum: Any) -> Any:
    return _unwrapped(signalnum, _ORIGINAL_GETSIGNAL(signalnum))


def install(replace: Callable[[Any, str, Any], None]) -> None:
    """(With the hooks' patches) ``signal.signal``/``getsignal`` replaced, and on the main
    thread the Python handlers installed now wrapped (elsewhere they cannot be changed)."""
    replace(signal, "signal", _signal)
    replace(signal, "getsignal", _getsignal)
    if threading.current_thread() is not threading.main_thread():
        return
    for signalnum in signal.valid_signals():
        try:
            current = _ORIGINAL_GETSIGNAL(signalnum)
            if not isinstance(current, int) and callable(current) and \
                    _unwrapped(signalnum, current) is current:
                _signal(signalnum, current)
        except (OSError, ValueError, RuntimeError):  # one this platform will not set
            continue


def uninstall() -> None:
    """(After the patches came out) on the main thread, the application's handlers put
    back in place of the wrappers; elsewhere the wrappers stay, doing no harm."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signalnum, (wrapper, handler) in list(_wrapped.items()):
        try:
            if _ORIGINAL_GETSIGNAL(signalnum) is wrapper:
                _ORIGINAL_SIGNAL(signalnum, handler)
        except (OSError, ValueError, RuntimeError):
            continue
        _wrapped.pop(signalnum, None)
