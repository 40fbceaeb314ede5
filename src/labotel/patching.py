"""Reversible monkey-patching: every component records what it replaced and undoes it."""

from __future__ import annotations

from typing import Any

_MISSING = object()


class Patcher:
    """Replace attributes and restore them, newest first, on ``undo()``."""

    def __init__(self) -> None:
        self._saved: list[tuple[Any, str, Any]] = []

    def replace(self, owner: Any, name: str, value: Any) -> Any:
        """Set ``owner.name = value`` and return the previous value."""
        original = owner.__dict__.get(name, _MISSING) if hasattr(owner, "__dict__") else _MISSING
        if original is _MISSING:
            original_value = getattr(owner, name)
        else:
            original_value = original
        self._saved.append((owner, name, original))
        setattr(owner, name, value)
        return original_value

    def undo(self) -> None:
        while self._saved:
            owner, name, original = self._saved.pop()
            if original is _MISSING:
                try:
                    delattr(owner, name)
                except AttributeError:
                    pass
            else:
                setattr(owner, name, original)

    def __bool__(self) -> bool:
        return bool(self._saved)
