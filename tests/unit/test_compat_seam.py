"""Only ``labotel.compat`` touches a private name of another package.

Every module under src/labotel (except compat/) is read as an AST. An attribute access,
``getattr``/``setattr``/``hasattr``/``delattr`` with a literal name, or an import of a name
or module beginning with a single underscore fails the test unless the object is
labotel's own: ``self``/``cls``, a labotel module, a class or function defined in the same
module, or a parameter or variable annotated with one of labotel's types. Names starting
with ``_labotel`` are labotel's own marks on other objects.
"""

from __future__ import annotations

import ast
import pathlib

import labotel

PACKAGE = pathlib.Path(labotel.__file__).parent
SEAM = PACKAGE / "compat"
OWN_MARK = "_labotel"

# (module path relative to src/labotel, the expression) of accesses the scan cannot tell
# are labotel's own. Each entry says why it is.
ALLOWED: dict[tuple[str, str], str] = {
    ("profile/cpu.py", "builder._by_code"):
        "builder is self.builder, labotel's own pprof.ProfileBuilder (hot loop shortcut)",
}


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__") and not name.startswith(OWN_MARK)


def _private_literal(node: ast.expr) -> bool:
    """A string literal that names a private attribute (``"_target"``)."""
    return (isinstance(node, ast.Constant) and isinstance(node.value, str)
            and node.value.isidentifier() and _private(node.value))


# Methods that take a name as text: a private name passed to them is read by name.
NAME_TAKING_METHODS = ("get", "pop", "setdefault", "startswith", "endswith")


class _Scan(ast.NodeVisitor):
    def __init__(self, tree: ast.Module) -> None:
        self.own: set[str] = set()  # module-level names that are labotel's
        self.found: list[tuple[int, str]] = []
        self._annotated: list[set[str]] = [set()]  # per function: names typed as ours
        self._foreign_self: list[bool] = [False]
        for node in tree.body:
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                self.own.add(node.name)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "")
                                                     .split(".")[0] == "labotel"):
                self.own.update(alias.asname or alias.name for alias in node.names)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "labotel":
                        self.own.add(alias.asname or alias.name.split(".")[0])
            elif isinstance(node, ast.ClassDef):
                self.own.add(node.name)

    def _ours(self, annotation: ast.expr | None) -> bool:
        if annotation is None:
            return False
        text = ast.unparse(annotation).strip("'\"")
        return text.split("[")[0].split(".")[0].split(" ")[0] in self.own

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        arguments = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
        annotated = {a.arg for a in arguments if self._ours(a.annotation)}
        first = arguments[0] if arguments else None
        foreign_self = (first is not None and first.arg in ("self", "cls")
                        and first.annotation is not None and not self._ours(first.annotation))
        self._annotated.append(annotated)
        self._foreign_self.append(foreign_self)
        self.generic_visit(node)
        self._annotated.pop()
        self._foreign_self.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = _function

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if isinstance(node.target, ast.Name) and self._ours(node.annotation):
            self._annotated[-1].add(node.target.id)
        self.generic_visit(node)

    def _own_object(self, node: ast.expr) -> bool:
        if isinstance(node, ast.Name):
            if node.id in ("self", "cls"):
                return not self._foreign_self[-1]
            return node.id in self.own or node.id in self._annotated[-1]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            return node.func.id == "super" and not self._foreign_self[-1]
        return False

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if _private(node.attr) and not self._own_object(node.value):
            self.found.append((node.lineno, ast.unparse(node)))
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        function = node.func
        if (((isinstance(function, ast.Name)
                and function.id in ("getattr", "setattr", "hasattr", "delattr"))
                or (isinstance(function, ast.Attribute)  # object.__getattribute__(obj, name)
                    and function.attr in ("__getattribute__", "__setattr__")))
                and len(node.args) >= 2 and _private_literal(node.args[1])
                and not self._own_object(node.args[0])):
            self.found.append((node.lineno, ast.unparse(node)))
        elif (isinstance(function, ast.Attribute)
                and function.attr in NAME_TAKING_METHODS and node.args
                and _private_literal(node.args[0]) and not self._own_object(function.value)):
            # namespace.get("_target"), name.startswith("_Proxy"): a private name by text
            self.found.append((node.lineno, ast.unparse(node)))
        self.generic_visit(node)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        if _private_literal(node.slice) and not self._own_object(node.value):
            self.found.append((node.lineno, ast.unparse(node)))
        self.generic_visit(node)

    def visit_Compare(self, node: ast.Compare) -> None:
        for operand in (node.left, *node.comparators):
            members = operand.elts if isinstance(operand, (ast.Tuple, ast.List, ast.Set)) \
                else [operand]
            if any(_private_literal(member) for member in members):
                self.found.append((node.lineno, ast.unparse(node)))
                break
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if not node.level and module.split(".")[0] != "labotel" and (
                any(_private(part) for part in module.split("."))
                or any(_private(alias.name) for alias in node.names)):
            self.found.append((node.lineno, ast.unparse(node)))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            parts = alias.name.split(".")
            if parts[0] not in ("labotel", "_thread") and any(_private(p) for p in parts):
                self.found.append((node.lineno, ast.unparse(node)))


def scan(source: str) -> list[tuple[int, str]]:
    tree = ast.parse(source)
    visitor = _Scan(tree)
    visitor.visit(tree)
    return visitor.found


def test_only_the_compat_seam_touches_private_names_of_other_packages():
    offences = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if SEAM in path.parents:
            continue
        relative = path.relative_to(PACKAGE).as_posix()
        for line, expression in scan(path.read_text()):
            if (relative, expression) not in ALLOWED:
                offences.append(f"src/labotel/{relative}:{line}: {expression}")
    assert offences == [], "move these into src/labotel/compat/:\n" + "\n".join(offences)


def test_the_scan_catches_each_kind_of_private_access():
    # the scan must not be a test that cannot fail
    source = '''
import threading
import opentelemetry.sdk._logs
from opentelemetry.exporter.prometheus._mapping import map_unit
from asyncio.tasks import _all_tasks
from labotel.hooks import primitives

def f(provider, thread: threading.Thread, lock: primitives.InstrumentedLock):
    provider._all_metric_readers
    getattr(provider, "_sdk_config", None)
    setattr(threading, "_active_limbo_lock", None)
    thread._started
    lock._waiting           # ours by annotation
    primitives._edges       # a labotel module
    thread._labotel_state   # labotel's own mark
    thread.__class__        # a dunder is public

class Own:
    def m(self):
        self._x             # ours
        super()._y          # ours

def patched(self: threading.Thread):
    self._started           # self here is a Thread

def by_text(thread, label, provider):
    vars(thread).get("_target")
    vars(thread)["_name"]
    label in ("_args", "x")
    type(provider).__name__.startswith("_Proxy")
    object.__getattribute__(thread, "_ident")
    vars(thread).get("name")            # public
    object.__getattribute__(self, "_x")  # ours
'''
    found = [expression for _, expression in scan(source)]
    assert found == [
        "import opentelemetry.sdk._logs",
        "from opentelemetry.exporter.prometheus._mapping import map_unit",
        "from asyncio.tasks import _all_tasks",
        "provider._all_metric_readers",
        "getattr(provider, '_sdk_config', None)",
        "setattr(threading, '_active_limbo_lock', None)",
        "thread._started",
        "self._started",
        "vars(thread).get('_target')",
        "vars(thread)['_name']",
        "label in ('_args', 'x')",
        "type(provider).__name__.startswith('_Proxy')",
        "object.__getattribute__(thread, '_ident')",
    ]
