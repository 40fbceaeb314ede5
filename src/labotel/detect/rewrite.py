"""The AST rewrite behind race detection without annotations (``race_instrument``).

Inside function bodies (module and class bodies run once, at import, in one thread) the
rewrite turns every access to shared state into a call of ``detect.race_runtime``, which
performs the operation itself and records it:

    obj.x             -> _labotel_ga(obj, 'x', SITE)
    obj.x = v         -> _labotel_sa(v, obj, 'x', SITE)          (value first, as Python)
    obj.x += v        -> _labotel_aa(obj, 'x', OP, v, SITE)
    del obj.x         -> _labotel_da(obj, 'x', SITE)
    d[k] / d[k] = v / d[k] += v / del d[k]  -> _labotel_gi / _si / _ai / _di
    k in d            -> _labotel_in(k, d, SITE)
    obj.append(x)     -> _labotel_cm(obj, 'append', SITE, x)     (container method names)
    len(x), for a in x, comprehensions      -> _labotel_ln / _labotel_it
    g (global g written by some function)   -> _labotel_rg(g, 'g', SITE) / _labotel_wg

Each function body is kept twice, as written and instrumented, behind one test of the
module's schedule table (``race_runtime.schedules``), which decides per call whether this
call is recorded (the way LiteRace samples: every call of a cold function, a shrinking
share of a hot one's)::

    def f(self):                     def f(self):
        self.n += 1          ->          if _labotel_s[7]():
                                             _labotel_aa(self, 'n', 0, 1, SITE)
                                         else:
                                             self.n += 1

The docstring stays first and ``global``/``nonlocal`` declarations move above the test
(they hold for the whole function either way). Loop bodies (``for``, ``while``,
``async for``) inside a function get the same, per iteration, and lambdas as a
conditional expression. A function with nothing to record, and functions or loops nested more than
``MAX_COPIED_DEPTH`` deep (both count; copies double at each level), are not duplicated.

``SITE`` is a constant tuple ``(module, line, source text, container label, ignored)``:
the report shows the expression's text, and a line with ``# labotel: ignore-race`` marks
its accesses as suppressed. Locations keep their line numbers (``copy_location``), so
tracebacks are unchanged. Plain local variables, slices, method lookups that are not
container methods and attributes of imported modules are left alone.
"""

from __future__ import annotations

import ast
import copy
import operator
import re
from collections.abc import Callable
from typing import Any

REWRITE_VERSION = 2
PREFIX = "_labotel_"
SCHEDULES = PREFIX + "s"  # the module's table: one "record this call?" callable per function
MAX_COPIED_DEPTH = 3
IGNORE_COMMENT = "labotel: ignore-race"
MAX_SOURCE_CHARS = 120

# In-place operators by index (the runtime keeps the same table).
AUG_OPS: tuple[tuple[type[ast.operator], Callable[[Any, Any], Any]], ...] = (
    (ast.Add, operator.iadd), (ast.Sub, operator.isub), (ast.Mult, operator.imul),
    (ast.MatMult, operator.imatmul), (ast.Div, operator.itruediv),
    (ast.FloorDiv, operator.ifloordiv), (ast.Mod, operator.imod), (ast.Pow, operator.ipow),
    (ast.LShift, operator.ilshift), (ast.RShift, operator.irshift),
    (ast.BitOr, operator.ior), (ast.BitXor, operator.ixor), (ast.BitAnd, operator.iand))
_OP_INDEX = {kind: index for index, (kind, _) in enumerate(AUG_OPS)}

# Method names whose calls the runtime classifies when the receiver is a builtin container.
CONTAINER_METHODS = frozenset({
    "append", "appendleft", "extend", "extendleft", "insert", "pop", "popleft", "popitem",
    "remove", "clear", "sort", "reverse", "rotate", "index", "count", "copy", "get",
    "setdefault", "update", "keys", "values", "items", "move_to_end", "add", "discard",
    "difference_update", "intersection_update", "symmetric_difference_update",
})
_NOT_ITERATED = frozenset({"range"})  # iterating a fresh range touches nothing shared


