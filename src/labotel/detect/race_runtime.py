"""What instrumented code calls (``detect.rewrite``): perform the operation, record it.

Each function does exactly what the expression it replaces did, then, while detection is
on, records the access with Python's semantics (``detect.locations``): a read only marks
the location in the thread's own table for the current epoch (no lock); a write goes to
the shared shadow state once per location and epoch, as a read-modify-write when the
same thread read the location earlier in the epoch. While detection is off every
function costs one global check beyond the operation.

Which calls of an instrumented function run its instrumented copy is decided by the
module's schedule table (``schedules``): every call while the function is cold (its first
``COLD_CALLS``), then one in ten, then one in a hundred, down to ``race_sample_floor``.
Synchronization is always recorded (it is hooked, not rewritten), so a call that is not
recorded can hide a race but never invent one: a pair reported is a pair of real
accesses that happens-before leaves unordered.

No labotel lock is held while application code runs: ``getattr``/``d[k]``/``hash(key)``
happen before anything is recorded, and keys that are not plain values are reduced to a
hash with the thread marked busy.
"""

from __future__ import annotations

import functools
import itertools
import logging
import operator
import threading
from collections import OrderedDict, defaultdict
from collections import deque as _deque
from collections.abc import Callable
from types import ModuleType as _ModuleType
from typing import Any

from labotel import signal_context
from labotel.compat import cpython
from labotel.detect.keys import MAX_KEY_CHARS
from labotel.detect.rewrite import AUG_OPS, PREFIX
from labotel.detect.vectorclock import _local, current, usable

log = logging.getLogger(__name__)
_detector: Any = None  # races.Detector while detection with instrumentation is on
_getframe = cpython.getframe
_ops: tuple[Callable[[Any, Any], Any], ...] = tuple(function for _, function in AUG_OPS)
_thread_local = threading.local  # the C type (_thread._local) where it exists

WRITE, RMW = 2, 4  # flags of a location in the thread's table of this epoch's writes
WHOLE = ("*",)  # a container as a whole: len(), iteration, list membership, append
# Locations a thread remembers reading, and writing, in one epoch before that table is
# reset (a read before the reset no longer pairs with a later write: missed, never
# invented): ~1 MB per thread at most.
MAX_SEEN = 4096


COLD_CALLS = 1000  # calls of a function that are all recorded
STAGE_CALLS = 10_000  # calls spent at each share before the next, smaller one
MAX_TABLES = 10_000  # instrumented modules whose tables follow enable()/disable()
_never: Callable[[], bool] = itertools.repeat(False).__next__
_tables: list[tuple[str, list]] = []  # (module, its schedule table)
_prefixes: tuple[str, ...] = ()
_floor = 1.0


def enable(detector: Any, prefixes: tuple[str, ...] = (), sample_floor: float = 1.0) -> None:
    """Record instrumented code of modules matching ``prefixes`` from now on."""
    global _detector, _prefixes, _floor
    _detector, _prefixes, _floor = detector, prefixes, sample_floor
    _rearm()


def disable() -> None:
    """Every instrumented function runs its copy as written (one call of ``_never``)."""
    global _detector, _prefixes
    _detector, _prefixes = None, ()
    _rearm()


def _rearm() -> None:
    for module, table in list(_tables):
        _arm(module, table)


def schedules(module: str, count: int) -> list:
    """The schedule table of an instrumented module (``detect.rewrite``): entry N says
    whether this call of the module's function N is recorded."""
    table: list = [_never] * count
    try:
        if len(_tables) < MAX_TABLES:
            _tables.append((module, table))
        _arm(module, table)
    except Exception as error:  # the application's import must not fail: its code runs as written
        if signal_context.raised_by_a_handler(error):
            raise
        log.debug("labotel: arming %s's schedule table failed", module, exc_info=True)
    return table


def _arm(module: str, table: list) -> None:
    from labotel.detect.import_hook import matches  # (it imports this module)

    if _detector is not None and matches(module, _prefixes):
        table[:] = [functools.partial(_first_call, table, index) for index in range(len(table))]
    else:
        table[:] = [_never] * len(table)


