"""Which sampler takes ``/debug/pprof/profile`` and ``/wall``: py-spy from outside the
process where it may trace it, else the in-process sampler thread.

``profile_backend`` decides: ``auto`` (the default) uses py-spy when it is installed (the
``labotel[pyspy]`` extra, so installing it is the opt-in) and the kernel lets it trace
this process, and falls back to the in-process sampler otherwise; ``py-spy`` insists on it
(a profile it cannot take fails with py-spy's reason); ``in-process`` never starts it.
Whether py-spy may trace the process is learnt by trying: a refusal costs a fraction of a
second at the start of a profile, and permissions can change, so every profile tries again.
A process with more threads than py-spy reads is never handed to it (see
``PY_SPY_MAX_THREADS``), nor one where even py-spy's lowest rate would pass
``profile_cpu_budget`` (see ``pyspy_rate``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from labotel import fork_safe
from labotel.config import PROFILE_BACKENDS
from labotel.profile import pyspy, pyspy_rate
from labotel.profile.cpu import RunningProfile, Sampler, Unavailable
from labotel.runtime.thread_frames import current_frames

CHOICES = PROFILE_BACKENDS
AUTO, PY_SPY, IN_PROCESS = CHOICES
NOT_INSTALLED = "py-spy is not installed (pip install 'labotel[pyspy]')"
# py-spy gives up on an interpreter with more than 4096 thread states: every sample fails
# and it never says it started, so a profile waited out its 10 s start (py-spy using about
# a core meanwhile) before falling back. A margin for threads started while it attaches.
PY_SPY_THREAD_LIMIT = 4096
PY_SPY_MAX_THREADS = 4000


def thread_count() -> int:
    """The interpreter's threads, as py-spy reads them (threading's, and any other)."""
    return max(threading.active_count(), len(current_frames()))


def too_many_threads_for_py_spy(count: int | None = None) -> str:
    """Why py-spy cannot read this process's threads, or "" when it can."""
    count = thread_count() if count is None else count
    if count <= PY_SPY_MAX_THREADS:
        return ""
    return (f"this process has {count} threads and py-spy reads at most "
            f"{PY_SPY_THREAD_LIMIT}")


class Backends:
    """Starts each profile on the backend ``profile_backend`` asks for, and remembers
    which one took the last profile of each kind (for the index page)."""

    def __init__(self, choice: str = AUTO, cpu_budget: float = 0.01,
                 find_py_spy: Callable[[], str | None] = pyspy.find_binary):
        if choice not in CHOICES:
            raise ValueError(f"profile_backend: expected one of {', '.join(CHOICES)}, "
                             f"got {choice!r}")
        self.choice = choice
        self.cpu_budget = cpu_budget
        self.pyspy_rates = pyspy_rate.PySpyRate(cpu_budget)  # py-spy keeps to it too
        self._find_py_spy = find_py_spy
        self._lock = fork_safe.lock()
        self._last: dict[str, str] = {}

    def start(self, mode: str, rate_hz: int, on_failure: Callable[[], None],
              seconds: float | None = None) -> RunningProfile:
        refusal = ""
        if self.choice != IN_PROCESS:
            binary = self._find_py_spy()
            if binary is None:
                refusal = NOT_INSTALLED
            elif crowd := too_many_threads_for_py_spy(threads := thread_count()):
                refusal = crowd
            else:
                try:
                    profile = pyspy.PySpyProfile(binary, mode, rate_hz, seconds, on_failure,
                                                 rates=self.pyspy_rates, threads=threads)
                    profile.start()
                except Unavailable as error:
                    refusal = str(error)
                except Exception as error:
                    # not a refusal but a fault (a thread that cannot start, say): counted,
                    # and told like a refusal, so auto still profiles in-process
                    on_failure()
                    refusal = f"py-spy failed to start: {type(error).__name__}: {error}"
                else:
                    self._remember(mode, f"{pyspy.version(binary)}, from outside the process")
                    return profile
            if self.choice == PY_SPY:
                self._remember(mode, f"none: {refusal} (profile_backend={PY_SPY})")
                raise Unavailable(f"{refusal} (profile_backend={PY_SPY})")
        sampler = Sampler(mode, rate_hz, on_failure, self.cpu_budget)
        sampler.note = f"py-spy not used: {refusal}" if refusal else ""
        sampler.start()
        self._remember(mode, "the in-process sampler" + (f" ({refusal})" if refusal else ""))
        return sampler

    def _remember(self, mode: str, text: str) -> None:
        with self._lock:
            self._last[mode] = text

    def reset_after_fork(self) -> None:
        """The child's profiles are its own."""
        self._last = {}

    def describe(self) -> str:
        """One line for the index page: the setting and what took the last profiles."""
        with self._lock:
            last = dict(self._last)
        if self.choice == IN_PROCESS:
            text = "the in-process sampler (profile_backend=in-process)"
        elif self._find_py_spy() is None:
            text = f"the in-process sampler: {NOT_INSTALLED}"
        else:
            text = (f"py-spy where it may trace this process, else the in-process sampler "
                    f"(profile_backend={self.choice})")
        for mode, used in sorted(last.items()):
            text += f"; last {mode} profile: {used}"
        return text
