"""Where a leak is kept: the application's containers, found by walking out from its roots.

Most leaks are a container that keeps growing: a module-level list, a dict used as a cache
without eviction, a class attribute, a list a worker thread was handed. Attribution needs
to find those containers without changing what the application computes, so it never
asks the garbage collector for objects: ``gc.get_objects()`` and ``gc.get_referrers()``
hand labotel's thread a reference to every tracked object, including objects another
thread is still building (a tuple being filled by ``tuple(genexpr)``, whose final resize
then fails with ``SystemError: bad argument to internal function`` because labotel holds
a second reference). Objects reachable from the application's roots are finished objects,
stored somewhere; the walk only follows stored references:

- roots, in this order: every live thread but labotel's own (its target and arguments)
  and every asyncio task (its suspended coroutine's locals), then the application's
  modules' globals, then the libraries';
- edges: dict values, the newest items of lists, tuples, deques and sets, instance and
  class attributes, closure cells, and ``gc.get_referents()`` (the object's own
  references, read by its C traverse function) for other objects; frames are never
  entered, and nothing calls the application's own methods (``__len__``, ``__iter__``,
  ``__dict__``): the built-in implementations are called directly;
- bounds: ``MAX_DEPTH`` edges from a root, ``MAX_VISITS`` objects, paced by a
  ``budget.Pacer`` so the walk takes a small share of the time, and stopped at the
  pacer's deadline (under tracemalloc every allocation is several times dearer).

What it cannot see (the price of not walking the whole heap): containers reachable only
from a running function's local variables (not from a global, an object, a closure, a
thread's arguments or a suspended coroutine), from deeper than ``MAX_DEPTH``, or beyond
the visit budget; and object counts by type for the whole heap.
"""

from __future__ import annotations

import collections
import dataclasses
import gc
import heapq
import itertools
import sys
import threading
import types
from collections import Counter
from collections.abc import Callable
from typing import Any

from labotel import frames
from labotel.budget import Pacer
from labotel.compat import cpython

TOP_CONTAINERS = 2000  # containers remembered per walk (the longest)
MIN_ITEMS = 4  # shorter containers are not remembered (they are still walked through)
MAX_DEPTH = 6
MAX_VISITS = 100_000
MAX_QUEUE = 200_000
ITEMS_LOOKED_INTO = 32  # items of a container the walk follows (the newest)
NAMESPACE_ITEMS = 4096  # a dict this small is followed entirely (module globals)
ITEM_SAMPLE = 64  # newest items looked at in a container that grew
PACE_EVERY = 128  # visits between two pacer checks

_BUILTIN_LEN = frozenset({list.__len__, dict.__len__, set.__len__, frozenset.__len__,
                          tuple.__len__, collections.deque.__len__})
_LEAVES = frozenset({str, bytes, int, float, bool, type(None), complex, bytearray,
                     types.CodeType, types.BuiltinFunctionType, types.WrapperDescriptorType,
                     types.MethodDescriptorType, types.GetSetDescriptorType,
                     types.MemberDescriptorType})
_NEVER = (types.FrameType, types.ModuleType, types.TracebackType)
# A class's own namespace, MRO and names, read through type's C descriptors: never through
# a metaclass's __getattribute__.
_TYPE_DICT = type.__dict__["__dict__"].__get__
_TYPE_MRO = type.__dict__["__mro__"].__get__
_TYPE_NAME = type.__dict__["__name__"].__get__
_TYPE_QUALNAME = type.__dict__["__qualname__"].__get__
_MODULE_DICT = types.ModuleType.__dict__["__dict__"].__get__  # type: ignore[index]
_OWN = "labotel"

Root = tuple  # ("module", name) | ("thread", name) | ("task", name)


def type_name(kind: type) -> str:
    # Some extension types expose a descriptor, not a string, as __module__.
    module = _TYPE_DICT(kind).get("__module__", "builtins")
    qualname = _TYPE_QUALNAME(kind)
    if not isinstance(module, str) or module == "builtins":
        return qualname
    return f"{module}.{qualname}"


def _lookup(kind: type, name: str) -> Any:
    """``kind.name`` found in the MRO's namespaces (no metaclass code runs)."""
    for klass in _TYPE_MRO(kind):
        namespace = _TYPE_DICT(klass)
        if name in namespace:
            return namespace[name]
    return None


def builtin_len(obj: Any) -> int | None:
    """``len(obj)`` when ``len`` is the built-in one (never the application's)."""
    length = builtin_length_of(type(obj))
    return None if length is None else length(obj)


