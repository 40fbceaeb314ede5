"""Instrumented code touching hostile objects: their hooks run application code (which
is instrumented too) at every point where labotel might be tempted to call them."""

import threading

touched = {}


class Meta(type):
    def __getattribute__(cls, name):
        if name in ("__qualname__", "__name__"):
            raise RuntimeError("hostile metaclass")
        return super().__getattribute__(name)

    def __hash__(cls):
        raise RuntimeError("hostile metaclass hash")

    def __eq__(cls, other):
        raise RuntimeError("hostile metaclass eq")


class Hostile(metaclass=Meta):
    """Every hook re-enters instrumented code that itself writes shared state."""

    def __init__(self):
        self.n = 0

    def __getattr__(self, name):
        touched[name] = touched.get(name, 0) + 1  # instrumented read-modify-write
        raise AttributeError(name)

    def __hash__(self):
        touched["hash"] = touched.get("hash", 0) + 1
        return 42

    def __eq__(self, other):
        touched["eq"] = touched.get("eq", 0) + 1
        return self is other

    def __repr__(self):
        raise RuntimeError("hostile repr")

    __str__ = __repr__


class NoWeakref:
    __slots__ = ("n",)

    def __init__(self):
        self.n = 0


class Lock:
    """An object whose hooks take a real lock: labotel must not hold one of its own."""

    lock = threading.Lock()

    def __hash__(self):
        with self.lock:
            return 7

    def __eq__(self, other):
        with self.lock:
            return self is other


def bump_attr(obj):
    obj.n += 1


def bump_slots(obj):
    obj.n += 1


def missing_attr(obj):
    try:
        return obj.missing
    except AttributeError:
        return None


def bump_item(d, key):
    d[key] = d.get(key, 0) + 1


def contains_then_store(d, key):
    if key not in d:
        d[key] = 1


def bump_bytes(buffer):
    buffer[0] += 1
