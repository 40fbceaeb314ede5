"""Noticing that the application closed labotel's file descriptors under it.

A process that daemonizes (python-daemon's ``DaemonContext``, a hand-written double fork)
closes every descriptor it did not open itself, labotel's included, and then opens its own
files and sockets, which take the same numbers. From then on a descriptor number labotel
still holds names the application's file or socket: closing it would close the
application's, polling it would steal its events, writing to it would corrupt it.

So labotel keeps one descriptor of its own as a canary (the read end of a pipe, whose
inode nobody else has) and compares it before it uses its other long-lived descriptors:
the debug server before each poll, the exporters before each export, ``shutdown()``
first. When the canary is gone, every descriptor labotel held is taken for gone too: each
owner lets go of its descriptors *without closing them* (``socket.detach()``; objects
that cannot detach are kept for ever, so their finalizers never close a number the
application now owns) and opens new ones.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from labotel import fork_safe

log = logging.getLogger(__name__)

MAX_LOSSES = 16  # losses after which labotel opens no new server or channel

_lock = fork_safe.lock()  # held only to compare and renew the canary
_canary: tuple[int, int, int] | None = None  # (fd, st_dev, st_ino)
_reactions: dict[object, Callable[[], None]] = {}
_kept: list[object] = []
losses = 0  # times the canary was found gone in this process


def watch() -> None:
    """Make the canary, once (again after a loss); nothing if no descriptor is left."""
    global _canary
    with _lock:
        if _canary is None:
            _canary = _new_canary()


def _new_canary() -> tuple[int, int, int] | None:
    try:
        reader, writer = os.pipe()
    except OSError:  # out of descriptors: no canary, labotel carries on unwatched
        return None
    os.close(writer)
    status = os.fstat(reader)
    return reader, status.st_dev, status.st_ino


def _intact(canary: tuple[int, int, int]) -> bool:
    fd, device, inode = canary
    try:
        status = os.fstat(fd)
    except OSError:  # closed
        return False
    return (status.st_dev, status.st_ino) == (device, inode)


def check() -> bool:
    """True (once per loss) if the application closed labotel's descriptors: each reaction
    registered with ``on_lost`` has then run, on this thread."""
    global _canary, losses
    canary = _canary
    if canary is None or _intact(canary):
        return False
    with _lock:
        if _canary is not canary:  # another thread found it first and reacted
            return False
        _canary = _new_canary()  # never close the old number: it is the application's now
        losses += 1
        reactions = list(_reactions.values())
    log.warning("labotel: the application closed labotel's file descriptors (as "
                "daemonizing does); labotel lets go of them without closing them and opens "
                "new ones (debug server, exporter connections)")
    for react in reactions:
        try:
            react()
        except Exception:
            log.exception("labotel: recovering from closed descriptors failed")
    return True


Identity = tuple[int, int, int]  # (fd, st_dev, st_ino)


def identity(fd: int) -> Identity | None:
    """What names the file at ``fd`` now: a socket or pipe has an inode nobody else has."""
    try:
        status = os.fstat(fd)
    except OSError:
        return None
    return fd, status.st_dev, status.st_ino


def still_ours(known: Identity | None) -> bool:
    """Whether the number still names the file it named when ``identity()`` was taken (an
    application that closed only some descriptors left labotel the rest)."""
    return known is not None and _intact(known)


def on_lost(owner: object, react: Callable[[], None]) -> None:
    _reactions[owner] = react


def forget(owner: object) -> None:
    _reactions.pop(owner, None)


def keep_forever(thing: object) -> None:
    """Keep an object whose descriptor may be the application's now and that has no way
    to let go of it: its finalizer would close that number."""
    _kept.append(thing)


def may_reopen() -> bool:
    """False after ``MAX_LOSSES``: a process that closes labotel's descriptors over and
    over is not followed for ever (each loss keeps a few objects for good)."""
    return losses <= MAX_LOSSES
