"""The Python heap, without walking it on every scrape.

``labotel.python.heap.size`` is what the C allocator has handed out and not taken back,
read from glibc's ``mallinfo2()`` (``uordblks`` + ``hblkhd``): every object larger than
512 bytes, the buffers behind lists, dicts, sets, bytes and large strings, and memory
malloc'ed by C extensions. Python's small-object allocator (pymalloc) maps its 1 MiB
arenas directly with mmap, outside malloc, so small objects are *not* in this figure:
they are counted by ``labotel.python.heap.objects`` (``sys.getallocatedblocks()``, the
blocks pymalloc has handed out: objects of 512 bytes or less). Where glibc is absent the
size is not reported.

Neither reading is free at scale. ``sys.getallocatedblocks()`` reads the header of every
4 KiB pool of every arena (0.1 ms for a million 200-byte objects, growing with the heap).
``mallinfo2()`` walks glibc's free lists: 2 µs on a compact heap, 2.2 ms with 200,000
free chunks in a fragmented one. So a scrape calls neither: it reports the latest
readings, taken at most ``leak_sample_interval`` seconds earlier (by the memory-leak
sampler, or by a scrape when leak detection is off).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

from opentelemetry.metrics import CallbackOptions, Observation

from labotel.component import Component
from labotel.context import Context
from labotel.runtime.reading import SharedReading


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
        "uordblks", "fordblks", "keepcost")]


def _load_mallinfo2():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        function = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    function.restype = _MallInfo2
    function.argtypes = []
    return function


_mallinfo2 = _load_mallinfo2()


def _read_mallinfo2() -> int | None:
    if _mallinfo2 is None:
        return None
    info = _mallinfo2()
    return int(info.uordblks + info.hblkhd)


_malloc = SharedReading(_read_mallinfo2)
_blocks = SharedReading(sys.getallocatedblocks)


def forget_readings() -> None:
    """(In a forked child: the monitor's fork hook) the leak sampler may have been
    inside a reading when another thread forked."""
    _malloc.forget()
    _blocks.forget()


def malloc_in_use(max_age: float = 0.0) -> int | None:
    """Bytes malloc has handed out (all arenas, plus mmap'ed chunks), or None without
    glibc; from a reading at most ``max_age`` seconds old."""
    return _malloc.get(max_age)


def small_object_blocks(max_age: float = 0.0) -> int:
    """Blocks pymalloc has handed out, from a reading at most ``max_age`` seconds old."""
    return _blocks.get(max_age)


class HeapCollector(Component):
    name = "runtime.heap"

    def start(self, context: Context) -> None:
        self.max_age = context.settings.leak_sample_interval
        meter = context.meter
        meter.create_observable_up_down_counter(
            "labotel.python.heap.size", [context.guarded(self.name, self._size)],
            unit="By", description="Bytes in use from the C allocator (glibc mallinfo2): "
            "objects > 512 B, container buffers, C extensions; read at most "
            "leak_sample_interval seconds earlier")
        meter.create_observable_up_down_counter(
            "labotel.python.heap.objects", [context.guarded(self.name, self._objects)],
            unit="{object}", description="Blocks handed out by pymalloc (objects <= 512 B), "
            "read at most leak_sample_interval seconds earlier")

    def _size(self, _: CallbackOptions):
        size = malloc_in_use(self.max_age)
        if size is not None:
            yield Observation(size)

    def _objects(self, _: CallbackOptions):
        yield Observation(small_object_blocks(self.max_age))
