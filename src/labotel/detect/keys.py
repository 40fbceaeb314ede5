"""Resources and tokens as plain keys, made on entry, before any labotel lock is taken.

The race detector keeps shadow state per resource and a clock per ``happens_before``
token in dicts behind one raw lock. A dict lookup runs the key's ``__hash__`` and
``__eq__``: with the application's own objects as keys, that is application code running
under labotel's lock (a ``__eq__`` that records an access deadlocks the thread, then every
thread that records one). So what the detector stores is always built from exact
``str``/``int``/``float``/``bytes``/``bool``/``None`` and tuples of them, whose hashing and
comparison never leave C:

- those values (and ``str`` subclasses, by their characters) are their own key;
- a ``dict``, ``list``, ``set`` or ``bytearray`` is keyed by identity (its text changes as
  it is mutated);
- anything else is keyed by ``str(value)``, called here, outside every labotel lock (the
  caller marks its thread busy, so labotel calls made from inside ``__str__`` are ignored).

Keys are bounded: text longer than ``MAX_KEY_CHARS`` keeps its first 200 characters, its
length and its hash, so 300 distinct 1 MB names cost a few hundred bytes each, not 300 MB.
"""

from __future__ import annotations

from typing import Any

MAX_KEY_CHARS = 256
_PREFIX_CHARS = 200
_MAX_TUPLE_ITEMS = 16
_SCALARS = frozenset({int, float, bool, type(None), complex})
_MUTABLE = frozenset({dict, list, set, bytearray})

Key = Any  # str | int | float | bool | None | bytes | tuple of keys


def plain_key(value: Any) -> Key:
    """A key equal for equal plain values, whose hash and ``==`` run no application code."""
    kind = type(value)
    if kind is str:
        return value if len(value) <= MAX_KEY_CHARS else _shorten(value)
    if kind in _SCALARS:
        return value
    if kind is bytes:
        return value if len(value) <= MAX_KEY_CHARS else ("bytes", _shorten(value.hex()))
    if kind is tuple and len(value) <= _MAX_TUPLE_ITEMS:
        return tuple(plain_key(item) for item in value)
    if kind in _MUTABLE:
        return (kind.__name__, id(value))
    return plain_text(value)


def plain_text(value: Any) -> str:
    """``value`` as an exact, bounded ``str`` (``str()`` is called for non-strings)."""
    if issubclass(type(value), str):  # type(): never the object's own __class__
        text = str.__str__(value)  # a str subclass's characters, not its __str__
    else:
        text = str(value)
        if type(text) is not str:
            text = str.__str__(text)
    return text if len(text) <= MAX_KEY_CHARS else _shorten(text)


def _shorten(text: str) -> str:
    return f"{text[:_PREFIX_CHARS]}…[{len(text)} chars, #{hash(text) & 0xFFFFFFFFFFFFFFFF:016x}]"


def display(key: Key) -> str:
    """How a key is shown in reports."""
    return key if type(key) is str else repr(key) if type(key) in (tuple, bytes) else str(key)
