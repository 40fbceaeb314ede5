"""The import hook for ``race_instrument``: modules whose name matches a prefix are
compiled from a rewritten AST (``detect.rewrite``), the way pytest rewrites asserts.

A ``sys.meta_path`` finder asks the normal path finder for the spec and swaps in a
``SourceFileLoader`` subclass; ``__file__``, ``__spec__`` and line numbers stay those of
the source file. The instrumented bytecode is cached beside the plain one under its own
tag (``mod.cpython-312.opt-labotelraceN.pyc``), so the two never mix; the header is the
standard one (PEP 552: magic, flags, source mtime and size).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import logging
import marshal
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any

from labotel import signal_context
from labotel.detect import race_runtime
from labotel.detect.rewrite import REWRITE_VERSION, rewrite

log = logging.getLogger(__name__)
CACHE_TAG = f"labotelrace{REWRITE_VERSION}"
_warned: set[str] = set()  # one warning per module per process


def parse_prefixes(text: str | None) -> tuple[str, ...]:
    prefixes = tuple(part.strip() for part in (text or "").split(",") if part.strip())
    for prefix in prefixes:
        if not all(piece.isidentifier() for piece in prefix.split(".")):
            raise ValueError(f"race_instrument: {prefix!r} is not a module name prefix "
                             "(expected comma-separated names such as myapp,cachetools)")
    return prefixes


def matches(name: str, prefixes: Iterable[str]) -> bool:
    if name == "labotel" or name.startswith("labotel."):
        return False  # never our own code
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


class InstrumentingLoader(importlib.machinery.SourceFileLoader):
    """Compiles the rewritten AST; caches it under ``CACHE_TAG``."""

    def __init__(self, fullname: str, path: str, on_failure: Callable[[], None]):
        super().__init__(fullname, path)
        self.on_failure = on_failure

    def exec_module(self, module: Any) -> None:
        module.__dict__.update(race_runtime.FUNCTIONS)
        super().exec_module(module)

    def get_code(self, fullname: str) -> Any:
        path = self.get_filename(fullname)
        try:
            stat = os.stat(path)
            mtime, size = int(stat.st_mtime) & 0xFFFFFFFF, stat.st_size & 0xFFFFFFFF
            cached = importlib.util.cache_from_source(path, optimization=CACHE_TAG)
        except (OSError, ValueError, NotImplementedError):
            return super().get_code(fullname)  # no file to stat: plain compile
        header = (importlib.util.MAGIC_NUMBER + (0).to_bytes(4, "little")
                  + mtime.to_bytes(4, "little") + size.to_bytes(4, "little"))
        try:
            with open(cached, "rb") as file:
                data = file.read()
            if data[:16] == header:
                return marshal.loads(data[16:])
        except (OSError, ValueError, EOFError, TypeError):
            pass
        source = self.get_data(path)
        try:
            code = compile(rewrite(source, path, fullname), path, "exec", dont_inherit=True)
        except SyntaxError:
            raise  # the plain compile would fail the same way: the application's error
        except Exception as error:  # our rewrite failed: the module runs uninstrumented
            if signal_context.raised_by_a_handler(error):
                raise  # the application's own, from a signal handler run in there
            self.on_failure()
            return self.source_to_code(source, path)
        if not sys.dont_write_bytecode:
            self._write_cache(cached, header + marshal.dumps(code))
        return code

    @staticmethod
    def _write_cache(path: str, data: bytes) -> None:
        temporary = f"{path}.{os.getpid()}.tmp"
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(temporary, "wb") as file:
                file.write(data)
            os.replace(temporary, path)  # readers see the old file or the whole new one
        except OSError:
            try:
                os.unlink(temporary)
            except OSError:
                pass


class InstrumentingFinder:
    """A meta-path finder that only claims modules matching ``prefixes``."""

    def __init__(self, prefixes: tuple[str, ...], on_failure: Callable[[], None]):
        self.prefixes = prefixes
        self.on_failure = on_failure
        self.instrumented: list[str] = []

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if not matches(fullname, self.prefixes):
            return None
        try:
            spec = importlib.machinery.PathFinder.find_spec(fullname, path)
            if (spec is None or spec.origin is None
                    or type(spec.loader) is not importlib.machinery.SourceFileLoader):
                return None  # extension modules, namespace packages, zip imports: as usual
            spec.loader = InstrumentingLoader(fullname, spec.origin, self.on_failure)
            spec.cached = importlib.util.cache_from_source(spec.origin,
                                                           optimization=CACHE_TAG)
            if len(self.instrumented) < 10_000:
                self.instrumented.append(fullname)
            return spec
        except Exception as error:
            if signal_context.raised_by_a_handler(error):
                raise
            self.on_failure()
            return None

    def invalidate_caches(self) -> None:
        pass


_finder: InstrumentingFinder | None = None  # on sys.meta_path from the first install on


def install(prefixes: tuple[str, ...], on_failure: Callable[[], None]) -> InstrumentingFinder:
    """Have the finder claim ``prefixes`` (put first on ``sys.meta_path`` the first time);
    warn once about matching modules that are already imported (they run uninstrumented)."""
    global _finder
    if _finder is None:
        _finder = InstrumentingFinder((), on_failure)
        sys.meta_path.insert(0, _finder)
    _finder.on_failure = on_failure
    _finder.instrumented = []
    _finder.prefixes = prefixes  # last: it claims modules from here on
    for name in sorted(name for name in list(sys.modules) if matches(name, prefixes)):
        if name not in _warned:
            _warned.add(name)
            log.warning(
                "labotel race_instrument: module %s was imported before labotel.start(), so "
                "its code is not instrumented; start labotel before the application's "
                "imports (call labotel.start() first, or run under opentelemetry-instrument)",
                name)
    return _finder


def uninstall() -> None:
    """Claim no module from now on. The finder stays on ``sys.meta_path``: taking an entry
    out while another thread's import walks that list makes the walk skip the next finder
    (a ``ModuleNotFoundError`` in the application; see ``runtime.loop_classes``)."""
    if _finder is not None:
        _finder.prefixes = ()


def claiming() -> tuple[str, ...]:
    """The module prefixes the finder instruments now (none once uninstalled)."""
    return _finder.prefixes if _finder is not None else ()
