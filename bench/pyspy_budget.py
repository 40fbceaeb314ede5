"""py-spy's own CPU against ``profile_cpu_budget``, with few and many idle threads.

For each thread count, three CPU profiles at 100 Hz in a row, each ``--seconds`` long:
with no budget to speak of (``profile_cpu_budget=1``: py-spy samples as asked, as before
the budget reached it), then twice with the default budget (the first rate predicted from
the built-in figures, the second from what py-spy used in the first). Printed: the rate
py-spy sampled at, its CPU as a share of one core and that share over the budget, with
its attach (a one-off per profile) and without, and the CPU of labotel's own thread that
notes thread names while py-spy runs (spaced by ``pyspy.NAMES_CPU_SHARE``).

    uv run python bench/pyspy_budget.py [--seconds 10] [--threads 10 300 1000]
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from labotel.profile import backends, cpu, pyspy  # noqa: E402

DEFAULT_BUDGET = 0.01


def profile_once(chooser: backends.Backends,
                 seconds: float) -> tuple[int, float, float, float]:
    """(rate sampled at, py-spy's CPU share of one core, the same without its attach, the
    names thread's share) of one CPU profile."""
    profile = chooser.start(cpu.CPU, 100, lambda: None, seconds)
    assert profile.backend == "py-spy", "py-spy could not profile this process"
    (names,) = [t for t in threading.enumerate() if t.name == pyspy.NAMES_THREAD]
    names_clock = time.pthread_getcpuclockid(names.ident)
    threading.Event().wait(seconds)
    names_cpu = time.clock_gettime(names_clock)
    profile.stop()
    attach = profile._attached[1]
    return (profile.rate_hz, profile.own_cpu_seconds / seconds,
            (profile.own_cpu_seconds - attach) / seconds, names_cpu / seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, nargs="+", default=[10, 300, 1000])
    args = parser.parse_args()
    release = threading.Event()
    idle: list[threading.Thread] = []
    print(f"{'threads':>8} {'run':<26} {'Hz':>4} {'py-spy CPU':>11} {'/ budget':>9} "
          f"{'sampling only':>14} {'/ budget':>9} {'names thread':>13}")
    try:
        for count in sorted(args.threads):
            while threading.active_count() < count:
                thread = threading.Thread(target=release.wait, daemon=True)
                thread.start()
                idle.append(thread)
            unbounded = backends.Backends(backends.PY_SPY, cpu_budget=1.0)
            bounded = backends.Backends(backends.PY_SPY, cpu_budget=DEFAULT_BUDGET)
            for label, chooser in (("budget 1 (as before)", unbounded),
                                   ("budget 0.01, first", bounded),
                                   ("budget 0.01, learnt", bounded)):
                rate, share, sampling, names = profile_once(chooser, args.seconds)
                print(f"{threading.active_count():>8} {label:<26} {rate:>4} "
                      f"{100 * share:>10.2f}% {share / DEFAULT_BUDGET:>9.2f} "
                      f"{100 * sampling:>13.2f}% {sampling / DEFAULT_BUDGET:>9.2f} "
                      f"{100 * names:>12.2f}%", flush=True)
    finally:
        release.set()
        for thread in idle:
            thread.join()


if __name__ == "__main__":
    main()