def builtin_length_of(kind: type) -> Callable[[Any], int] | None:
    """The built-in ``__len__`` of ``kind`` (a C method: calling it runs no application
    code), or None."""
    length = _lookup(kind, "__len__")
    return length if length in _BUILTIN_LEN else None


@dataclasses.dataclass
class Found:
    container: Any
    chain: tuple  # the objects from the root down to the container's holder
    root: Root
    sizes: list[int]

    def held_by(self) -> str:
        return describe(self.root, self.chain, self.container)


@dataclasses.dataclass
class Census:
    containers: list[Found]  # longest first
    visited: int
    truncated: bool  # the visit budget ran out before the walk did

    def observe(self) -> None:
        for found in self.containers:
            found.sizes.append(builtin_len(found.container) or 0)

    def release(self) -> None:
        self.containers = []  # strong refs: do not keep the containers alive any longer

    def bytes(self) -> int:
        """What the census keeps (its records; the containers are the application's)."""
        return sum(200 + 8 * (len(f.chain) + len(f.sizes)) for f in self.containers)

    def as_dict(self) -> dict[str, Any]:
        return {"objects_visited": self.visited, "budget_reached": self.truncated,
                "containers_watched": len(self.containers)}


@dataclasses.dataclass(frozen=True)
class GrowingContainer:
    kind: str
    size: int
    growth: int
    items: tuple[tuple[str, int], ...]  # item type -> count among the newest items
    held_by: str

    def describe(self) -> str:
        held = ", ".join(f"{name}" for name, _ in self.items[:3]) or "?"
        return (f"{self.kind} with {self.size} items (+{self.growth}) holding {held}, "
                f"{self.held_by}")


