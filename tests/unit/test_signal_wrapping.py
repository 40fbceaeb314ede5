"""Python signal handlers are wrapped while labotel's lock hooks are in (so a handler's
exception at the start of an instrumented lock's ``__exit__`` lets the lock go); the
application still sees its own handlers everywhere it can look."""

from __future__ import annotations

import asyncio
import signal
import threading

import labotel
from tests.unit.test_contention import start


def _own(signum: int, frame: object) -> None:
    pass


def _other(signum: int, frame: object) -> None:
    pass


def test_the_application_sees_its_own_handlers_and_gets_them_back():
    labotel.shutdown()
    real_getsignal = signal.getsignal
    before = signal.signal(signal.SIGUSR1, _own)
    try:
        start()
        try:
            assert signal.getsignal is not real_getsignal  # the hooks are in
            assert real_getsignal(signal.SIGUSR1) is not _own  # wrapped in place...
            assert signal.getsignal(signal.SIGUSR1) is _own  # ...and shown as its own
            assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
            assert signal.signal(signal.SIGUSR1, _other) is _own
            assert signal.getsignal(signal.SIGUSR1) is _other
        finally:
            labotel.shutdown()
        assert signal.getsignal is real_getsignal
        assert signal.getsignal(signal.SIGUSR1) is _other  # the very handler, unwrapped
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGUSR1, before)


def test_a_wrapped_handler_runs_and_its_exception_reaches_the_application():
    labotel.shutdown()
    calls: list = []

    class Stop(Exception):
        pass

    def handler(signum: int, frame: object) -> None:
        calls.append(signum)
        raise Stop

    before = signal.signal(signal.SIGUSR1, handler)
    start()
    try:
        lock = threading.Lock()
        try:
            with lock:
                signal.raise_signal(signal.SIGUSR1)
        except Stop:
            pass
        assert calls == [signal.SIGUSR1]
        assert not lock.locked()
    finally:
        labotel.shutdown()
        signal.signal(signal.SIGUSR1, before)


def test_asyncio_run_installs_and_takes_back_its_ctrl_c_handler_as_without_labotel():
    """asyncio.Runner puts its own SIGINT handler in only if ``getsignal(SIGINT)`` is the
    default one, and restores that on its way out."""
    labotel.shutdown()
    start()
    try:
        seen: list = []

        async def main() -> None:
            seen.append(signal.getsignal(signal.SIGINT))

        asyncio.run(main())
        assert seen and seen[0] is not signal.default_int_handler  # asyncio's own
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        labotel.shutdown()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
