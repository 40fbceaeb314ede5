"""Turns a conflict found in shadow memory into a ``race_condition`` Detection."""

from __future__ import annotations

import time
from typing import Any

from labotel.detect.detection import Detection, Stack
from labotel.detect.keys import display
from labotel.detect.shadow import CLOCK, FRAMES, LOCATION, STATE, TID, WHEN, WRITE, Access
from labotel.digits import ascii_digits
from labotel.frames import is_labotel
from labotel.profile.symbols import qualname

PREVIOUS = "labotel.race.previous."


def _where(access: Access) -> tuple[str, int | None, str]:
    """(file, line, function) of an access; an explicit ``location`` wins over the frame.

    labotel's own frames are skipped: an annotated object (``shared()``) used by
    instrumented code is recorded from inside ``race_runtime``, one frame under the line.
    """
    frames = _without_labotel(access) or access[FRAMES]
    function = qualname(frames[0][0]) if frames else "?"
    location = access[LOCATION]
    if location is not None:
        return (*_split_location(location), function)
    if not frames:
        return "?", None, function
    code, line = frames[0]
    return code.co_filename, line, function


def _split_location(location: Any) -> tuple[str, int | None]:
    """An explicit ``location``, "file:line", as (file, line); kept whole when what follows
    its last colon is not a line number."""
    path, sep, line = str(location).rpartition(":")
    return (path, int(line)) if sep and ascii_digits(line) else (str(location), None)


def _site(where: tuple[str, int | None, str]) -> str:
    path, line, _ = where
    return f"{path}:{line}" if line is not None else path


def _kind(access: Access) -> str:
    return "write" if access[WRITE] else "read"


def _without_labotel(access: Access) -> tuple:
    """The access's (code, line) frames less labotel's own (its wrappers are noise)."""
    return tuple(frame for frame in access[FRAMES] if not is_labotel(frame[0].co_filename))


def _stack(label: str, access: Access) -> Stack:
    frames = tuple((code.co_filename, line, qualname(code))
                   for code, line in _without_labotel(access))
    state = access[STATE]
    return Stack(f"{label} {_kind(access)} by thread {state.tid} ({state.name})", frames)


def fingerprint(previous: Access, current: Access) -> tuple:
    """What makes two races "the same": the pair of locations, in either order."""
    return tuple(sorted((_site_of(current), _site_of(previous))))


def _site_of(access: Access) -> str:
    """``_site(_where(access))`` without naming the function: a storm of new races needs
    the fingerprint of each, the names only of those reported."""
    location = access[LOCATION]
    if location is not None:
        path, line = _split_location(location)
        return f"{path}:{line}" if line is not None else path
    frames = access[FRAMES]
    for code, line in frames:
        if not is_labotel(code.co_filename):
            return f"{code.co_filename}:{line}"
    return f"{frames[0][0].co_filename}:{frames[0][1]}" if frames else "?"


SITE, RMW = 7, 8  # instrumented accesses (``detect.locations``) carry their site
_type_name = type.__dict__["__qualname__"].__get__  # never a metaclass's __getattribute__
_REPR_CHARS = 60
_PLAIN = (int, str, float, bool, bytes)


def _source(access: Access) -> str | None:
    return access[SITE][2] or None if len(access) > SITE and access[SITE] else None


def _describe(access: Access) -> str:
    """"read-modify-write" / "write" / "read", and the source text when known."""
    kind = "read-modify-write" if len(access) > RMW and access[RMW] else _kind(access)
    text = _source(access)
    return f"{kind} `{text}`" if text else kind


def short_id(obj: Any) -> str:
    return f"{id(obj) & 0xFFFFFF:06x}"


