"""What the profiling benchmarks share: waiting for a profile to be under way, and the CPU
its sampler has used so far, whichever backend took it."""

from __future__ import annotations

import threading
import time

import psutil

import labotel
from labotel.profile.cpu import thread_cpu_clock


def wait_until_profiling(mode: str = "cpu", timeout: float = 30) -> str:
    """Block until the running labotel is taking a ``mode`` profile; its backend's name."""
    slot = getattr(labotel.monitor.current().component("profile"), mode)
    deadline = time.monotonic() + timeout
    while slot.running is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {mode} profile started within {timeout} s")
        time.sleep(0.001)
    return slot.running.backend


def sampler_cpu_seconds(backend: str, mode: str = "cpu") -> float:
    """CPU used so far by the sampler: the in-process sampler's thread, or py-spy's
    process (outside this one: not in its process CPU time)."""
    if backend == "py-spy":
        total = 0.0
        for child in psutil.Process().children():
            try:
                if "py-spy" in " ".join(child.cmdline()):
                    times = child.cpu_times()
                    total += times.user + times.system
            except psutil.Error:
                pass
        return total
    for thread in threading.enumerate():
        if thread.name == f"labotel-{mode}-profiler":
            clock = thread_cpu_clock(thread)
            if clock is not None:
                return time.clock_gettime(clock)
    return 0.0
