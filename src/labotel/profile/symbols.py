"""Go-style names for Python functions, pseudo addresses, and the reverse lookup.

A function is named ``module.qualname`` (``myapp.orders.Service.create``), the way Go
names ``main.worker``. Frames known only by file and line (tracemalloc records no
function) are named from the file's code objects, read once (from the interpreter's .pyc
when it is current, else compiled), by the innermost ``def`` or ``class`` around the line.
A code object's address is its ``id()``; ``resolve`` maps an address handed out in a
profile back to its function for ``/debug/pprof/symbol``.
"""

from __future__ import annotations

import bisect
import importlib.util
import linecache
import marshal
import operator
import os
import struct
import sys
import weakref
from collections.abc import Callable
from types import CodeType

from labotel import fork_safe

_lock = fork_safe.lock()
_modules_by_file: dict[str, str] = {}
_modules_seen = 0
_addresses: weakref.WeakValueDictionary[int, CodeType] = weakref.WeakValueDictionary()
_line_tables: dict[str, tuple[float | None, list[tuple[int, int, str]]]] = {}
_MAX_PARSED_FILES = 2048
_line_of = operator.itemgetter(2)  # of a co_lines() entry


def module_for_file(filename: str) -> str | None:
    """The imported module whose source is ``filename`` (``__main__`` for the script)."""
    global _modules_seen
    if filename.startswith("<frozen ") and filename.endswith(">"):
        return filename[len("<frozen "):-1]
    key = os.path.normcase(filename)
    name = _modules_by_file.get(key)
    if name is None and len(sys.modules) != _modules_seen:
        with _lock:
            _modules_seen = len(sys.modules)
            for module_name, module in list(sys.modules.items()):
                path = getattr(module, "__file__", None)
                if isinstance(path, str):
                    _modules_by_file.setdefault(os.path.normcase(path), module_name)
        name = _modules_by_file.get(key)
    return name


def qualify(filename: str, qualname: str) -> str:
    module = module_for_file(filename)
    return f"{module}.{qualname}" if module else qualname


def code_name(code: CodeType) -> str:
    return qualify(code.co_filename, qualname(code))


def qualname(code: CodeType) -> str:
    """``Class.method`` of a code object (3.10 has no ``co_qualname``: read the source)."""
    name = getattr(code, "co_qualname", None)
    return name if name is not None else _source_qualname(code)


def _source_qualname(code: CodeType) -> str:
    """``Class.method`` for a 3.10 code object, from the ``def`` it starts at."""
    name = code.co_name
    ranges = _definitions(code.co_filename) if name != "<module>" else None
    if not ranges:
        return name
    line = code.co_firstlineno
    if name.startswith("<"):  # a lambda or comprehension: in the def around it
        around = [r for r in ranges if r[0] <= line <= r[1]]
        return f"{max(around)[2]}.<locals>.{name}" if around else name
    for start, _, qualname in ranges:
        if start == line and qualname.rpartition(".")[2] == name:
            return qualname
    return name


def code_address(code: CodeType) -> int:
    """The pseudo entry address of ``code`` (remembered for ``resolve``)."""
    address = id(code)
    if address not in _addresses:
        with _lock:
            _addresses[address] = code
    return address


def resolve(address: int) -> str | None:
    """``module.qualname`` of the code object whose bytecode spans ``address``."""
    return resolver()(address)


def resolver() -> Callable[[int], str | None]:
    """``resolve`` over one sorted snapshot of the known addresses: sort once, then each
    lookup is a binary search (a /symbol request with 10,000 addresses sorts once)."""
    with _lock:  # a sampler thread may be adding addresses meanwhile
        starts = sorted(_addresses.keys())

    def lookup(address: int) -> str | None:
        position = bisect.bisect_right(starts, address) - 1
        if position < 0:
            return None
        code = _addresses.get(starts[position])
        if code is None or address >= starts[position] + max(len(code.co_code), 1):
            return None
        return code_name(code)

    return lookup