def mangle(name: str, class_name: str | None) -> str:
    """Python's private-name mangling (``self.__x`` in class ``C`` is ``_C__x``)."""
    if (class_name is None or not name.startswith("__") or name.endswith("__")
            or "." in name):
        return name
    stripped = class_name.lstrip("_")
    return f"_{stripped}{name}" if stripped else name


def _bound_names(function: ast.AST) -> tuple[set[str], set[str]]:
    """(names local to ``function``, names it declares ``global``); nested scopes skipped."""
    local: set[str] = set()
    declared_global: set[str] = set()
    args = function.args  # type: ignore[attr-defined]
    for arg in (*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg):
        if arg is not None:
            local.add(arg.arg)
    todo = list(function.body) if isinstance(function.body, list) else [function.body]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Global):
            declared_global.update(node.names)
        elif isinstance(node, ast.Nonlocal):
            local.update(node.names)
        elif isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            local.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            local.add(node.name)
            todo.extend(node.decorator_list)
            continue  # their bodies are their own scopes
        elif isinstance(node, ast.Lambda):
            continue
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                local.add((alias.asname or alias.name).split(".")[0])
        elif isinstance(node, ast.ExceptHandler) and node.name:
            local.add(node.name)
        elif isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
            local.add(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            local.add(node.rest)
        todo.extend(ast.iter_child_nodes(node))
    return local - declared_global, declared_global


def _module_facts(tree: ast.Module) -> tuple[set[str], set[str]]:
    """(globals some function declares ``global``, names bound by module-level ``import``)."""
    written: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Global):
            written.update(node.names)
    modules: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            for alias in node.names:
                modules.add(alias.asname or alias.name.split(".")[0])
    return written, modules


def _lines(source: str) -> list[str]:
    """Lines as the compiler numbers them (``str.splitlines`` also splits on \\f, \\v, …)."""
    return re.split(r"\r\n|\r|\n", source)


def _ignored_lines(source: str) -> frozenset[int]:
    return frozenset(number for number, line in enumerate(_lines(source), 1)
                     if IGNORE_COMMENT in line and "#" in line)


