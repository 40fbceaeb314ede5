"""Which frame of a stack is the application's: the innermost one outside the standard
library and labotel. Reports name that line; the frames around it stay in the stack."""

from __future__ import annotations

import os
import sysconfig
from collections.abc import Sequence

from labotel.runtime.origins import APPLICATION_DIRS

_LIBRARY_DIRS = tuple(sorted({
    os.path.normpath(path) + os.sep
    for key in ("stdlib", "platstdlib")
    if (path := sysconfig.get_paths().get(key))
} | {os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep}))


def is_library(filename: str) -> bool:
    if filename.startswith(APPLICATION_DIRS):
        return False
    return filename.startswith(_LIBRARY_DIRS) or filename.startswith("<")


def application_frame(frames: Sequence[tuple[str, int, str]]) -> int:
    """Index of the innermost application frame in ``frames`` (innermost first), else 0."""
    for index, (filename, _, _) in enumerate(frames):
        if not is_library(filename):
            return index
    return 0
