"""Whose is this frame: labotel's, the standard library's, or the application's?

The one answer every report, profile and detector uses. Reports name the innermost
application line; labotel's own frames (its wrappers and hooks) are noise in them.

- *labotel*: a file of the labotel package, except the demo service (``labotel.demo``),
  which is application code that happens to ship inside the package: its lines are the
  ones its reports must name.
- *stdlib*: a file of the interpreter's standard library, or code without a file
  (``<frozen ...>``, ``<string>``).
- *installed*: a file of an installed package (site-packages). It counts as the
  application's in stacks (the app's dependencies are its code to fix or upgrade), but
  not when labotel decides whose module-level locks to adopt.
- *application*: everything else.
"""

from __future__ import annotations

import os
import site
import sysconfig
from collections.abc import Sequence
from types import FrameType

Frame = tuple[str, int, str]  # (filename, lineno, function)


def located(frame: FrameType) -> Frame:
    """Where a frame is: its file, line (the function's first line while it has none),
    and function name."""
    code = frame.f_code
    return code.co_filename, frame.f_lineno or code.co_firstlineno, code.co_name


def describe(where: Frame) -> str:
    """``file:line in function``, as stacks are shown in views and reports."""
    return f"{where[0]}:{where[1]} in {where[2]}"


def _dir(path: str) -> str:
    return os.path.join(os.path.normpath(path), "")


_PACKAGE = os.path.dirname(os.path.abspath(__file__))
LABOTEL_DIRS = tuple({_dir(_PACKAGE), _dir(os.path.realpath(_PACKAGE))})
DEMO_PACKAGE = "labotel.demo"
APPLICATION_DIRS = tuple({_dir(os.path.join(d, "demo")) for d in LABOTEL_DIRS})


def _paths(*keys: str) -> tuple[str, ...]:
    found = {path for key in keys if (path := sysconfig.get_paths().get(key))}
    return tuple(sorted({_dir(p) for p in found} | {_dir(os.path.realpath(p)) for p in found}))


def _installed_dirs() -> tuple[str, ...]:
    dirs = set(_paths("purelib", "platlib"))
    try:
        extra = [*site.getsitepackages(), site.getusersitepackages()]
    except AttributeError:  # some virtualenv builds of site lack these
        extra = []
    dirs.update(_dir(p) for p in extra if p)
    dirs.update(_dir(os.path.realpath(p)) for p in extra if p)
    return tuple(sorted(dirs))


STDLIB_DIRS = _paths("stdlib", "platstdlib")
INSTALLED_DIRS = _installed_dirs()
_THREADING = os.path.dirname(os.path.abspath(os.__file__))
# the machinery every thread start and task creation goes through
_CONCURRENCY = (os.path.join(_THREADING, "threading.py"),
                _dir(os.path.join(_THREADING, "concurrent")),
                _dir(os.path.join(_THREADING, "asyncio")))


def is_labotel(filename: str) -> bool:
    return filename.startswith(LABOTEL_DIRS) and not filename.startswith(APPLICATION_DIRS)


def is_stdlib(filename: str) -> bool:
    if filename.startswith(INSTALLED_DIRS):  # a venv's site-packages may sit in stdlib's dir
        return False
    return filename.startswith(STDLIB_DIRS) or filename.startswith("<")


def is_installed(filename: str) -> bool:
    return filename.startswith(INSTALLED_DIRS) and not is_labotel(filename) and \
        not filename.startswith(APPLICATION_DIRS)


def is_library(filename: str) -> bool:
    """labotel's or the standard library's: not a line a report should name."""
    return is_labotel(filename) or is_stdlib(filename)


def is_application(filename: str) -> bool:
    return not is_library(filename)


def is_concurrency_machinery(filename: str) -> bool:
    """threading.py, concurrent/ or asyncio/: on the stack of every start and every task."""
    return filename.startswith(_CONCURRENCY)


def application_frame(frames: Sequence[Frame]) -> int:
    """Index of the innermost application frame in ``frames`` (innermost first), else 0."""
    for index, (filename, _, _) in enumerate(frames):
        if is_application(filename):
            return index
    return 0