def _label(node: ast.AST) -> str:
    """The name a container goes by at this site: ``self.cache`` -> ``cache``."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


class Rewriter(ast.NodeTransformer):
    def __init__(self, module: str, source: str, tree: ast.Module):
        self.module = module
        self.source = source
        self.encoded = [line.encode("utf-8") for line in _lines(source)]
        self.ignored = _ignored_lines(source)
        self.written_globals, self.module_names = _module_facts(tree)
        self.classes: list[str | None] = []
        self.scopes: list[tuple[set[str], set[str]]] = []  # (locals, declared global)
        self.statement: ast.stmt | None = None
        self.sites = 0
        self.functions = 0  # entries of the schedule table
        self.own_sites: list[int] = []  # per function being rewritten: its own accesses

    # --- helpers ----------------------------------------------------------------------
    def _text(self, node: ast.AST) -> str:
        """The node's source text on one line (``ast.get_source_segment`` re-splits the
        whole source on every call: quadratic in a module's size)."""
        try:
            first, last = node.lineno - 1, node.end_lineno - 1  # type: ignore[attr-defined]
            start, end = node.col_offset, node.end_col_offset  # type: ignore[attr-defined]
            lines = self.encoded[first:last + 1]
            if first == last:
                pieces = [lines[0][start:end]]
            else:
                pieces = [lines[0][start:], *lines[1:-1], lines[-1][:end]]
            text = b" ".join(pieces).decode("utf-8", "replace")
        except Exception:
            text = ""
        text = " ".join(text.split())
        return text if len(text) <= MAX_SOURCE_CHARS else text[:MAX_SOURCE_CHARS - 1] + "…"

    def _site(self, node: ast.AST, label: str = "", text_of: ast.AST | None = None) -> ast.Constant:
        first = getattr(node, "lineno", 0)
        last = getattr(node, "end_lineno", None) or first
        ignored = any(line in self.ignored for line in range(first, last + 1))
        self.sites += 1
        if self.own_sites:
            self.own_sites[-1] += 1
        return ast.Constant((self.module, first, self._text(text_of or node), label, ignored))

    def _call(self, function: str, args: list, node: ast.AST) -> ast.Call:
        call = ast.Call(func=ast.Name(PREFIX + function, ast.Load()), args=args, keywords=[])
        return ast.copy_location(call, node)

    def _in_function(self) -> bool:
        return bool(self.scopes)

    def _class(self) -> str | None:
        return self.classes[-1] if self.classes else None

    def _is_module_name(self, node: ast.AST) -> bool:
        return (isinstance(node, ast.Name) and node.id in self.module_names
                and not any(node.id in scope[0] for scope in self.scopes))

    def _is_tracked_global(self, name: str) -> bool:
        if name not in self.written_globals or not self.scopes:
            return False
        local, declared = self.scopes[-1]
        if name in declared:
            return True
        return not any(name in scope[0] for scope in self.scopes)

    # --- scopes ----------------------------------------------------------------------
    def visit_ClassDef(self, node: ast.ClassDef) -> ast.AST:
        node.decorator_list = [self.visit(d) for d in node.decorator_list]
        node.bases = [self.visit(b) for b in node.bases]
        self.classes.append(node.name)
        saved, self.scopes = self.scopes, []  # a class body is not a function scope
        try:
            node.body = self._statements(node.body)
        finally:
            self.scopes = saved
            self.classes.pop()
        return node

    def _function(self, node: ast.AST) -> ast.AST:
        node.decorator_list = [self.visit(d) for d in node.decorator_list]  # type: ignore
        node.args = self.visit(node.args)  # type: ignore[attr-defined]
        self.scopes.append(_bound_names(node))
        self.own_sites.append(0)
        try:
            copied = len(self.own_sites) <= MAX_COPIED_DEPTH
            original = copy.deepcopy(node.body) if copied else None  # type: ignore
            node.body = self._statements(node.body)  # type: ignore[attr-defined]
            if original is not None and self.own_sites[-1]:
                plain = _PlainCopy(self).statements(original)
                node.body = self._dispatch(node.body, plain)  # type: ignore[attr-defined]
        finally:
            self.own_sites.pop()
            self.scopes.pop()
        return node

    visit_FunctionDef = _function
    visit_AsyncFunctionDef = _function

    def visit_Lambda(self, node: ast.Lambda) -> ast.AST:
        node.args = self.visit(node.args)
        self.scopes.append(_bound_names(node))
        self.own_sites.append(0)
        try:
            original = (copy.deepcopy(node.body) if len(self.own_sites) <= MAX_COPIED_DEPTH
                        else None)
            node.body = self.visit(node.body)
            if original is not None and self.own_sites[-1]:
                plain = _PlainCopy(self).visit(original)
                node.body = ast.copy_location(
                    ast.IfExp(test=self._scheduled(node.body), body=node.body, orelse=plain),
                    node.body)
        finally:
            self.own_sites.pop()
            self.scopes.pop()
        return node

    def _scheduled(self, where: ast.AST) -> ast.Call:
        """``_labotel_s[N]()``: is this call recorded? (N: a new entry of the table)"""
        entry = ast.Subscript(ast.Name(SCHEDULES, ast.Load()), ast.Constant(self.functions),
                              ast.Load())
        self.functions += 1
        return ast.copy_location(ast.Call(func=entry, args=[], keywords=[]), where)

    def _dispatch(self, instrumented: list[ast.stmt], plain: list[ast.stmt]) -> list[ast.stmt]:
        """``[docstring] [declarations] if <recorded>: instrumented else: plain``."""
        head: list[ast.stmt] = []
        if _is_docstring(plain[0]):  # not rewritten: the same statement in both copies
            head.append(plain[0])
            instrumented, plain = instrumented[1:], plain[1:]
        globals_, nonlocals = _lift_declarations(instrumented), _lift_declarations(plain)
        for kind, names in ((ast.Global, globals_), (ast.Nonlocal, nonlocals)):
            unique = list(dict.fromkeys(names[kind]))
            if unique:
                head.append(ast.copy_location(kind(names=unique), instrumented[0]))
        return [*head, self._branch(instrumented, plain)]

    def _branch(self, instrumented: list[ast.stmt], plain: list[ast.stmt]) -> ast.If:
        """``if _labotel_s[N](): instrumented else: plain``, at the body's first line."""
        branch = ast.If(test=self._scheduled(instrumented[0]), body=instrumented, orelse=plain)
        return ast.copy_location(branch, instrumented[0])

    def _statements(self, body: list[ast.stmt]) -> list[ast.stmt]:
        out: list[ast.stmt] = []
        for statement in body:
            result = self.visit(statement)
            if isinstance(result, list):
                out.extend(result)
            elif result is not None:
                out.append(result)
        return out

    def generic_visit(self, node: ast.AST) -> ast.AST:
        # statement lists go through _statements so a statement may become several
        for field, value in ast.iter_fields(node):
            if isinstance(value, list) and value and isinstance(value[0], ast.stmt):
                setattr(node, field, self._statements(value))
            elif isinstance(value, list):
                setattr(node, field, [self.visit(item) if isinstance(item, ast.AST) else item
                                      for item in value])
            elif isinstance(value, ast.AST):
                setattr(node, field, self.visit(value))
        return node

    # --- statements ------------------------------------------------------------------
    def visit_Assign(self, node: ast.Assign) -> ast.AST | list[ast.stmt]:
        if not self._in_function():
            return self.generic_visit(node)
        value = self.visit(node.value)
        site_node = node
        if len(node.targets) == 1 and isinstance(node.targets[0], (ast.Attribute, ast.Subscript)):
            target = node.targets[0]
            call = self._store(target, value, site_node)
            if call is not None:
                return ast.copy_location(ast.Expr(call), node)
        node.value = value
        node.targets = [self._target(t) for t in node.targets]
        return [node, *self._after_store(node.targets, node)]

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.AST | list[ast.stmt]:
        if not self._in_function() or node.value is None:
            return node
        value = self.visit(node.value)
        if isinstance(node.target, (ast.Attribute, ast.Subscript)):
            call = self._store(node.target, value, node)
            if call is not None:
                return ast.copy_location(ast.Expr(call), node)
        node.value = value
        return [node, *self._after_store([node.target], node)]

    def _store(self, target: ast.AST, value: ast.expr, statement: ast.stmt) -> ast.Call | None:
        site = self._site(statement, _label(getattr(target, "value", None)))
        if isinstance(target, ast.Attribute):
            if self._is_module_name(target.value):
                return None
            return self._call("sa", [value, self.visit(target.value),
                                     ast.Constant(mangle(target.attr, self._class())), site],
                              statement)
        if isinstance(target, ast.Subscript) and isinstance(target.slice, ast.Slice):
            return self._call("ss", [value, self.visit(target.value),
                                     *self._bounds(target.slice), site], statement)
        if isinstance(target, ast.Subscript) and not self._sliced(target):
            return self._call("si", [value, self.visit(target.value), self.visit(target.slice),
                                     site], statement)
        return None

    def _target(self, target: ast.AST) -> ast.AST:
        """A store target left as a store: only the expressions inside it are rewritten."""
        if isinstance(target, (ast.Attribute, ast.Subscript)):
            target.value = self.visit(target.value)
            if isinstance(target, ast.Subscript):
                target.slice = self.visit(target.slice)
        elif isinstance(target, (ast.Tuple, ast.List)):
            target.elts = [self._target(e) for e in target.elts]
        elif isinstance(target, ast.Starred):
            target.value = self._target(target.value)
        return target

    def _after_store(self, targets: list[ast.AST], statement: ast.stmt) -> list[ast.stmt]:
        """Record writes of tracked globals and of ``name.attr`` targets after a store."""
        calls: list[ast.stmt] = []
        todo = list(targets)
        while todo:
            target = todo.pop(0)
            if isinstance(target, (ast.Tuple, ast.List)):
                todo[:0] = target.elts
            elif isinstance(target, ast.Starred):
                todo.insert(0, target.value)
            elif isinstance(target, ast.Name) and self._is_tracked_global(target.id):
                calls.append(self._call("wg", [ast.Constant(target.id), self._site(statement)],
                                        statement))
            elif (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name)
                  and not self._is_module_name(target.value)):
                calls.append(self._call("wa", [ast.Name(target.value.id, ast.Load()),
                                               ast.Constant(mangle(target.attr, self._class())),
                                               self._site(statement)], statement))
        return [ast.copy_location(ast.Expr(call), statement) for call in calls]

    def visit_AugAssign(self, node: ast.AugAssign) -> ast.AST | list[ast.stmt]:
        if not self._in_function():
            return self.generic_visit(node)
        value = self.visit(node.value)
        op = ast.Constant(_OP_INDEX[type(node.op)])
        target = node.target
        if isinstance(target, ast.Attribute) and not self._is_module_name(target.value):
            site = self._site(node)
            return ast.copy_location(ast.Expr(self._call(
                "aa", [self.visit(target.value), ast.Constant(mangle(target.attr, self._class())),
                       op, value, site], node)), node)
        if isinstance(target, ast.Subscript) and not self._sliced(target):
            site = self._site(node, _label(target.value))
            return ast.copy_location(ast.Expr(self._call(
                "ai", [self.visit(target.value), self.visit(target.slice), op, value, site],
                node)), node)
        node.value = value
        if isinstance(target, ast.Name) and self._is_tracked_global(target.id):
            read = self._call("rg", [ast.Constant(None), ast.Constant(target.id),
                                     self._site(node)], node)
            return [ast.copy_location(ast.Expr(read), node), node,
                    *self._after_store([target], node)]
        node.target = self._target(target)
        return node

    def visit_Delete(self, node: ast.Delete) -> ast.AST | list[ast.stmt]:
        if not self._in_function():
            return self.generic_visit(node)
        out: list[ast.stmt] = []
        for target in node.targets:  # `del a, b` deletes left to right: same as one by one
            call = None
            if isinstance(target, ast.Attribute) and not self._is_module_name(target.value):
                call = self._call("da", [self.visit(target.value),
                                         ast.Constant(mangle(target.attr, self._class())),
                                         self._site(node)], node)
            elif isinstance(target, ast.Subscript) and isinstance(target.slice, ast.Slice):
                call = self._call("ds", [self.visit(target.value), *self._bounds(target.slice),
                                         self._site(node, _label(target.value))], node)
            elif isinstance(target, ast.Subscript) and not self._sliced(target):
                call = self._call("di", [self.visit(target.value), self.visit(target.slice),
                                         self._site(node, _label(target.value))], node)
            if call is not None:
                out.append(ast.copy_location(ast.Expr(call), node))
            else:
                single = ast.copy_location(ast.Delete(targets=[self._target(target)]), node)
                out.append(single)
                out.extend(self._after_store([target], node))
        return out

    def _loop(self, node: ast.For | ast.AsyncFor | ast.While) -> ast.AST:
        if not self._in_function():
            return self.generic_visit(node)
        if isinstance(node, ast.While):
            node.test = self.visit(node.test)
        else:  # `async for` iterates with __anext__: not recorded as iteration
            node.iter = (self._iterated(node.iter) if isinstance(node, ast.For)
                         else self.visit(node.iter))
            node.target = self._target(node.target)
        node.body = self._loop_body(node.body, node)
        node.orelse = self._statements(node.orelse)
        return node

    visit_For = visit_AsyncFor = visit_While = _loop

    def _loop_body(self, body: list[ast.stmt],
                   loop: ast.For | ast.AsyncFor | ast.While) -> list[ast.stmt]:
        """A loop's body, kept twice like a function's: a worker's ``while True`` loop is
        one call of a function that never returns, so each iteration is scheduled on its
        own. (Its ``global``/``nonlocal`` statements are lifted with the function's.) A
        ``for`` target that is an attribute or a tracked global is recorded as written at
        the top of each iteration."""
        def stored() -> list[ast.stmt]:
            return [] if isinstance(loop, ast.While) else self._after_store([loop.target], loop)

        if len(self.own_sites) > MAX_COPIED_DEPTH:  # the function is not copied either
            return stored() + self._statements(body)
        original = copy.deepcopy(body)
        self.own_sites.append(0)
        try:
            instrumented = stored() + self._statements(body)
            own = self.own_sites[-1]
        finally:
            self.own_sites.pop()
        if not own:
            return instrumented
        self.own_sites[-1] += own
        return [self._branch(instrumented, _PlainCopy(self).statements(original))]

    def _with(self, node: ast.With | ast.AsyncWith) -> ast.AST:
        """``with cm as self.conn:`` stores ``self.conn`` on entry: recorded as a write."""
        if not self._in_function():
            return self.generic_visit(node)
        targets = []
        for item in node.items:
            item.context_expr = self.visit(item.context_expr)
            if item.optional_vars is not None:
                item.optional_vars = self._target(item.optional_vars)
                targets.append(item.optional_vars)
        node.body = self._after_store(targets, node) + self._statements(node.body)
        return node

    visit_With = visit_AsyncWith = _with

    def visit_match_case(self, node: ast.match_case) -> ast.AST:
        # patterns (`case Color.RED:`, `case Point(x=0):`) must stay names and constants
        if node.guard is not None:
            node.guard = self.visit(node.guard)
        node.body = self._statements(node.body)
        return node

    # --- expressions -----------------------------------------------------------------
    @staticmethod
    def _sliced(node: ast.Subscript) -> bool:
        index = node.slice
        return isinstance(index, ast.Slice) or (
            isinstance(index, ast.Tuple) and any(isinstance(e, ast.Slice) for e in index.elts))

    def _bounds(self, index: ast.Slice) -> list[ast.expr]:
        """``a:b:c`` as three arguments (a slice is no expression of its own)."""
        return [self.visit(part) if part is not None else ast.Constant(None)
                for part in (index.lower, index.upper, index.step)]

    def _iterated(self, node: ast.expr) -> ast.expr:
        visited = self.visit(node)
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in _NOT_ITERATED):
            return visited
        return self._call("it", [visited, self._site(node, _label(node))], node)

    def visit_comprehension(self, node: ast.comprehension) -> ast.AST:
        if self._in_function() and not node.is_async:
            node.iter = self._iterated(node.iter)
        else:
            node.iter = self.visit(node.iter)
        node.target = self._target(node.target)
        node.ifs = [self.visit(test) for test in node.ifs]
        return node

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        if (not self._in_function() or not isinstance(node.ctx, ast.Load)
                or self._is_module_name(node.value)):
            return self.generic_visit(node)
        return self._call("ga", [self.visit(node.value),
                                 ast.Constant(mangle(node.attr, self._class())),
                                 self._site(node)], node)

    def visit_Subscript(self, node: ast.Subscript) -> ast.AST:
        if (self._in_function() and isinstance(node.ctx, ast.Load)
                and isinstance(node.slice, ast.Slice)):
            return self._call("gs", [self.visit(node.value), *self._bounds(node.slice),
                                     self._site(node, _label(node.value))], node)
        if not self._in_function() or not isinstance(node.ctx, ast.Load) or self._sliced(node):
            return self.generic_visit(node)
        return self._call("gi", [self.visit(node.value), self.visit(node.slice),
                                 self._site(node, _label(node.value))], node)

    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        if (not self._in_function() or len(node.ops) != 1
                or not isinstance(node.ops[0], (ast.In, ast.NotIn))):
            return self.generic_visit(node)
        container = node.comparators[0]
        call = self._call("in", [self.visit(node.left), self.visit(container),
                                 self._site(node, _label(container))], node)
        if isinstance(node.ops[0], ast.NotIn):
            return ast.copy_location(ast.UnaryOp(ast.Not(), call), node)
        return call

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if isinstance(node.ctx, ast.Load) and self._is_tracked_global(node.id):
            return self._call("rg", [node, ast.Constant(node.id), self._site(node)], node)
        return node

    def visit_Call(self, node: ast.Call) -> ast.AST:
        if not self._in_function():
            return self.generic_visit(node)
        func = node.func
        args = [self.visit(a) for a in node.args]
        keywords = [self.visit(k) for k in node.keywords]
        if (isinstance(func, ast.Name) and func.id == "len" and len(args) == 1
                and not node.keywords and not isinstance(args[0], ast.Starred)
                and not any("len" in scope[0] for scope in self.scopes)):
            return self._call("ln", [args[0], self._site(node, _label(node.args[0]))], node)
        if (isinstance(func, ast.Attribute) and func.attr in CONTAINER_METHODS
                and not self._is_module_name(func.value)):
            call = self._call("cm", [self.visit(func.value), ast.Constant(func.attr),
                                     self._site(node, _label(func.value)), *args], node)
            call.keywords = keywords
            return call
        if isinstance(func, ast.Attribute):
            func.value = self.visit(func.value)  # the method lookup itself is not recorded
        else:
            node.func = self.visit(func)
        node.args = args
        node.keywords = keywords
        return node


