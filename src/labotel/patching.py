"""Reversible monkey-patching: every component records what it replaced and undoes it."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)
_MISSING = object()


class Patcher:
    """Replace attributes and restore them, newest first, on ``undo()``.

    ``undo`` restores a value only while it is still the one we set: if someone else
    (another instrumentation, the application) replaced it since, theirs stays, and
    ``undo`` returns its name for the caller to log with ``say_left_in_place`` once it
    holds no lock of labotel's (a logging handler is the application's code: one that
    started an event loop under the loop registry's lock hung the shutdown). Ours then
    stays reachable inside theirs, which is why every labotel patch does nothing once its
    subscriber is gone.
    """

    def __init__(self) -> None:
        self._saved: list[tuple[Any, str, Any]] = []  # (owner, name, original or _MISSING)
        self._ours: list[Any] = []  # the value we set, one per entry of _saved

    def replace(self, owner: Any, name: str, value: Any) -> Any:
        """Set ``owner.name = value`` and return the previous value."""
        original = owner.__dict__.get(name, _MISSING) if hasattr(owner, "__dict__") else _MISSING
        if original is _MISSING:
            original_value = getattr(owner, name)
        else:
            original_value = original
        self._saved.append((owner, name, original))
        self._ours.append(value)
        setattr(owner, name, value)
        return original_value

    def undo(self) -> list[str]:
        """Restore every value replaced; returns the names left in place (someone else's
        replacement is there now)."""
        left: list[str] = []
        while self._saved:
            owner, name, original = self._saved.pop()
            ours = self._ours.pop()
            now = owner.__dict__.get(name, _MISSING) if hasattr(owner, "__dict__") else \
                getattr(owner, name, _MISSING)
            if now is not ours:
                left.append(f"{_label(owner)}.{name}")
                continue
            if original is _MISSING:
                try:
                    delattr(owner, name)
                except AttributeError:
                    pass
            else:
                setattr(owner, name, original)
        return left

    def holds(self, owner: Any, name: str) -> bool:
        """Whether ``owner.name`` is one of ours to undo."""
        return any(saved is owner and saved_name == name
                   for saved, saved_name, _ in self._saved)

    def __bool__(self) -> bool:
        return bool(self._saved)


def say_left_in_place(left: list[str]) -> None:
    """Log what ``Patcher.undo`` left in place (call it holding no lock of labotel's)."""
    for name in left:
        log.warning("labotel: %s was replaced by someone else after labotel patched it; "
                    "leaving theirs in place", name)


def _label(owner: Any) -> str:
    if isinstance(owner, type):
        return f"{owner.__module__}.{owner.__qualname__}"
    return getattr(owner, "__name__", type(owner).__name__)
