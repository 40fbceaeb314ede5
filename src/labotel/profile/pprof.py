"""The pprof ``profile.proto`` format, and a builder that interns stacks into it.

The message classes are generated at import time from a ``FileDescriptorProto`` (the
schema of github.com/google/pprof/proto/profile.proto, field numbers included), so the
wire encoding is protobuf's own. ``ProfileBuilder`` keeps functions and locations
interned across samples: a sampler pays one dict lookup per frame after the first sight.

Locations carry pseudo addresses: ``id(code) + bytecode offset`` for Python frames (the
analogue of a return PC, resolvable through ``/debug/pprof/symbol``), a stable hash for
frames known only by file and line. The single mapping sets ``has_functions`` and friends
so ``pprof`` never tries to symbolize.
"""

from __future__ import annotations

import gzip
import time
import zlib
from collections.abc import Iterable, Sequence
from types import CodeType, FrameType
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from labotel.profile import symbols
from labotel.runtime import thread_frames

_FD = descriptor_pb2.FieldDescriptorProto
_MAX_DEPTH = 256  # deeper stacks keep their innermost frames (Go keeps 64)


def _schema() -> descriptor_pb2.FileDescriptorProto:
    file = descriptor_pb2.FileDescriptorProto(
        name="labotel/perftools/profile.proto", package="perftools.profiles", syntax="proto3")

    def message(name: str, *fields: tuple[str, int, int, str | None, bool]) -> None:
        proto = file.message_type.add(name=name)
        for field_name, number, kind, type_name, repeated in fields:
            field = proto.field.add(
                name=field_name, number=number, type=kind,
                label=_FD.LABEL_REPEATED if repeated else _FD.LABEL_OPTIONAL)
            if type_name:
                field.type_name = ".perftools.profiles." + type_name

    i64, u64, b, msg, s = _FD.TYPE_INT64, _FD.TYPE_UINT64, _FD.TYPE_BOOL, _FD.TYPE_MESSAGE, \
        _FD.TYPE_STRING
    message("Profile",
            ("sample_type", 1, msg, "ValueType", True), ("sample", 2, msg, "Sample", True),
            ("mapping", 3, msg, "Mapping", True), ("location", 4, msg, "Location", True),
            ("function", 5, msg, "Function", True), ("string_table", 6, s, None, True),
            ("drop_frames", 7, i64, None, False), ("keep_frames", 8, i64, None, False),
            ("time_nanos", 9, i64, None, False), ("duration_nanos", 10, i64, None, False),
            ("period_type", 11, msg, "ValueType", False), ("period", 12, i64, None, False),
            ("comment", 13, i64, None, True), ("default_sample_type", 14, i64, None, False))
    message("ValueType", ("type", 1, i64, None, False), ("unit", 2, i64, None, False))
    message("Sample", ("location_id", 1, u64, None, True), ("value", 2, i64, None, True),
            ("label", 3, msg, "Label", True))
    message("Label", ("key", 1, i64, None, False), ("str", 2, i64, None, False),
            ("num", 3, i64, None, False), ("num_unit", 4, i64, None, False))
    message("Mapping", ("id", 1, u64, None, False), ("memory_start", 2, u64, None, False),
            ("memory_limit", 3, u64, None, False), ("file_offset", 4, u64, None, False),
            ("filename", 5, i64, None, False), ("build_id", 6, i64, None, False),
            ("has_functions", 7, b, None, False), ("has_filenames", 8, b, None, False),
            ("has_line_numbers", 9, b, None, False), ("has_inline_frames", 10, b, None, False))
    message("Location", ("id", 1, u64, None, False), ("mapping_id", 2, u64, None, False),
            ("address", 3, u64, None, False), ("line", 4, msg, "Line", True),
            ("is_folded", 5, b, None, False))
    message("Line", ("function_id", 1, u64, None, False), ("line", 2, i64, None, False))
    message("Function", ("id", 1, u64, None, False), ("name", 2, i64, None, False),
            ("system_name", 3, i64, None, False), ("filename", 4, i64, None, False),
            ("start_line", 5, i64, None, False))
    return file


