"""An object census for leak attribution: objects per type, and the biggest containers.

Cheap enough to run twice per suspected leak (one pass over the GC's object list, at C
speed for the type counts), never on the always-on path. Most leaks are a container that
keeps growing — a module-level list, a dict used as a cache without eviction — so the
largest containers are remembered and, at the end, those that grew are named with what
they hold and who refers to them.
"""

from __future__ import annotations

import collections
import dataclasses
import gc
import heapq
import itertools
import sys
import types
from collections import Counter
from typing import Any

TOP_CONTAINERS = 100  # containers remembered per census
ITEM_SAMPLE = 1000  # newest items looked at in a container that grew
# Containers measured with len(): only where len() is the built-in one, so the census never
# runs application code (a subclass's __len__, a labotel.shared() proxy) from our thread.
_BUILTIN_LEN = frozenset({list.__len__, dict.__len__, set.__len__, collections.deque.__len__})


def type_name(kind: type) -> str:
    # Some extension types expose a descriptor, not a string, as __module__/__qualname__.
    module = vars(kind).get("__module__", getattr(kind, "__module__", None))
    qualname = getattr(kind, "__qualname__", None)
    if not isinstance(qualname, str):
        qualname = getattr(kind, "__name__", "?")
    if not isinstance(module, str) or module == "builtins":
        return qualname
    return f"{module}.{qualname}"


@dataclasses.dataclass
class Census:
    types: Counter[type]
    largest: list[tuple[Any, list[int]]]  # (container, len at each observation)

    def observe(self) -> None:
        for container, sizes in self.largest:
            sizes.append(len(container))

    def release(self) -> None:
        self.largest = []  # strong refs: do not keep the containers alive any longer


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


def take_census(top: int = TOP_CONTAINERS) -> Census:
    """Counts GC-tracked objects by type and keeps the ``top`` largest containers."""
    objects = gc.get_objects()
    try:
        counts = Counter(map(type, objects))
        sized = (o for o in objects if getattr(type(o), "__len__", None) in _BUILTIN_LEN)
        largest = heapq.nlargest(top, sized, key=len)
    finally:
        del objects
    return Census(counts, [(o, [len(o)]) for o in largest])


def count_types() -> Counter[type]:
    """GC-tracked objects per type.

    Objects are bucketed by type rather than counted: while tracemalloc runs, every new
    int a running count creates costs a traceback capture (10x slower), appends do not.
    """
    buckets: collections.defaultdict[type, list] = collections.defaultdict(list)
    objects = gc.get_objects()
    try:
        for obj in objects:
            buckets[type(obj)].append(obj)
    finally:
        del objects
    counts = Counter({kind: len(members) for kind, members in buckets.items()})
    buckets.clear()
    return counts


def growing_containers(census: Census, limit: int = 3) -> list[GrowingContainer]:
    """Containers that kept growing at every observation (a list being built once does
    not), biggest growth first."""
    grown = sorted(((sizes[-1] - sizes[0], c) for c, sizes in census.largest
                    if len(sizes) >= 3 and sizes[-1] > sizes[0]
                    and all(b >= a for a, b in zip(sizes, sizes[1:], strict=False))),
                   key=lambda pair: pair[0], reverse=True)[:limit]
    return [GrowingContainer(type_name(type(c)), len(c), growth, _item_types(c, growth),
                             held_by(c)) for growth, c in grown]


def _item_types(container: Any, growth: int) -> tuple[tuple[str, int], ...]:
    newest = min(growth, ITEM_SAMPLE)
    if isinstance(container, dict):
        items = itertools.islice(reversed(container.values()), newest)
    elif isinstance(container, (list, collections.deque)):
        items = itertools.islice(reversed(container), newest)
    else:
        items = itertools.islice(iter(container), newest)
    return tuple(Counter(type_name(type(item)) for item in items).most_common(3))


def held_by(container: Any) -> str:
    """Where ``container`` is referenced from: a module global, an attribute, a closure."""
    modules = {id(vars(m)): name for name, m in list(sys.modules.items())
               if m is not None and hasattr(m, "__dict__")}
    found: list[tuple[int, str]] = []  # (preference, description)
    for referrer in gc.get_referrers(container):
        if isinstance(referrer, dict):
            name = next((k for k, v in referrer.items() if v is container), None)
            if name is None:
                continue
            if id(referrer) in modules:
                return f"global {name!r} of module {modules[id(referrer)]}"
            owner = next((o for o in gc.get_referrers(referrer)
                          if getattr(o, "__dict__", None) is referrer), None)
            if owner is not None:
                found.append((1, f"attribute {name!r} of a {type_name(type(owner))} object"))
            else:
                found.append((3, f"value of key {name!r} in a dict"))
        elif isinstance(referrer, types.CellType):
            found.append((2, _closure_owner(referrer)))
        elif isinstance(referrer, types.FrameType):
            code = referrer.f_code
            found.append((2, f"a local of {code.co_name} ({code.co_filename})"))
    return min(found)[1] if found else "referenced from elsewhere"


def _closure_owner(cell: types.CellType) -> str:
    for closure in gc.get_referrers(cell):
        if not isinstance(closure, tuple):
            continue
        for function in gc.get_referrers(closure):
            if isinstance(function, types.FunctionType) and function.__closure__ is closure:
                code = function.__code__
                index = closure.index(cell)
                name = code.co_freevars[index] if index < len(code.co_freevars) else "?"
                return (f"closure variable {name!r} of {function.__qualname__} "
                        f"({code.co_filename}:{code.co_firstlineno})")
    return "a closure variable"
