"""The robust growth test every leak verdict rests on, on synthetic series."""

import math
import random

import pytest

from labotel.detect.memory import kept_growing
from labotel.detect.trend import theil_sen_slope, thin, trend

MB = 1024 * 1024
TIMES = [i * 5.0 for i in range(13)]  # the default window: 60 s sampled every 5 s


def test_steady_ramp_is_growth():
    values = [100 * MB + t * MB for t in TIMES]  # 1 MB/s
    found = trend(TIMES, values)
    assert found.slope == pytest.approx(MB)
    assert found.sustained and found.growing(64 * 1024)
    assert found.largest_step_share == pytest.approx(1 / 12)


def test_ramp_under_sawtooth_noise_is_growth():
    rng = random.Random(7)
    values = [100 * MB + t * MB + rng.uniform(0, 20 * MB) for t in TIMES]
    found = trend(TIMES, values)
    assert 0.5 * MB < found.slope < 1.5 * MB
    assert found.growing(64 * 1024)


def test_cache_that_filled_then_plateaued_is_not_growth():
    values = [min(t, 20.0) * 3 * MB for t in TIMES]  # 60 MB after 20 s, then flat
    found = trend(TIMES, values)
    assert not found.sustained
    assert not found.growing(64 * 1024)


def test_one_big_allocation_is_not_growth_even_in_the_middle():
    for step_at in range(1, 13):
        values = [50 * MB + (200 * MB if i >= step_at else 0) for i in range(13)]
        assert not trend(TIMES, values).growing(64 * 1024), step_at


def test_sawtooth_churn_without_leak_is_not_growth():
    values = [100 * MB + 30 * MB * ((i * 7) % 5) / 4 for i in range(13)]
    assert not trend(TIMES, values).growing(64 * 1024)
    periodic = [100 * MB + 20 * MB * math.sin(i) for i in range(13)]
    assert not trend(TIMES, periodic).growing(64 * 1024)


def test_slow_growth_below_the_minimum_rate_is_not_reported():
    values = [100 * MB + t * 10 * 1024 for t in TIMES]  # 10 KiB/s
    found = trend(TIMES, values)
    assert found.sustained and not found.growing(64 * 1024)


def test_theil_sen_ignores_outliers():
    times = list(range(10))
    values = [2.0 * t for t in times]
    values[3] = 1000.0
    values[7] = -1000.0
    assert theil_sen_slope(times, values) == pytest.approx(2.0)
    assert theil_sen_slope([1.0], [5.0]) == 0.0


def test_thin_keeps_ends_and_bounds_the_work():
    times = list(range(1000))
    thinned_times, thinned_values = thin(times, [t * 2 for t in times], limit=50)
    assert len(thinned_times) == 50
    assert thinned_times[0] == 0 and thinned_times[-1] == 999
    assert thinned_values == [t * 2 for t in thinned_times]


def test_too_few_points_say_nothing():
    assert not trend([0.0, 1.0], [0.0, 100.0]).growing(1.0)
    assert trend([], []).points == 0


def test_counts_growth_needs_the_minimum_rise():
    times = [0.0, 5.0, 10.0, 15.0]
    assert trend(times, [0, 50, 100, 150]).growing(0.1, min_rise=10)
    assert not trend(times, [0, 2, 4, 6]).growing(0.1, min_rise=10)
    assert not trend(times, [0, 50, 50, 50]).growing(0.1, min_rise=10)  # a pool, created once


def test_growth_must_go_on_all_through_the_attribution():
    times = TIMES[:5]  # the default 20 s of tracing, sampled every 5 s
    window = trend(TIMES, [max(0.0, t - 10) * MB for t in TIMES])  # grew for the last 50 s
    leak = trend(times, [t * MB for t in times])
    stopped = trend(times, [min(t, 10.0) * 3 * MB for t in times])  # a fill that ended
    assert kept_growing(leak, window, 64 * 1024)
    assert stopped.slope > 64 * 1024 and stopped.rise > 0  # what was enough before
    assert not kept_growing(stopped, window, 64 * 1024)
    assert not kept_growing(trend(times[:2], [0, MB]), window, 64 * 1024)  # too few points
    assert not kept_growing(leak, None, 64 * 1024)