def _first_call(table: list, index: int) -> bool:
    """A function's first call since enable(): give it its own schedule."""
    if _detector is None:
        table[index] = _never
        return False
    table[index] = schedule = _schedule(_floor)
    return schedule()


def _schedule(floor: float) -> Callable[[], bool]:
    """True for each of the first ``COLD_CALLS`` calls, then for one call in ten (for
    ``STAGE_CALLS`` calls), one in a hundred, ... and finally one in ``1 / floor``; all
    in C (itertools), shared patterns, no lock."""
    if floor >= 1:
        return itertools.repeat(True).__next__
    stages: list = [itertools.repeat(True, COLD_CALLS)]
    period = 10
    while period * floor < 0.999:
        stages.append(itertools.chain.from_iterable(
            itertools.repeat(_pattern(period), STAGE_CALLS // period)))
        period *= 10
    stages.append(itertools.chain.from_iterable(itertools.repeat(_pattern(round(1 / floor)))))
    return itertools.chain(*stages).__next__


@functools.lru_cache(maxsize=16)
def _pattern(period: int) -> tuple[bool, ...]:
    return (True,) + (False,) * (period - 1)


# --- recording -------------------------------------------------------------------------

_state = usable  # the calling thread's state, None while the detector is busy on it


def _read(obj: Any, key: Any) -> None:
    # (inlined by hand in ga and gi, the most frequent: a call costs as much as the rest)
    try:
        state = _local.state
    except AttributeError:
        state = current()
    if state.busy:
        return
    reads = state.reads
    marker = (id(obj), key)
    if marker not in reads:
        _add_read(reads, marker)


def _add_read(reads: set, marker: tuple) -> None:
    if len(reads) >= MAX_SEEN:
        reads.clear()
    reads.add(marker)


def _write(obj: Any, key: Any, site: tuple, keyobj: Any = None) -> None:
    try:
        state = _local.state
    except AttributeError:
        state = current()
    if state.busy:
        return
    writes = state.writes
    marker = (id(obj), key)
    flags = writes.get(marker, 0)
    if marker in state.reads:
        state.reads.discard(marker)
        if flags & RMW:  # this epoch's read-modify-write of it is already recorded
            return
        writes[marker] = WRITE | RMW
        rmw = True
    elif flags & WRITE:
        return  # written before in this epoch: already recorded
    else:
        if len(writes) >= MAX_SEEN:
            writes.clear()
        writes[marker] = WRITE
        rmw = False
    detector = _detector
    if detector is None or (obj is not None and issubclass(type(obj), _thread_local)):
        return
    if type(obj) is _ModuleType and type(key) is str:
        # `module.x = v` from elsewhere is the same location as `global x; x = v` inside
        module_name = obj.__dict__.get("__name__")
        if type(module_name) is str:
            obj, marker, key = None, (id(None), (module_name, key)), (module_name, key)
    detector.located(obj, marker, key, rmw, state, _getframe(2), site, keyobj)


def _item(key: Any) -> Any:
    """The location of item ``key``: ('i', plain value), or None when it cannot be had."""
    kind = type(key)
    if kind is int or (kind is str and len(key) <= MAX_KEY_CHARS):
        return ("i", key)
    return ("i", _plain(key))


def _plain(key: Any) -> Any:
    kind = type(key)
    if kind is int or kind is float or kind is bool or key is None:
        return key
    if kind is str or kind is bytes:
        return key if len(key) <= MAX_KEY_CHARS else ("#", hash(key))
    state = _state()
    if state is None:
        return ("#", 0)
    state.busy = True  # the key's own __hash__ / __iter__ may be instrumented code
    try:
        if issubclass(kind, tuple) and len(key) <= 16:
            return tuple(_plain(item) for item in tuple.__iter__(key))
        return ("#", hash(key))
    except Exception as error:
        if signal_context.raised_by_a_handler(error):
            raise  # the application's own, from a signal handler run in there
        return ("#?", id(key))
    finally:
        state.busy = False


# --- attributes ------------------------------------------------------------------------

def ga(obj: Any, name: str, site: tuple) -> Any:
    value = getattr(obj, name)
    if _detector is not None:
        try:
            state = _local.state
        except AttributeError:
            state = current()
        if state.busy:
            return value
        marker = (id(obj), name)
        if marker not in state.reads:
            _add_read(state.reads, marker)
    return value


def sa(value: Any, obj: Any, name: str, site: tuple) -> None:
    setattr(obj, name, value)
    if _detector is not None:
        # _write's early returns inlined (a call costs as much as they do): this epoch's
        # write, or read-modify-write, of the location is already recorded
        try:
            state = _local.state
        except AttributeError:
            state = current()
        if not state.busy:
            marker = (id(obj), name)
            flags = state.writes.get(marker, 0)
            if flags & RMW or (flags and marker not in state.reads):
                state.reads.discard(marker)
                return
        _write(obj, name, site)


def wa(obj: Any, name: str, site: tuple) -> None:
    """After a store the rewrite left in place (``a.x = b.y = v``)."""
    if _detector is not None:
        _write(obj, name, site)


def da(obj: Any, name: str, site: tuple) -> None:
    delattr(obj, name)  # one atomic operation: a write
    if _detector is not None:
        _write(obj, name, site)


# A read-modify-write runs as one C-level step, as the native ``obj.x += v``/``d[k] += v``
# does: a map's next() reads, operates and writes with no check point between, where a
# signal handler (or another thread) could run. Called step by step, a handler's own
# ``counter.n += 1`` between this read and write was lost (2 873 of 16 590 in a probe).
def aa(obj: Any, name: str, op: int, value: Any, site: tuple) -> None:
    for _ in map(setattr, (obj,), (name,),  # noqa: B007 - one step, taken for its effect
                 map(_ops[op], map(getattr, (obj,), (name,)), (value,))):
        break
    if _detector is not None:
        _read(obj, name)
        _write(obj, name, site)


# --- items -----------------------------------------------------------------------------

def gi(obj: Any, key: Any, site: tuple) -> Any:
    value = obj[key]
    if _detector is not None:
        kind = type(key)
        location = ("i", key) if kind is int or kind is str and len(key) <= MAX_KEY_CHARS else (
            _item(key))
        try:
            state = _local.state
        except AttributeError:
            state = current()
        if state.busy:
            return value
        marker = (id(obj), location)
        if marker not in state.reads:
            _add_read(state.reads, marker)
    return value


def si(value: Any, obj: Any, key: Any, site: tuple) -> None:
    obj[key] = value
    if _detector is not None:
        _write(obj, _item(key), site, key)


def di(obj: Any, key: Any, site: tuple) -> None:
    del obj[key]  # one atomic operation: a write
    if _detector is not None:
        _write(obj, _item(key), site, key)


def ai(obj: Any, key: Any, op: int, value: Any, site: tuple) -> None:
    for _ in map(operator.setitem, (obj,), (key,),  # noqa: B007 - one step (see aa)
                 map(_ops[op], map(operator.getitem, (obj,), (key,)), (value,))):
        break
    if _detector is not None:
        location = _item(key)
        _read(obj, location)
        _write(obj, location, site, key)


# --- slices: a read or write of a mutable sequence as a whole ----------------------------

def _sequence(obj: Any) -> bool:
    kind = type(obj)
    return kind is list or kind is _deque or issubclass(kind, (list, _deque, bytearray))


def gs(obj: Any, lower: Any, upper: Any, step: Any, site: tuple) -> Any:
    value = obj[lower:upper:step]
    if _detector is not None and _sequence(obj):
        _read(obj, WHOLE)
    return value


def ss(value: Any, obj: Any, lower: Any, upper: Any, step: Any, site: tuple) -> None:
    obj[lower:upper:step] = value
    if _detector is not None and _sequence(obj):
        _write(obj, WHOLE, site)


def ds(obj: Any, lower: Any, upper: Any, step: Any, site: tuple) -> None:
    del obj[lower:upper:step]
    if _detector is not None and _sequence(obj):
        _write(obj, WHOLE, site)


def _keyed(container: Any) -> bool:
    """Membership in ``container`` is per key (mappings, sets), not the whole sequence."""
    kind = type(container)
    return not (kind is list or kind is tuple or kind is str or kind is bytes
                or kind is _deque or issubclass(kind, (list, tuple, str, bytes, _deque)))


def isin(item: Any, container: Any, site: tuple) -> bool:
    result = item in container
    if _detector is not None:
        _read(container, _item(item) if _keyed(container) else WHOLE)
    return result


def ln(obj: Any, site: tuple) -> int:
    result = len(obj)
    if _detector is not None:
        _read(obj, WHOLE)
    return result


def it(obj: Any, site: tuple) -> Any:
    if _detector is not None:
        kind = type(obj)
        if kind is list or kind is dict or kind is set or kind is _deque or issubclass(
                kind, (list, dict, set, _deque)):
            _read(obj, WHOLE)
    return obj


# --- builtin containers' methods ---------------------------------------------------------


# name -> (write?, per key?) for each builtin container family
_DICT = {"get": (False, True), "setdefault": (True, True), "pop": (True, True),
         "keys": (False, False), "values": (False, False), "items": (False, False),
         "copy": (False, False), "update": (True, False), "clear": (True, False),
         "popitem": (True, False), "move_to_end": (True, False)}
_LIST = {"append": (True, False), "extend": (True, False), "insert": (True, False),
         "pop": (True, False), "remove": (True, False), "clear": (True, False),
         "sort": (True, False), "reverse": (True, False), "index": (False, False),
         "count": (False, False), "copy": (False, False)}
_SET = {"add": (True, True), "discard": (True, True), "remove": (True, True),
        "pop": (True, False), "clear": (True, False), "update": (True, False),
        "difference_update": (True, False), "intersection_update": (True, False),
        "symmetric_difference_update": (True, False), "copy": (False, False)}
_DEQUE = {"append": (True, False), "appendleft": (True, False), "extend": (True, False),
          "extendleft": (True, False), "pop": (True, False), "popleft": (True, False),
          "insert": (True, False), "remove": (True, False), "clear": (True, False),
          "rotate": (True, False), "reverse": (True, False), "index": (False, False),
          "count": (False, False), "copy": (False, False)}
_FAMILIES = ((dict, _DICT), (list, _LIST), (set, _SET), (_deque, _DEQUE))
_by_type: dict[int, tuple[type, dict | None]] = {
    id(kind): (kind, table) for kind, table in
    ((dict, _DICT), (OrderedDict, _DICT), (defaultdict, _DICT), (list, _LIST), (set, _SET),
     (_deque, _DEQUE))}
MAX_TYPES = 1024


def _table(kind: type) -> dict | None:
    """The method table of ``kind``'s builtin container family (keyed by id: a metaclass'
    own ``__hash__`` never runs), or None."""
    entry = _by_type.get(id(kind))
    if entry is not None and entry[0] is kind:
        return entry[1]
    table = None
    for family, methods in _FAMILIES:
        if issubclass(kind, family):
            table = methods
            break
    if len(_by_type) < MAX_TYPES:
        _by_type[id(kind)] = (kind, table)
    return table


def cm(obj: Any, name: str, site: tuple, /, *args: Any, **kwargs: Any) -> Any:
    method = getattr(obj, name)
    if _detector is None:
        return method(*args, **kwargs)
    entry = _by_type.get(id(type(obj)))
    table = entry[1] if entry is not None and entry[0] is type(obj) else _table(type(obj))
    kind = table.get(name) if table is not None else None
    if kind is None:
        return method(*args, **kwargs)
    write, per_key = kind
    location = _item(args[0]) if per_key and args else WHOLE
    if write:
        result = method(*args, **kwargs)
        if _detector is not None:
            _write(obj, location, site, args[0] if per_key and args else None)
        return result
    _read(obj, location)
    return method(*args, **kwargs)


# --- module globals ----------------------------------------------------------------------

def rg(value: Any, name: str, site: tuple) -> Any:
    if _detector is not None:
        _read(None, (site[0], name))
    return value


def wg(name: str, site: tuple) -> None:
    if _detector is not None:
        _write(None, (site[0], name), site)


FUNCTIONS = {PREFIX + name: function for name, function in (
    ("ga", ga), ("sa", sa), ("wa", wa), ("da", da), ("aa", aa), ("gi", gi), ("si", si),
    ("di", di), ("ai", ai), ("gs", gs), ("ss", ss), ("ds", ds), ("in", isin), ("ln", ln),
    ("it", it), ("cm", cm), ("rg", rg), ("wg", wg), ("schedules", schedules))}
