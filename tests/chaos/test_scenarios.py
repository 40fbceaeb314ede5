"""Each scenario of ``bench/harm.py`` for a few seconds: the application sees no exception
and no hang, labotel's memory stays bounded, shutdown is bounded and leaves no thread.

The throughput and latency figures these runs also print are the benchmark's business
(``bench/harm.py`` at full length); here only what must hold at any length is asserted.
"""

from __future__ import annotations

import pytest
from bench.harm_scenarios import REGISTRY

from tests.chaos.support import assert_unharmed, run_scenario


def labotel(result):
    return result.get("labotel", {})


EXTRA_CHECKS = {
    # item 1: attribution really ran while the app built tuples (and none failed)
    "leak_attribution": lambda r: labotel(r)["memory_detector"]["attributions"] >= 1,
    # item 2: the storm's detections are counted, only a budget of them becomes spans and
    # log records; labotel's own growth is not taken for the application's leak
    "race_storm_dead_collector": lambda r: (
        labotel(r)["reporter"]["suppressed"] > 0
        and labotel(r)["memory_detector"]["attributions"] == 0
        and "memory_leak" not in labotel(r)["detections"]),
    # item 3: the races view kept answering while hostile resources were in use
    "hostile_resources": lambda r: (r["figures"]["answers"].get("/admin/monitoring/races 200")
                                    and all(key.endswith(" 200")
                                            for key in r["figures"]["answers"])),
    # item 9: every view answered every time
    "scrape_storm": lambda r: sorted(r["figures"]["answers"]) == sorted(
        f"{path} 200" for path in REGISTRY["scrape_storm"].paths),
    # item 5: 1 MB names are kept as bounded keys
    "huge_resource_names": lambda r: labotel(r)["races"]["shadow_bytes"] < 1 << 20,
}


# Fork and start/shutdown go through the interpreter's own fork and threading machinery,
# which differs between versions: those two run on every Python .ci/run tests.
EVERY_PYTHON = {"fork_storm", "start_shutdown_storm"}


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=() if name in EVERY_PYTHON else pytest.mark.slow)
    for name in REGISTRY])
def test_scenario_does_not_hurt_the_application(name):
    result = run_scenario(name)
    assert_unharmed(result)
    check = EXTRA_CHECKS.get(name)
    if check is not None:
        assert check(result), result


@pytest.mark.slow
def test_the_diagnosis_times_labotels_steps_in_a_scenario():
    """``bench/harm_diagnose.py`` wraps labotel's own step methods: it must still find
    them, and see attribution's walk and bursts in the scenario made for them."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[2] / "bench" / "harm_diagnose.py"
    done = subprocess.run([sys.executable, str(script), "leak_attribution", "--seconds", "8",
                           "--baseline", "3"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "windows under 0.85" in done.stdout
    for step in ("sample", "census walk", "trace back", "TRACING"):
        assert f"  {step} " in done.stdout, (step, done.stdout[-3000:])


@pytest.mark.slow
def test_the_alternating_run_counts_each_on_phase_between_two_off_ones():
    """``bench/harm_alternating.py`` turns labotel on and off in one process: each on phase
    is counted between two off ones, and every phase had windows to count."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[2] / "bench" / "harm_alternating.py"
    done = subprocess.run([sys.executable, str(script), "scrape_storm", "--phase", "3",
                           "--rounds", "2", "--settle", "1"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    pairs = re.findall(r"on / off around (\d+\.\d+)", done.stdout)
    assert len(pairs) == 2 and all(float(p) > 0 for p in pairs), done.stdout
    assert re.search(r"1 s windows \(\d+ each,", done.stdout), done.stdout