def line_function(filename: str, lineno: int) -> tuple[str, int]:
    """(qualified name, first line) of the innermost function around ``filename:lineno``.

    Module-level code is ``<module>``; an unreadable file gives ``?``.
    """
    ranges = _definitions(filename)
    if ranges is None:
        return "?", 0
    best: tuple[int, int, str] | None = None
    for start, end, qualname in ranges:
        if start <= lineno <= end and (best is None or start >= best[0]):
            best = (start, end, qualname)
    if best is None:
        return qualify(filename, "<module>"), 1
    return qualify(filename, best[2]), best[0]


def _source_file(filename: str) -> str:
    """Frozen stdlib modules (``<frozen abc>``) still ship their source: read that."""
    if filename.startswith("<frozen ") and filename.endswith(">"):
        module = sys.modules.get(filename[len("<frozen "):-1])
        path = getattr(module, "__file__", None)
        if isinstance(path, str):
            return path
    return filename


def _definitions(filename: str) -> list[tuple[int, int, str]] | None:
    filename = _source_file(filename)
    try:
        status: os.stat_result | None = os.stat(filename)
    except OSError:
        status = None
    mtime = status.st_mtime if status is not None else None
    cached = _line_tables.get(filename)
    if cached is not None and cached[0] == mtime:
        return cached[1]
    code = _cached_bytecode(filename, status) if status is not None else None
    if code is None:
        code = _compiled(filename)
    if code is None:
        return None
    ranges: list[tuple[int, int, str]] = []
    _collect(code, ranges)
    if len(_line_tables) >= _MAX_PARSED_FILES:
        _line_tables.clear()
    _line_tables[filename] = (mtime, ranges)
    return ranges


def _cached_bytecode(filename: str, status: os.stat_result) -> CodeType | None:
    """The code the interpreter cached for ``filename`` when that .pyc is of this very
    source (the mtime and size its header records). Reading it instead of compiling
    matters under tracemalloc (heap profiling): compiling a big module there took tens of
    milliseconds with the GIL held, and parsing it (what labotel did before) about four
    times that (28 files: 1.6 s compiled, 6.8 s parsed)."""
    try:
        with open(importlib.util.cache_from_source(filename), "rb") as file:
            data = file.read()
    except (OSError, ValueError, NotImplementedError):
        return None
    if len(data) < 16 or data[:4] != importlib.util.MAGIC_NUMBER:
        return None
    flags, mtime, size = struct.unpack("<3I", data[4:16])
    if flags != 0 or mtime != int(status.st_mtime) & 0xFFFFFFFF \
            or size != status.st_size & 0xFFFFFFFF:
        return None  # hash-checked or stale: compile the source instead
    try:
        code = marshal.loads(memoryview(data)[16:])
    except (EOFError, ValueError, TypeError):
        return None
    return code if isinstance(code, CodeType) else None


def _compiled(filename: str) -> CodeType | None:
    source = "".join(linecache.getlines(filename))
    if not source:
        return None
    try:
        return compile(source, filename, "exec", dont_inherit=True)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def _collect(code: CodeType, out: list[tuple[int, int, str]]) -> int:
    """Appends (first line, last line, qualname) of every def and class inside ``code``,
    outer before inner; returns the last line ``code`` and the code nested in it span.
    Lambdas and comprehensions are left out: their lines belong to the def around them."""
    # itemgetter, not a generator: under tracemalloc this is the costly step
    last = max(filter(None, map(_line_of, code.co_lines())), default=code.co_firstlineno)
    for const in code.co_consts:
        if isinstance(const, CodeType):
            if const.co_name.startswith("<"):
                last = max(last, _collect(const, out))
                continue
            at = len(out)
            out.append((const.co_firstlineno, const.co_firstlineno, const.co_qualname))
            inner_last = _collect(const, out)
            out[at] = (const.co_firstlineno, inner_last, const.co_qualname)
            last = max(last, inner_last)
    return last
