"""What ``pytest --leaks`` and ``pytest --race`` add to a test run: 1,000 trivial tests.

A sample project (a small package, ``samplepkg``, and 1,000 tests calling it) is run by
pytest in a subprocess, without flags, with ``--leaks``, with ``--race`` (and
``--race-instrument=samplepkg``) and with both, in alternating rounds. For each the
median of the session's own time (from ``pytest_sessionstart`` to
``pytest_sessionfinish``: collection and the tests, without interpreter start-up and the
one-time set-up before the session) and of the whole process is printed, with the cost
per test against the run without flags. Goal: ``--leaks`` costs <= 1 ms per test.

    uv run python bench/pytest_leaks_overhead.py [--tests 1000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

PACKAGE = '''
import threading

_lock = threading.Lock()
_totals = {}


def add(key, amount):
    with _lock:
        _totals[key] = _totals.get(key, 0) + amount
        return _totals[key]


class Account:
    def __init__(self):
        self.balance = 0

    def deposit(self, amount):
        self.balance += amount
        return self.balance
'''

CONFTEST = '''
import os
import time

_started = []


def pytest_sessionstart(session):
    _started.append(time.perf_counter())


def pytest_sessionfinish(session):
    with open(os.environ["BENCH_TIMING_FILE"], "w") as out:
        out.write(repr(time.perf_counter() - _started[0]))
'''

TEST = '''
import samplepkg


def test_{index}():
    account = samplepkg.Account()
    assert account.deposit({index}) == {index}
    assert samplepkg.add("k{index}", 1) == 1
'''

CONFIGS = {
    "no flags": [],
    "--leaks": ["--leaks"],
    "--race": ["--race", "--race-instrument=samplepkg"],
    "--race --leaks": ["--race", "--race-instrument=samplepkg", "--leaks"],
}


def make_project(root: str, tests: int) -> None:
    os.makedirs(os.path.join(root, "samplepkg"))
    os.makedirs(os.path.join(root, "tests"))
    with open(os.path.join(root, "samplepkg", "__init__.py"), "w") as out:
        out.write(textwrap.dedent(PACKAGE))
    with open(os.path.join(root, "conftest.py"), "w") as out:
        out.write(textwrap.dedent(CONFTEST))
    with open(os.path.join(root, "pytest.ini"), "w") as out:
        out.write("[pytest]\n")
    per_file = 100
    for first in range(0, tests, per_file):
        with open(os.path.join(root, "tests", f"test_batch_{first}.py"), "w") as out:
            out.write("".join(textwrap.dedent(TEST).format(index=index)
                              for index in range(first, min(first + per_file, tests))))


def run(root: str, flags: list[str]) -> tuple[float, float]:
    """(session seconds, process seconds) of one pytest run."""
    timing = os.path.join(root, "timing")
    env = dict(os.environ, BENCH_TIMING_FILE=timing, PYTHONPATH=root)
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           *flags, "tests"], cwd=root, env=env, capture_output=True,
                          text=True)
    wall = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"pytest {' '.join(flags)} failed:\n{done.stdout}\n{done.stderr}")
    with open(timing) as source:
        return float(source.read()), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="labotel-bench-") as root:
        make_project(root, args.tests)
        run(root, [])  # warm the file cache and the bytecode of the sample
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in CONFIGS}
        for _ in range(args.rounds):
            for name, flags in CONFIGS.items():
                results[name].append(run(root, flags))
    session = {name: statistics.median(r[0] for r in runs) for name, runs in results.items()}
    wall = {name: statistics.median(r[1] for r in runs) for name, runs in results.items()}
    base_session, base_wall = session["no flags"], wall["no flags"]
    print(f"{args.tests} trivial tests, median of {args.rounds} alternating rounds "
          f"(load {os.getloadavg()[0]:.1f})")
    print(f"{'':16} {'session s':>10} {'ratio':>6} {'ms/test':>8} {'process s':>10} "
          f"{'ratio':>6} {'ms/test':>8}")
    for name in CONFIGS:
        per_test = (session[name] - base_session) / args.tests * 1000
        per_test_wall = (wall[name] - base_wall) / args.tests * 1000
        print(f"{name:16} {session[name]:10.3f} {session[name] / base_session:6.2f} "
              f"{per_test:8.3f} {wall[name]:10.3f} {wall[name] / base_wall:6.2f} "
              f"{per_test_wall:8.3f}")
    leaks_cost = (session["--leaks"] - base_session) / args.tests * 1000
    print(f"--leaks: {leaks_cost:.3f} ms per test (goal <= 1 ms): "
          f"{'met' if leaks_cost <= 1 else 'NOT met'}")


if __name__ == "__main__":
    main()
