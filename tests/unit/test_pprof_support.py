"""Shared helpers for the pprof tests: real HTTP against a started labotel, and workloads
whose function names the profiles must show (no tests in this module)."""

from __future__ import annotations

import dataclasses
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import labotel
from labotel.profile import pprof


@dataclasses.dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()


def get(url: str, method: str = "GET", body: bytes | None = None, timeout: float = 60) -> Reply:
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Reply(response.status, dict(response.headers.items()), response.read())
    except urllib.error.HTTPError as error:
        return Reply(error.code, dict(error.headers.items()), error.read())


def start(**options) -> labotel.Monitor:
    labotel.shutdown()
    options.setdefault("admin_address", "127.0.0.1:0")
    options.setdefault("service_name", "pprof-test")
    return labotel.start(**options)


def function_names(profile) -> set[str]:
    return {profile.string_table[f.name] for f in profile.function}


def location_functions(profile) -> dict[int, str]:
    """Location id -> function name."""
    names = {f.id: profile.string_table[f.name] for f in profile.function}
    return {loc.id: names[loc.line[0].function_id] for loc in profile.location}


def label_values(profile, function: str, key: str) -> set[str]:
    """Values of label ``key`` on samples whose stack contains ``function``."""
    functions = location_functions(profile)
    found = set()
    for sample in profile.sample:
        if any(functions[i] == function for i in sample.location_id):
            found |= {profile.string_table[label.str] for label in sample.label
                      if profile.string_table[label.key] == key}
    return found


def top_function(profile, value_index: int = -1) -> str:
    """The function with the most flat (self) value, as ``pprof -top`` ranks them."""
    functions = location_functions(profile)
    flat: dict[str, int] = {}
    for sample in profile.sample:
        leaf = functions[sample.location_id[0]]
        flat[leaf] = flat.get(leaf, 0) + sample.value[value_index]
    return max(flat, key=flat.get)


def sample_types(profile) -> list[tuple[str, str]]:
    return [(profile.string_table[t.type], profile.string_table[t.unit])
            for t in profile.sample_type]


def decode(body: bytes):
    assert body[:2] == b"\x1f\x8b", "profiles are gzip-compressed"
    return pprof.decode(body)


def wait_for_thread(name: str, timeout: float = 10) -> None:
    """Block until a thread called ``name`` runs (a sampler has started)."""
    deadline = time.monotonic() + timeout
    while not any(t.name == name for t in threading.enumerate()):
        assert time.monotonic() < deadline, f"no thread {name!r} after {timeout} s"
        time.sleep(0.001)


BACKENDS = ["in-process", "py-spy"]


def wait_for_profile(mode: str = "cpu", timeout: float = 10):
    """Block until the running labotel is taking a ``mode`` profile; returns it."""
    slot = getattr(labotel.monitor.current().component("profile"), mode)
    deadline = time.monotonic() + timeout
    while slot.running is None:
        assert time.monotonic() < deadline, f"no {mode} profile after {timeout} s"
        time.sleep(0.001)
    return slot.running


def py_spy_children() -> list:
    """py-spy processes this process started and that still run."""
    import psutil

    def running_py_spy(child: psutil.Process) -> bool:
        try:
            return (child.status() != psutil.STATUS_ZOMBIE
                    and "py-spy" in " ".join(child.cmdline()))
        except psutil.Error:  # it ended (or became a zombie) while we looked
            return False

    return [child for child in psutil.Process().children() if running_py_spy(child)]


def comments(profile) -> list[str]:
    return [profile.string_table[index] for index in profile.comment]


# -- workloads with known names ------------------------------------------------------------
def hot_spin(stop: threading.Event) -> None:
    total = 0
    while not stop.is_set():
        for i in range(20_000):
            total += i * i


def blocked_in_known_function(release: threading.Event) -> None:
    release.wait()


def allocate_blocks(keep: list, count: int = 2000) -> None:
    for _ in range(count):
        keep.append(bytearray(1024))


@contextmanager
def running(target, *args, name: str, count: int = 1) -> Iterator[list[threading.Thread]]:
    """Run ``target(event, *args)`` on ``count`` daemon threads until the block ends."""
    event = threading.Event()
    threads = [threading.Thread(target=target, args=(event, *args), name=f"{name}-{i}",
                                daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    try:
        yield threads
    finally:
        event.set()
        for thread in threads:
            thread.join(5)
