"""A costly reading, taken at most as often as its readers need and shared between them."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Generic, TypeVar

from labotel import fork_safe

T = TypeVar("T")


class SharedReading(Generic[T]):
    """``read()``'s latest result, renewed when a reader finds it older than it accepts."""

    def __init__(self, read: Callable[[], T]) -> None:
        self._read = read
        self._lock = fork_safe.lock()
        self._value: T | None = None
        self._taken = float("-inf")

    def get(self, max_age: float) -> T:
        """A reading at most ``max_age`` seconds old (0: always a new one)."""
        with self._lock:
            now = time.monotonic()
            if now - self._taken > max_age:
                self._value, self._taken = self._read(), now
            return self._value  # type: ignore[return-value]

    def forget(self) -> None:
        """Drop the reading (a forked child's figures are its own)."""
        self._value = None
        self._taken = float("-inf")