def location_name(obj: Any, key: Any, site: tuple, keyobj: Any) -> str:
    """How a location reads in code: ``Account.balance#1a2b3c``, ``myapp.cache.hits``,
    ``cache[42]#1a2b3c``, ``seen#1a2b3c`` (a container as a whole)."""
    if obj is None:  # a module global: key is (module, name)
        return f"{key[0]}.{key[1]}"
    if type(key) is str:
        return f"{_type_name(type(obj))}.{key}#{short_id(obj)}"
    label = site[3] or _type_name(type(obj))
    if key == ("*",):
        return f"{label}#{short_id(obj)}"
    shown = key[1] if keyobj is None else keyobj
    try:
        kind = type(shown)  # compared by identity: a metaclass' __eq__ must not run
        text = repr(shown) if shown is None or any(kind is plain for plain in _PLAIN) else (
            f"<{_type_name(kind)}>")
    except Exception:
        text = "?"
    if len(text) > _REPR_CHARS:
        text = text[:_REPR_CHARS - 1] + "…"
    return f"{label}[{text}]#{short_id(obj)}"


def build(resource: Any, previous: Access, current: Access) -> Detection:
    name = display(resource)
    now_where, before_where = _where(current), _where(previous)
    now_state, before_state = current[STATE], previous[STATE]
    elapsed = max(0.0, current[WHEN] - previous[WHEN])
    attributes: dict[str, Any] = {
        "labotel.race.resource": name,
        "labotel.race.elapsed_seconds": round(elapsed, 6),
        "code.filepath": now_where[0],
        "code.lineno": now_where[1],
        "code.function": now_where[2],
        "labotel.race.write": bool(current[WRITE]),
        "thread.id": current[TID],
        "thread.name": now_state.name,
        PREVIOUS + "code.filepath": before_where[0],
        PREVIOUS + "code.lineno": before_where[1],
        PREVIOUS + "code.function": before_where[2],
        PREVIOUS + "write": bool(previous[WRITE]),
        PREVIOUS + "thread.id": previous[TID],
        PREVIOUS + "thread.name": before_state.name,
        "labotel.race.epochs": (f"{previous[TID]}@{previous[CLOCK]} vs "
                                f"{current[TID]}@{current[CLOCK]}"),
    }
    for prefix, access in (("", current), (PREVIOUS, previous)):
        if _source(access):
            attributes[prefix + "labotel.race.source"] = _source(access)
        if len(access) > RMW:
            attributes[prefix + "labotel.race.access"] = _describe(access).split(" `")[0]
    now_site, before_site = _site(now_where), _site(before_where)
    fingerprint = tuple(sorted((now_site, before_site)))
    summary = (f"race on {name}: {_describe(current)} at {now_site} (thread "
               f"{now_state.name}) unordered with {_describe(previous)} at {before_site} "
               f"(thread {before_state.name})")
    message = "\n".join([
        "RACE CONDITION DETECTED",
        "",
        f"Resource: {name}",
        f"Thread 1: id {current[TID]} ({now_state.name}), Location: {now_site} in "
        f"{now_where[2]}, Write: {str(bool(current[WRITE])).lower()}",
        *([f"          {_describe(current)}"] if len(current) > SITE else []),
        f"Thread 2: id {previous[TID]} ({before_state.name}), Location: {before_site} in "
        f"{before_where[2]}, Write: {str(bool(previous[WRITE])).lower()}",
        *([f"          {_describe(previous)}"] if len(previous) > SITE else []),
        f"The accesses are {elapsed:.3f} s apart and no lock, condition, semaphore, event, "
        "barrier, queue, future or thread start/join orders them.",
        "",
        "ACTION REQUIRED:",
        f"1. Guard every access to {name!r} with the same lock, or hand the data over "
        "through a queue/future instead of sharing it.",
        "2. Read both stack traces below (also on the labotel.race_condition span).",
        "3. Review the concurrent code at both locations.",
        "4. Re-run the stress tests with LABOTEL_RACE_DETECTION=1.",
        "",
        *(line for stack in (_stack("Current", current), _stack("Previous", previous))
          for line in (stack.name + ":", stack.format())),
    ])
    return Detection(
        kind="race_condition", summary=summary, attributes=attributes,
        stacks=(_stack("current", current), _stack("previous", previous)),
        message=message, fingerprint=fingerprint, time=time.time())
