"""Functions named ``module.function`` (or ``module.Class.method``), as the leak checks'
ignore options take them, matched against (filename, lineno, function) frames.

A name is resolved against the modules imported when the check runs: its longest prefix
that is an imported module gives the file, its last part the function. A method is
therefore matched by its module and its own name, as creation frames only carry that.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable

Frame = tuple[str, int, str]


def _normal(path: str) -> str:
    return os.path.normcase(os.path.abspath(path))


def check_names(option: str, names: Iterable[str]) -> tuple[str, ...]:
    """``names`` as a tuple; ValueError naming ``option`` for one that is not dotted."""
    if isinstance(names, str):
        names = [names]
    result = []
    for name in names:
        if not isinstance(name, str):
            raise ValueError(f"{option}: expected 'module.function' strings, got {name!r}")
        name = name.strip()
        parts = name.split(".")
        if len(parts) < 2 or not all(part.isidentifier() for part in parts):
            raise ValueError(f"{option}: expected 'module.function' (or 'module.Class.method'),"
                             f" got {name!r}")
        result.append(name)
    return tuple(result)


class FunctionSet:
    """Which frames belong to one of ``names``; resolved once, when built."""

    def __init__(self, names: Iterable[str]):
        self.names = tuple(names)
        self._wanted: set[tuple[str, str]] = set()  # (normalised file, function)
        modules = sys.modules
        for name in self.names:
            parts = name.split(".")
            for cut in range(len(parts) - 1, 0, -1):
                module = modules.get(".".join(parts[:cut]))
                filename = getattr(module, "__file__", None)
                if isinstance(filename, str):
                    self._wanted.add((_normal(filename), parts[-1]))
                    break

    def __bool__(self) -> bool:
        return bool(self.names)

    def matches(self, frame: Frame | None) -> bool:
        if frame is None or not self._wanted:
            return False
        return (_normal(frame[0]), frame[2]) in self._wanted


class ModuleNames:
    """File -> module name, for naming frames the way the ignore options take them."""

    def __init__(self) -> None:
        self._by_file: dict[str, str] = {}
        for name, module in list(sys.modules.items()):
            filename = getattr(module, "__file__", None)
            if isinstance(filename, str) and (name != "__main__"
                                              or _normal(filename) not in self._by_file):
                self._by_file[_normal(filename)] = name

    def qualified(self, frame: Frame | None) -> str | None:
        """``module.function`` of a frame, or None when its file is no imported module."""
        if frame is None or not frame[2].isidentifier():  # <module>, <lambda>: not nameable
            return None
        module = self._by_file.get(_normal(frame[0]))
        return f"{module}.{frame[2]}" if module else None
