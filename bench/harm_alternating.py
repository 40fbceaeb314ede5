"""labotel's cost to the application in one harm scenario, with the machine's drift cancelled.

``bench/harm.py`` compares a scenario's minutes with labotel on against a baseline of
seconds before and after, and its ``--control`` against another run minutes later: on a
shared VM the host's load drifts over minutes (the stolen share moved 0.00-0.09 between
20 s phases here), so a gap of 0.1 between a run and its control can be the host's. This
runs one scenario's application in one process and turns labotel on and off in
alternating phases (off, on, off, ... off), so each phase with labotel on has one with it
off on each side, and prints:

- each on phase's throughput over the mean of the two off phases around it (the drift
  over a phase's length cancels), and the mean of those ratios;
- the worst 1 s and the 5th percentile of 1 s windows with labotel on and with it off,
  each over the off phases' median (as many windows on as off);
- each phase's stolen share and the process's CPU, and the on / off-around ratios again
  with each phase's mean over 1 - its stolen share (the hypervisor's steal, which moved
  0.04-0.49 between phases on a noisy afternoon, taken out as ``harm.py`` does per window).

    uv run python bench/harm_alternating.py hung_collector_grpc [--phase 20] [--rounds 5]

Each on phase is a fresh ``start()`` (with the scenario's options and its labotel-side
threads) whose first ``--settle`` seconds are not counted (``start()`` itself is the
application's call, reported apart by ``harm.py``), ended by ``shutdown()`` after it. So
this measures labotel's steady cost, not what builds up over minutes (an attribution that
a slow leak starts, queues filling): that is ``harm.py``'s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import labotel  # noqa: E402
from bench import harm, harm_scenarios  # noqa: E402


def run_phase(work: harm.Workload, seconds: float) -> dict[str, Any]:
    """Count the workload's 1 s windows for ``seconds`` from now."""
    began, machine, cpu = time.monotonic(), harm.machine_cpu_ticks(), time.process_time()
    time.sleep(seconds)
    ended = time.monotonic()
    windows = work.windows(began, ended)
    return {"windows": windows, "mean": statistics.fmean(windows),
            "stolen": harm.share_stolen(machine, harm.machine_cpu_ticks()),
            "cpu": (time.process_time() - cpu) / (ended - began)}


def labotel_on(scenario: Any, ctx: harm_scenarios.Context, settle: float,
               seconds: float, work: harm.Workload) -> dict[str, Any]:
    ctx.labotel_stop = threading.Event()
    monitor = labotel.start(admin_address="127.0.0.1:0", **scenario.options())
    ctx.monitor_url = monitor.admin_url
    scenario.labotel_side(ctx)
    time.sleep(settle)
    phase = run_phase(work, seconds)
    harm.end_labotel_side(ctx)
    labotel.shutdown()
    return phase


def unstolen_mean(phase: dict[str, Any]) -> float:
    """The phase's mean throughput as if the hypervisor had stolen none of its CPU."""
    return phase["mean"] / max(0.05, 1.0 - phase["stolen"])


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[int(share * (len(ordered) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=sorted(harm_scenarios.REGISTRY))
    parser.add_argument("--phase", type=float, default=20.0, help="seconds counted per phase")
    parser.add_argument("--rounds", type=int, default=5, help="phases with labotel on")
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds after each start() and shutdown() not counted")
    args = parser.parse_args()
    if args.phase < 3 or args.rounds < 1 or args.settle < 0:
        parser.error("--phase must be at least 3, --rounds at least 1, --settle not negative")

    scenario = harm_scenarios.REGISTRY[args.scenario]()
    with harm_scenarios.environment(scenario.environment()):
        # labotel's imports first: under the workload's threads they take seconds
        labotel.start(admin_address="127.0.0.1:0", **scenario.options())
        labotel.shutdown()
        ctx = harm_scenarios.Context()
        work = harm.Workload(ctx)
        work.start()
        scenario.app_side(ctx)
        time.sleep(args.settle)
        off = [run_phase(work, args.phase)]
        on = []
        for _ in range(args.rounds):
            on.append(labotel_on(scenario, ctx, args.settle, args.phase, work))
            time.sleep(args.settle)
            off.append(run_phase(work, args.phase))
        ctx.app_stop.set()
        work.stop.set()
        scenario.close()

    base = statistics.median(w for phase in off for w in phase["windows"])
    print(f"{args.scenario}: {args.rounds} phases of {args.phase:g} s with labotel on, "
          f"{args.rounds + 1} off around them; off phases' median {base:.0f} units/s")
    pairs = []
    for n, phase in enumerate(on):
        around = (off[n]["mean"] + off[n + 1]["mean"]) / 2
        pairs.append(phase["mean"] / around)
        print(f"  off {off[n]['mean'] / base:5.2f} (stolen {off[n]['stolen']:.2f}, cpu "
              f"{off[n]['cpu']:.2f})   on {phase['mean'] / base:5.2f} (stolen "
              f"{phase['stolen']:.2f}, cpu {phase['cpu']:.2f})   on / off around "
              f"{pairs[-1]:.3f}")
    print(f"  off {off[-1]['mean'] / base:5.2f} (stolen {off[-1]['stolen']:.2f}, cpu "
          f"{off[-1]['cpu']:.2f})")
    windows_on = [w / base for phase in on for w in phase["windows"]]
    # as many off windows as on: the off phase after the last on one is left out
    windows_off = [w / base for phase in off for w in phase["windows"]][:len(windows_on)]
    print(f"on / off around, mean of {len(pairs)}: {statistics.fmean(pairs):.3f} "
          f"(lowest {min(pairs):.3f}, highest {max(pairs):.3f})")
    unstolen = [unstolen_mean(phase) / ((unstolen_mean(off[n]) + unstolen_mean(off[n + 1])) / 2)
                for n, phase in enumerate(on)]
    print(f"the same with the stolen share taken out: mean {statistics.fmean(unstolen):.3f} "
          f"(lowest {min(unstolen):.3f}, highest {max(unstolen):.3f})")
    print(f"1 s windows ({len(windows_on)} each, one starting every 0.1 s), over the off "
          f"median: worst on "
          f"{min(windows_on):.2f} / off {min(windows_off):.2f}; 5th percentile on "
          f"{percentile(windows_on, 0.05):.2f} / off {percentile(windows_off, 0.05):.2f}")


if __name__ == "__main__":
    main()