class _PlainCopy(ast.NodeTransformer):
    """A function body's copy as written: only the functions and classes defined in it
    are rewritten (each with its own schedule entry)."""

    def __init__(self, rewriter: Rewriter):
        self.rewriter = rewriter

    def visit_FunctionDef(self, node: ast.AST) -> ast.AST:
        return self.rewriter.visit(node)

    visit_AsyncFunctionDef = visit_ClassDef = visit_Lambda = visit_FunctionDef

    def statements(self, body: list[ast.stmt]) -> list[ast.stmt]:
        return [self.visit(statement) for statement in body]


def _is_docstring(statement: ast.stmt) -> bool:
    return (isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant)
            and isinstance(statement.value.value, str))


def _lift_declarations(body: list[ast.stmt]) -> dict[type, list[str]]:
    """Replace the ``global``/``nonlocal`` statements of this scope by ``pass``; their names.

    Both copies of a body declare the same names, and one copy's declaration after the
    other copy's use of a name would be a SyntaxError: they move above the dispatch.
    """
    names: dict[type, list[str]] = {ast.Global: [], ast.Nonlocal: []}
    todo: list[Any] = [body]
    while todo:
        statements = todo.pop()
        for index, statement in enumerate(statements):
            if isinstance(statement, (ast.Global, ast.Nonlocal)):
                names[type(statement)].extend(statement.names)
                statements[index] = ast.copy_location(ast.Pass(), statement)
            elif isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue  # scopes of their own
            else:
                for _, value in ast.iter_fields(statement):
                    if isinstance(value, list) and value and isinstance(value[0], ast.stmt):
                        todo.append(value)
                    elif isinstance(value, list):  # try handlers, match cases
                        todo.extend(item.body for item in value
                                    if isinstance(item, (ast.ExceptHandler, ast.match_case)))
    return names


