"""A costly reading, taken at most as often as its readers need and shared between them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class SharedReading(Generic[T]):
    """``read()``'s latest result, renewed when a reader finds it older than it accepts."""

    def __init__(self, read: Callable[[], T]) -> None:
        self._read = read
        self._lock = threading.Lock()
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
        """Drop the reading; a new lock too, as a forked child inherits a held one as held."""
        self._lock = threading.Lock()
        self._value = None
        self._taken = float("-inf")