class Walk:
    """The walk's working memory, measurable while it runs (labotel's own, transient)."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.parent_of: dict[int, Any] = {}
        self.levels: list[list[Any]] = [[], []]

    def bytes(self) -> int:
        seen, parents, levels = self.seen, self.parent_of, self.levels
        return (sys.getsizeof(seen) + 32 * len(seen) + sys.getsizeof(parents)
                + sum(sys.getsizeof(level) for level in levels))


def take_census(pacer: Pacer | None = None, top: int = TOP_CONTAINERS,
                walk: Walk | None = None) -> Census:
    """Walk from the roots; remember the ``top`` longest containers and how they were
    reached. Raises ``budget.Stopped`` if the pacer is stopped.

    Breadth first, level by level, from the application's threads and tasks, then from its
    modules, then from the libraries' modules (``_roots``). It allocates little per object
    (no per-edge records: how a container is held is worked out afterwards, for the few
    that are named), since under tracemalloc every allocation costs a traceback.
    """
    pacer = pacer or Pacer(share=0.1)
    walk = walk or Walk()
    seen, parent_of = walk.seen, walk.parent_of
    root_of: dict[int, Root] = {}
    longest: list[tuple[int, int, Any]] = []
    tiebreak = itertools.count()
    visits = 0
    truncated = False
    for group in _roots():
        level = []
        for root, label in group:
            seen.add(id(root))  # a global holding this thread must not re-parent it
            root_of[id(root)] = label
            level.append(root)
        depth = 0
        while level and not truncated:
            following: list[Any] = []
            walk.levels = [level, following]
            for obj in level:
                if visits >= MAX_VISITS:
                    truncated = True
                    break
                visits += 1
                if visits % PACE_EVERY == 0:
                    pacer()
                    if pacer.expired:
                        truncated = True
                        break
                try:
                    length = builtin_len(obj)
                    if length is not None and length >= MIN_ITEMS and depth:
                        entry = (length, next(tiebreak), obj)
                        if len(longest) < top:
                            heapq.heappush(longest, entry)
                        elif length > longest[0][0]:
                            heapq.heapreplace(longest, entry)
                    if depth >= MAX_DEPTH or len(following) >= MAX_QUEUE:
                        continue
                    for child in _children(obj):
                        if type(child) in _LEAVES:
                            continue
                        key = id(child)
                        if key in seen:
                            continue
                        seen.add(key)
                        parent_of[key] = obj
                        following.append(child)
                except Exception:  # an object changed under us (dict resized): skip it
                    continue
            level = following
            depth += 1
        if truncated:
            break
    found = []
    for length, _, obj in sorted(longest, key=lambda e: e[0], reverse=True):
        chain: list[Any] = []
        holder = parent_of.get(id(obj))
        while holder is not None and len(chain) <= MAX_DEPTH:
            chain.append(holder)
            holder = parent_of.get(id(holder))
        chain.reverse()
        root = root_of.get(id(chain[0]), ("module", "?")) if chain else ("module", "?")
        found.append(Found(obj, tuple(chain), root, [length]))
    seen.clear()
    parent_of.clear()
    walk.levels = [[], []]
    return Census(found, visits, truncated)


def _roots() -> list[list[tuple[Any, Root]]]:
    """The application's threads and tasks; then its modules' globals; then the
    libraries'.

    Threads and tasks are walked first, on their own: what a worker was handed (its
    arguments, a suspended coroutine's locals) is the most specific holder there is, and a
    breadth-first walk that took them together with the modules reached it only after the
    first level of every application module. Under a tracemalloc that was already running
    (the application's own, or heap profiling) every allocation of the walk is traced, the
    budget covered about 2 000 objects, and in a process with many modules a list handed to
    a leaking thread was never reached (the leak was reported as native growth).
    """
    workers: list[tuple[Any, Root]] = []
    for thread in threading.enumerate():
        namespace = instance_dict(thread) or {}
        if _runs_labotel(cpython.thread_target(namespace)):
            continue  # labotel's own threads: its memory is counted, never the app's leak
        workers.append((thread, ("thread", cpython.thread_name(namespace))))
    try:
        from labotel.runtime import aio

        for tasks in aio.all_tasks_by_loop().values():
            for task in tasks:
                workers.append((task, ("task", _task_name(task))))
    except Exception:
        pass
    application: list[tuple[Any, Root]] = []
    libraries: list[tuple[dict[str, Any], Root]] = []
    for name, module in list(sys.modules.items()):
        if not isinstance(module, types.ModuleType) or _is_own(name):
            continue
        namespace = _MODULE_DICT(module)
        path = namespace.get("__file__")
        library = not isinstance(path, str) or not frames.is_application(path) or \
            frames.is_installed(path)
        (libraries if library else application).append((namespace, ("module", name)))
    return [workers, application, libraries]


def _is_own(module_name: Any) -> bool:
    """A module of labotel's (its demo application aside)."""
    return isinstance(module_name, str) and (
        module_name == _OWN or module_name.startswith(_OWN + ".")) and \
        not module_name.startswith(frames.DEMO_PACKAGE)


def _runs_labotel(target: Any) -> bool:
    """A thread target of labotel's own: its function's module, or its bound method's
    class's module (read without running any of the application's code)."""
    if type(target) is types.MethodType:
        return _is_own(_TYPE_DICT(type(target.__self__)).get("__module__"))
    if type(target) is types.FunctionType:
        return _is_own(target.__module__)
    return False


def _task_name(task: Any) -> str:
    import asyncio

    if _lookup(type(task), "get_name") is not _lookup(asyncio.Task, "get_name"):
        return "?"  # a Task subclass's own get_name is the application's code
    return str(task.get_name())


def _children(obj: Any) -> Any:
    """The objects ``obj`` holds (for a container, its newest items); built-in methods
    only, never the application's code."""
    kind = type(obj)
    if issubclass(kind, dict):
        if len(obj) <= NAMESPACE_ITEMS:
            return list(dict.values(obj))
        return list(itertools.islice(reversed(dict.values(obj)), ITEMS_LOOKED_INTO))
    if issubclass(kind, list):
        return list(itertools.islice(list.__reversed__(obj), ITEMS_LOOKED_INTO))
    if issubclass(kind, tuple):
        return obj if len(obj) <= ITEMS_LOOKED_INTO else obj[:ITEMS_LOOKED_INTO]
    if issubclass(kind, collections.deque):
        return list(itertools.islice(collections.deque.__reversed__(obj), ITEMS_LOOKED_INTO))
    if issubclass(kind, (set, frozenset)):
        iterate = set.__iter__ if issubclass(kind, set) else frozenset.__iter__
        return list(itertools.islice(iterate(obj), ITEMS_LOOKED_INTO))
    if issubclass(kind, type):
        return list(_TYPE_DICT(obj).values())
    if kind is types.FunctionType:
        return obj.__closure__ or ()
    if kind is types.CellType:
        try:
            return (obj.cell_contents,)
        except ValueError:  # empty cell
            return ()
    if issubclass(kind, _NEVER) or kind in (types.MethodType, types.BuiltinMethodType):
        return ()
    namespace = instance_dict(obj)
    if namespace is not None:
        return (namespace,)
    # C objects and slotted instances: their own references, as the collector sees them
    return [child for child in gc.get_referents(obj) if not isinstance(child, type)]


def instance_dict(obj: Any) -> dict | None:
    """``obj.__dict__`` through the C descriptor (never a ``__dict__`` property of the
    application's, nor its ``__getattribute__``)."""
    for klass in _TYPE_MRO(type(obj)):
        descriptor = _TYPE_DICT(klass).get("__dict__")
        if descriptor is None:
            continue
        if type(descriptor) is types.GetSetDescriptorType:
            namespace = descriptor.__get__(obj)
            return namespace if isinstance(namespace, dict) else None
        return None
    return None


def describe(root: Root, chain: tuple, container: Any) -> str:
    """How ``container`` is held, in words: its innermost named link, and its root."""
    path = [*chain, container]
    labels = [_edge(holder, held, path[index - 1] if index else None)
              for index, (holder, held) in enumerate(zip(path, path[1:], strict=False))]
    named = [label for label in labels if label is not None]
    kind, name = root
    if kind == "thread":
        if any(label[0] == "attribute" and label[2] in cpython.THREAD_CALL_FIELDS
               for label in named):
            return f"an argument of thread {name!r}"
        root_text = f"thread {name!r}"
    elif kind == "task":
        root_text = f"task {name!r}"
    elif named and named[0][0] == "key":  # a module global
        root_text = f"global {named[0][1]!r} of module {name}"
        named = named[1:]
    else:
        root_text = f"module {name}"
    if not named:
        return root_text
    return f"{_label(named[-1])}, reached from {root_text}"


def _edge(holder: Any, held: Any, holder_of_holder: Any) -> tuple | None:
    """How ``holder`` holds ``held``; None for a link that needs no words (an instance's
    own namespace, a closure cell's contents)."""
    kind = type(holder)
    if issubclass(kind, dict):
        key = next((k for k, v in dict.items(holder) if v is held), "?")
        key = key if type(key) is str else type(key).__name__
        if holder_of_holder is not None and instance_dict(holder_of_holder) is holder:
            return ("attribute", _TYPE_NAME(type(holder_of_holder)), key)
        return ("key", key)
    if issubclass(kind, type):
        key = next((k for k, v in _TYPE_DICT(holder).items() if v is held), "?")
        return ("class", _TYPE_QUALNAME(holder), key)
    if kind is types.FunctionType:
        closure = holder.__closure__ or ()
        index = next((i for i, cell in enumerate(closure) if cell is held), -1)
        names = holder.__code__.co_freevars
        code = holder.__code__
        return ("closure", holder.__qualname__, names[index] if 0 <= index < len(names)
                else "?", f"{code.co_filename}:{code.co_firstlineno}")
    if kind is types.CellType or instance_dict(holder) is held:
        return None
    if issubclass(kind, (list, tuple, set, frozenset, collections.deque)):
        return ("item",)
    return ("referent", _TYPE_NAME(kind))


def _label(label: tuple) -> str:
    kind = label[0]
    if kind == "attribute":
        return f"attribute {label[2]!r} of a {label[1]} object"
    if kind == "class":
        return f"class attribute {label[1]}.{label[2]}"
    if kind == "closure":
        return f"closure variable {label[2]!r} of {label[1]} ({label[3]})"
    if kind == "key":
        return f"value of key {label[1]!r} in a dict"
    if kind == "referent":
        return f"held by a {label[1]} object"
    return "an item of a container"


def growing_containers(census: Census, limit: int = 3) -> list[tuple[int, Found]]:
    """(growth, container) of those that grew at every observation (a list being built
    once does not), biggest growth first."""
    return sorted(((f.sizes[-1] - f.sizes[0], f) for f in census.containers
                   if len(f.sizes) >= 3 and f.sizes[-1] > f.sizes[0]
                   and all(b >= a for a, b in zip(f.sizes, f.sizes[1:], strict=False))),
                  key=lambda pair: pair[0], reverse=True)[:limit]


def newest_items(container: Any, count: int) -> list[Any]:
    """Up to ``count`` of the most recently added items (built-in iteration only)."""
    kind = type(container)
    if issubclass(kind, dict):
        items = reversed(dict.values(container))
    elif issubclass(kind, list):
        items = list.__reversed__(container)
    elif issubclass(kind, collections.deque):
        items = collections.deque.__reversed__(container)
    elif issubclass(kind, tuple):
        items = tuple.__iter__(container)
    elif issubclass(kind, set):
        items = set.__iter__(container)
    elif issubclass(kind, frozenset):
        items = frozenset.__iter__(container)
    else:
        return []
    return list(itertools.islice(items, count))


def item_types(container: Any, count: int = ITEM_SAMPLE) -> tuple[tuple[str, int], ...]:
    return tuple(Counter(type_name(type(item)) for item in newest_items(container, count))
                 .most_common(3))


def describe_growing(growth: int, found: Found) -> GrowingContainer:
    container = found.container
    return GrowingContainer(type_name(type(container)), builtin_len(container) or 0, growth,
                            item_types(container, min(max(growth, 1), ITEM_SAMPLE)),
                            found.held_by())
