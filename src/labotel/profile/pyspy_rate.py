"""The rate py-spy samples at, chosen so that its CPU keeps to ``profile_cpu_budget``.

py-spy reads every thread's state at each sample (and in wall mode, ``--idle``, unwinds
every thread's stack), so its CPU grows with the number of threads. Measured here
(2026-12-04, py-spy 0.4.3, idle threads, CPU seconds per tick with its attach left out):
CPU mode 66 us with 2 threads, 83 with 10, 249 with 100, 565 with 300, 2.1 ms with
1,000, 3.8 ms with 2,000; wall mode 0.33 ms with 2, 1.1 ms with 10, 8.4 ms with 100 and
about a whole core from 300 threads on (it falls behind 100 Hz). At 100 Hz that is 0.8%
of a core in CPU mode with 10 threads but 21% with 1,000, and in wall mode 11% with 10
threads, 84% with 100: cores the application may want. So py-spy keeps to the same budget as the
in-process sampler: a profile starts at the rate asked for, or lower when py-spy's
predicted CPU at that rate is over the budget, and the profile's comment says so. A rate
cannot change while py-spy runs (a stopped py-spy catches up in a burst when let go on),
so the prediction is made up front: a fixed part and a part per thread, fitted to those
figures, scaled by what py-spy really used in long enough profiles of that mode. Where even
py-spy's lowest rate (1 Hz: ``--rate`` is a whole number) would pass the budget, py-spy is
not used (``Unavailable``): the in-process sampler spaces its ticks by the CPU they cost.
"""

from __future__ import annotations

import dataclasses
import math

from labotel import fork_safe
from labotel.profile.cpu import Unavailable

# (fixed seconds, seconds per thread) of py-spy's CPU per tick, fitted to the figures above
PRIOR = {"cpu": (60e-6, 1.9e-6), "wall": (250e-6, 85e-6)}
MIN_RATE_HZ = 1  # py-spy's --rate is a whole number of Hz
# Shorter profiles are not learnt from: too few ticks to tell the cost per tick
MIN_LEARNING_SECONDS = 5.0
# Nor one whose py-spy took fewer than this share of the ticks asked: stopped (SIGSTOP, a
# frozen container) or starved, it then catches up in a burst cheaper per tick than usual
MIN_TICKS_TAKEN = 0.5
# How far one profile may move the learnt scale: at once up to this factor when py-spy was
# dearer than thought (the budget is at stake), and by half the ratio, at most a halving,
# when it was cheaper (a higher rate), so that one odd profile cannot lift the rate far
MAX_SCALE_RISE = 4.0
MAX_SCALE_FALL = 2.0


def predicted_cost(mode: str, threads: int, scale: float = 1.0) -> float:
    """Seconds of py-spy's CPU per tick with ``threads`` threads."""
    fixed, per_thread = PRIOR.get(mode, PRIOR["wall"])
    return scale * (fixed + per_thread * max(0, threads))


@dataclasses.dataclass(frozen=True)
class Choice:
    rate_hz: int
    asked_hz: int
    seconds_per_sample: float  # py-spy's predicted CPU per sample
    threads: int

    @property
    def lowered(self) -> bool:
        return self.rate_hz < self.asked_hz


class PySpyRate:
    """Chooses each py-spy profile's rate and learns from what py-spy used."""

    def __init__(self, cpu_budget: float) -> None:
        self.cpu_budget = cpu_budget
        self._lock = fork_safe.lock()
        self._scale: dict[str, float] = {}  # mode -> what py-spy used over the prediction

    def choose(self, mode: str, asked_hz: int, threads: int) -> Choice:
        with self._lock:
            scale = self._scale.get(mode, 1.0)
        cost = predicted_cost(mode, threads, scale)
        affordable = int(self.cpu_budget / cost) if cost > 0 else asked_hz
        if affordable < MIN_RATE_HZ:
            raise Unavailable(
                f"py-spy's {mode} sampling of {threads} threads would use about "
                f"{100 * MIN_RATE_HZ * cost:.2g}% of one core even at its lowest rate, "
                f"{MIN_RATE_HZ} Hz ({1e3 * cost:.1f} ms a sample), over profile_cpu_budget "
                f"({100 * self.cpu_budget:g}% of one core)")
        return Choice(min(asked_hz, affordable), asked_hz, cost, threads)

    def learn(self, mode: str, choice: Choice, cpu_seconds: float, ticks: int,
              seconds: float, fell_behind: bool = False) -> None:
        """py-spy used ``cpu_seconds`` for the ``ticks`` it took over ``seconds``;
        ``fell_behind``: py-spy said it was behind in sampling (a stall)."""
        if seconds < MIN_LEARNING_SECONDS or ticks <= 0 or cpu_seconds <= 0 or fell_behind:
            return
        if ticks < MIN_TICKS_TAKEN * choice.rate_hz * seconds:
            return
        observed = cpu_seconds / ticks / predicted_cost(mode, choice.threads)
        with self._lock:
            previous = self._scale.get(mode, 1.0)
            if observed >= previous:
                scale = min(observed, previous * MAX_SCALE_RISE)
            else:
                scale = max(math.sqrt(previous * observed), previous / MAX_SCALE_FALL)
            self._scale[mode] = scale


def describe(choice: Choice, cpu_budget: float) -> str:
    """The comment's words for a lowered rate ("" when py-spy samples as asked)."""
    if not choice.lowered:
        return ""
    return (f"; sampled at {choice.rate_hz} Hz, not the {choice.asked_hz} Hz asked, to keep "
            f"py-spy within profile_cpu_budget ({100 * cpu_budget:g}% of one core: about "
            f"{1e6 * choice.seconds_per_sample:.0f} us a sample with {choice.threads} "
            f"threads)")