_pool = descriptor_pool.DescriptorPool()
_pool.Add(_schema())
Profile = message_factory.GetMessageClass(_pool.FindMessageTypeByName("perftools.profiles.Profile"))

Label = tuple[str, str | int]
Stack = tuple[int, ...]  # location ids, innermost first


class LocationInfo:
    """What text formats need about one location (the proto holds the same facts)."""

    __slots__ = ("address", "function", "filename", "line", "offset")

    def __init__(self, address: int, function: str, filename: str, line: int, offset: int):
        self.address = address
        self.function = function
        self.filename = filename
        self.line = line
        self.offset = offset


class ProfileBuilder:
    """Interned functions/locations plus samples aggregated by (stack, labels)."""

    def __init__(self, sample_types: Sequence[tuple[str, str]], period_type: tuple[str, str],
                 period: int, default_sample_type: str | None = None):
        self.sample_types = list(sample_types)
        self.period_type = period_type
        self.period = period
        self.default_sample_type = default_sample_type
        self.start_ns = time.time_ns()
        self.duration_ns: int | None = None  # set when sampling ends; else "until encoded"
        self.locations: list[LocationInfo] = []
        self._function_ids: dict[Any, int] = {}
        self._functions: list[tuple[str, str, int]] = []  # (name, filename, start line)
        self._location_functions: list[int] = []
        self._by_code: dict[tuple[CodeType, int], int] = {}
        self._by_line: dict[tuple[str, int, str], int] = {}
        self.samples: dict[tuple[Stack, tuple[Label, ...]], list[int]] = {}
        self.comments: list[str] = []  # shown by `go tool pprof -comments`

    # -- interning ---------------------------------------------------------------------
    def _function(self, key: Any, name: str, filename: str, start_line: int) -> int:
        function_id = self._function_ids.get(key)
        if function_id is None:
            self._functions.append((name, filename, start_line))
            function_id = self._function_ids[key] = len(self._functions)
        return function_id

    def _location(self, function_id: int, info: LocationInfo) -> int:
        self.locations.append(info)
        self._location_functions.append(function_id)
        return len(self.locations)

    def code_location(self, code: CodeType, lasti: int, lineno: int | None) -> int:
        key = (code, lasti)
        location_id = self._by_code.get(key)
        if location_id is None:
            name = symbols.code_name(code)
            function_id = self._function(code, name, code.co_filename, code.co_firstlineno)
            location_id = self._location(function_id, LocationInfo(
                symbols.code_address(code) + max(lasti, 0), name, code.co_filename,
                lineno or code.co_firstlineno, max(lasti, 0)))
            self._by_code[key] = location_id
        return location_id

    def line_location(self, filename: str, lineno: int, function: str | None = None) -> int:
        """A location known only by file and line (tracemalloc, creation sites)."""
        key = (filename, lineno, function or "")
        location_id = self._by_line.get(key)
        if location_id is None:
            name, start = symbols.line_function(filename, lineno)
            if function and name == "?":
                name = function
            function_id = self._function((filename, name), name, filename, start)
            address = zlib.crc32(f"{filename}:{lineno}:{name}".encode()) << 8
            location_id = self._location(function_id, LocationInfo(
                address, name, filename, lineno, 0))
            self._by_line[key] = location_id
        return location_id

    def named_line_location(self, filename: str, lineno: int, name: str) -> int:
        """A location whose function name is already known (frames read by py-spy)."""
        key = (filename, lineno, name)
        location_id = self._by_line.get(key)
        if location_id is None:
            function_id = self._function((filename, name), name, filename, 0)
            address = zlib.crc32(f"{filename}:{lineno}:{name}".encode()) << 8
            location_id = self._location(function_id, LocationInfo(
                address, name, filename, lineno, 0))
            self._by_line[key] = location_id
        return location_id

    def frame_stack(self, frame: FrameType | None) -> Stack:
        """Location ids of ``frame`` and its callers, innermost first (the hot path)."""
        by_code = self._by_code
        ids: list[int] = []
        append = ids.append
        for caller in thread_frames.stack(frame, _MAX_DEPTH):
            code = caller.f_code
            lasti = caller.f_lasti
            location_id = by_code.get((code, lasti))
            if location_id is None:
                location_id = self.code_location(code, lasti, caller.f_lineno)
            append(location_id)
        return tuple(ids)

    def frames_stack(self, frames: Iterable[FrameType]) -> Stack:
        """Location ids of an explicit frame list (coroutine chains), innermost first."""
        return tuple(self.code_location(f.f_code, f.f_lasti, f.f_lineno) for f in frames)

    # -- samples -----------------------------------------------------------------------
    def add(self, stack: Stack, values: Sequence[int], labels: tuple[Label, ...] = ()) -> None:
        key = (stack, labels)
        current = self.samples.get(key)
        if current is None:
            self.samples[key] = list(values)
        else:
            for index, value in enumerate(values):
                current[index] += value

    def subtract(self, older: dict[tuple[Stack, tuple[Label, ...]], list[int]]) -> None:
        """Turn these samples into the change since ``older`` (same builder): Go's delta."""
        for key, values in older.items():
            self.add(key[0], [-v for v in values], key[1])
        self.samples = {k: v for k, v in self.samples.items() if any(v)}

    # -- output ------------------------------------------------------------------------
    def to_message(self, duration_ns: int | None = None) -> Any:
        strings: dict[str, int] = {"": 0}

        def index(text: str) -> int:
            position = strings.get(text)
            if position is None:
                position = strings[text] = len(strings)
            return position

        profile = Profile()
        for kind, unit in self.sample_types:
            profile.sample_type.add(type=index(kind), unit=index(unit))
        profile.period_type.type = index(self.period_type[0])
        profile.period_type.unit = index(self.period_type[1])
        profile.period = self.period
        profile.time_nanos = self.start_ns
        if duration_ns is None:
            duration_ns = self.duration_ns
        profile.duration_nanos = (time.time_ns() - self.start_ns if duration_ns is None
                                  else duration_ns)
        if self.default_sample_type:
            profile.default_sample_type = index(self.default_sample_type)
        profile.mapping.add(id=1, memory_start=0, memory_limit=0, filename=index("python"),
                            has_functions=True, has_filenames=True, has_line_numbers=True)
        for function_id, (name, filename, start) in enumerate(self._functions, 1):
            profile.function.add(id=function_id, name=index(name), system_name=index(name),
                                 filename=index(filename), start_line=start)
        for location_id, info in enumerate(self.locations, 1):
            location = profile.location.add(id=location_id, mapping_id=1, address=info.address)
            location.line.add(function_id=self._location_functions[location_id - 1],
                              line=info.line)
        for (stack, labels), values in self.samples.items():
            sample = profile.sample.add(location_id=stack, value=values)
            for key, value in labels:
                if isinstance(value, int):
                    sample.label.add(key=index(key), num=value)
                else:
                    sample.label.add(key=index(key), str=index(value))
        profile.comment.extend(index(comment) for comment in self.comments)
        profile.string_table.extend(strings)
        return profile

    def encode(self, duration_ns: int | None = None) -> bytes:
        """The gzip-compressed profile, as Go's runtime/pprof writes it."""
        return gzip.compress(self.to_message(duration_ns).SerializeToString(), compresslevel=6)


def decode(data: bytes) -> Any:
    """Parse a (possibly gzip-compressed) profile; for tests and tools."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    profile = Profile()
    profile.ParseFromString(data)
    return profile
