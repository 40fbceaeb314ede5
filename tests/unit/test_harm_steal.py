"""bench/harm.py's steal arithmetic on made-up counters: the stolen share of a window, and
the worst second with the steal taken out (what the host took is removed, what labotel
took stays)."""

from __future__ import annotations

import pytest
from bench import harm


def probes_with(samples: list[tuple[float, int, int]]) -> harm.Probes:
    probes = harm.Probes(fork_every=1.0)  # not started: no thread, no fork
    probes.machine = samples
    return probes


def test_the_stolen_share_is_read_between_interpolated_counters():
    probes = probes_with([(0.0, 0, 0), (1.0, 100, 100), (2.0, 200, 100)])
    assert probes.stolen_share(0.0, 1.0) == pytest.approx(0.5)
    assert probes.stolen_share(1.0, 2.0) == pytest.approx(0.0)
    # busy 100 and steal 50 between the interpolated points 0.5 and 1.5
    assert probes.stolen_share(0.5, 1.5) == pytest.approx(50 / 150)
    assert probes.stolen_share(-1.0, 1.0) is None  # no sample before the window
    assert probes.stolen_share(1.0, 3.0) is None  # ... nor after it


def workload_with(units_per_bucket: list[int]) -> harm.Workload:
    workload = harm.Workload(ctx=None, workers=1)  # not started
    workload.origin = 0.0
    workload.buckets[0][:len(units_per_bucket)] = units_per_bucket
    return workload


def test_a_second_the_host_took_half_of_is_not_counted_against_labotel():
    # buckets of 0.1 s, 100 units each; labotel on over 10-20 s: seconds 10-12 at half
    # speed, half of the CPU time wanted stolen; second 15-16 at 0.8 with nothing stolen
    # (labotel's own cost)
    units = [100] * 250
    units[100:120] = [50] * 20
    units[150:160] = [80] * 10
    workload = workload_with(units)
    samples = []
    busy = steal = 0
    for tenth in range(251):
        t = tenth / 10
        samples.append((t, busy, steal))
        stolen_now = 10 <= t < 12
        busy += 5 if stolen_now else 10
        steal += 5 if stolen_now else 0
    probes = probes_with(samples)

    figures = harm.unstolen_figures(workload, probes, off=[(0.0, 9.9), (20.0, 24.9)],
                                    on=(10.0, 19.9))
    raw = min(workload.windows(10.0, 19.9)) / 1000
    assert raw == pytest.approx(0.5)  # the stolen seconds
    # they scale back to full speed; labotel's own 0.8 is not scaled, and is the worst
    assert figures["worst_window_ratio_unstolen"] == pytest.approx(0.8, abs=0.01)
    assert figures["worst_window_ratio_off_unstolen"] == pytest.approx(1.0)
    assert figures["stolen_share_max"] == pytest.approx(0.5, abs=0.01)
    assert figures["stolen_share_median_off"] == pytest.approx(0.0)