def rewrite(source: str | bytes, filename: str, module: str) -> ast.Module:
    """The instrumented AST of a module's source (line numbers kept)."""
    if isinstance(source, bytes):
        source = source.decode("utf-8-sig") if source.startswith(b"\xef\xbb\xbf") else (
            _decode(source))
    tree = ast.parse(source, filename)
    rewriter = Rewriter(module, source, tree)
    tree = rewriter.visit(tree)
    if rewriter.functions:
        _add_schedule_table(tree, module, rewriter.functions)
    return ast.fix_missing_locations(tree)


def _add_schedule_table(tree: ast.Module, module: str, count: int) -> None:
    """``_labotel_s = _labotel_schedules(module, count)`` after the docstring and the
    ``__future__`` imports (which must come first)."""
    position = 0
    body = tree.body
    if body and _is_docstring(body[0]):
        position = 1
    while (position < len(body) and isinstance(body[position], ast.ImportFrom)
           and body[position].module == "__future__"):  # type: ignore[attr-defined]
        position += 1
    table = ast.Assign(targets=[ast.Name(SCHEDULES, ast.Store())],
                       value=ast.Call(func=ast.Name(PREFIX + "schedules", ast.Load()),
                                      args=[ast.Constant(module), ast.Constant(count)],
                                      keywords=[]))
    where = body[position] if position < len(body) else (body[-1] if body else None)
    if where is not None:
        ast.copy_location(table, where)
    body.insert(position, table)


def _decode(data: bytes) -> str:
    import io
    import tokenize

    encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
    return data.decode(encoding)
