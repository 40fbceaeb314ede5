"""``labotel.shared(obj, name)``: a proxy that records every read and write of ``obj``.

The proxy forwards everything to ``obj``; item access, attribute access and method calls
are recorded as accesses to resource ``name`` (the whole object is one resource, like a Go
map; use ``record_access`` with your own names for per-field tracking). ``isinstance``
and ``type(proxy).__name__`` aside, it behaves like the object: ``isinstance(p, dict)``
holds because ``__class__`` reports the target's class.

The proxy always records once detection is on, even when it was made before ``start()``;
while detection is off each operation costs one extra Python call.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable
from typing import Any

from labotel.compat import cpython
from labotel.detect import races
from labotel.detect.keys import plain_key

_DICT_WRITES = frozenset({"pop", "popitem", "setdefault", "update", "clear", "move_to_end"})
_LIST_WRITES = frozenset({"append", "extend", "insert", "pop", "remove", "clear", "sort",
                          "reverse"})
_SET_WRITES = frozenset({"add", "discard", "remove", "pop", "clear", "update",
                         "intersection_update", "difference_update",
                         "symmetric_difference_update"})


def _record(proxy: Any, write: bool) -> None:
    detector = races._detector
    if detector is not None:
        detector.access(object.__getattribute__(proxy, "_labotel_name"), write,
                        cpython.getframe(2), None)


def _forward(method: str, write: bool) -> Callable[..., Any]:
    def forward(self: Any, *args: Any) -> Any:
        _record(self, write)
        return getattr(object.__getattribute__(self, "_labotel_target"), method)(*args)

    forward.__name__ = method
    return forward


def _in_place(method: str) -> Callable[..., Any]:
    """``p += x`` must leave ``p`` bound to the proxy, not to the bare target."""

    def forward(self: Any, other: Any) -> Any:
        _record(self, True)
        target = object.__getattribute__(self, "_labotel_target")
        result = getattr(target, method)(other)
        return self if result is target else result

    forward.__name__ = method
    return forward


class _Proxy:
    __slots__ = ("_labotel_target", "_labotel_name", "__weakref__")
    _writes: frozenset[str] = frozenset()

    def __init__(self, target: Any, name: str):
        object.__setattr__(self, "_labotel_target", target)
        object.__setattr__(self, "_labotel_name", name)

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # isinstance(proxy, dict) is True for a shared dict
        return type(object.__getattribute__(self, "_labotel_target"))

    def __getattr__(self, attribute: str) -> Any:
        # Only reached for names the proxy itself lacks: the target's methods and fields.
        write = attribute in object.__getattribute__(self, "_writes")
        detector = races._detector
        if detector is not None:
            detector.access(object.__getattribute__(self, "_labotel_name"), write,
                            cpython.getframe(1), None)
        return getattr(object.__getattribute__(self, "_labotel_target"), attribute)

    def __repr__(self) -> str:
        return repr(object.__getattribute__(self, "_labotel_target"))

    __str__ = _forward("__str__", False)
    __eq__ = _forward("__eq__", False)
    __ne__ = _forward("__ne__", False)

    def __bool__(self) -> bool:  # bool(): containers have no __bool__, only __len__
        _record(self, False)
        return bool(object.__getattribute__(self, "_labotel_target"))


def _methods(reads: Iterable[str], writes: Iterable[str],
             in_place: Iterable[str] = ()) -> dict[str, Any]:
    namespace: dict[str, Any] = {name: _forward(name, False) for name in reads}
    namespace.update({name: _forward(name, True) for name in writes})
    namespace.update({name: _in_place(name) for name in in_place})
    namespace["__slots__"] = ()
    namespace["__hash__"] = None  # like the containers themselves
    return namespace


_DictProxy = type("SharedDict", (_Proxy,), {
    **_methods(("__getitem__", "__contains__", "__iter__", "__len__", "__reversed__",
                "__or__", "__ror__"), ("__setitem__", "__delitem__"), ("__ior__",)),
    "_writes": _DICT_WRITES})
# defaultdict.__getitem__ inserts missing keys: a write.
_DefaultDictProxy = type("SharedDefaultDict", (_DictProxy,), {
    **_methods((), ("__getitem__",)), "_writes": _DICT_WRITES})
_ListProxy = type("SharedList", (_Proxy,), {
    **_methods(("__getitem__", "__contains__", "__iter__", "__len__", "__reversed__",
                "__lt__", "__le__", "__gt__", "__ge__", "__add__", "__mul__", "__rmul__"),
               ("__setitem__", "__delitem__"), ("__iadd__", "__imul__")),
    "_writes": _LIST_WRITES})
_SetProxy = type("SharedSet", (_Proxy,), {
    **_methods(("__contains__", "__iter__", "__len__", "__lt__", "__le__", "__gt__", "__ge__",
                "__or__", "__ror__", "__and__", "__rand__", "__sub__", "__rsub__", "__xor__",
                "__rxor__"), (), ("__ior__", "__iand__", "__isub__", "__ixor__")),
    "_writes": _SET_WRITES})


class _ObjectProxy(_Proxy):
    """Attribute reads and writes of a plain object (method calls count as reads)."""

    __slots__ = ()

    def __setattr__(self, attribute: str, value: Any) -> None:
        _record(self, True)
        setattr(object.__getattribute__(self, "_labotel_target"), attribute, value)

    def __delattr__(self, attribute: str) -> None:
        _record(self, True)
        delattr(object.__getattribute__(self, "_labotel_target"), attribute)

    def __hash__(self) -> int:
        return hash(object.__getattribute__(self, "_labotel_target"))

    __call__ = _forward("__call__", False)


def make_proxy(obj: Any, name: str) -> Any:
    if not isinstance(name, str) or not name:
        raise ValueError(f"shared(): name must be a non-empty string, got {name!r}")
    if isinstance(obj, _Proxy):
        raise ValueError("shared(): the object is already a shared proxy")
    name = plain_key(name)  # an exact, bounded str: hashed under the detector's lock
    if isinstance(obj, collections.defaultdict):
        return _DefaultDictProxy(obj, name)
    if isinstance(obj, dict):
        return _DictProxy(obj, name)
    if isinstance(obj, list):
        return _ListProxy(obj, name)
    if isinstance(obj, (set, frozenset)):
        return _SetProxy(obj, name)
    if isinstance(obj, (str, bytes, int, float, complex, bool, tuple, type(None))):
        raise ValueError(f"shared(): {type(obj).__name__} is immutable; share the object "
                         "that holds it (a dict, list, set or plain object) instead")
    return _ObjectProxy(obj, name)
