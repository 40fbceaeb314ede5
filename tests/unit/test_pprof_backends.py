"""Who takes CPU and wall profiles: py-spy from outside where the kernel lets it trace the
process, else the in-process sampler; the profile and the index page say which."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import threading

import pytest

import labotel
from labotel.profile import backends, cpu, pyspy, pyspy_rate
from labotel.profile.pprof import ProfileBuilder
from tests.unit.test_pprof_support import (
    BACKENDS,
    comments,
    decode,
    get,
    hot_spin,
    location_functions,
    py_spy_children,
    running,
    start,
    wait_for_profile,
)

ROOT = pathlib.Path(__file__).resolve().parents[2]
SPIN = f"{hot_spin.__module__}.hot_spin"


def test_py_spy_is_installed_for_the_tests():
    binary = pyspy.find_binary()
    assert binary is not None, "the dev group installs py-spy (uv sync)"
    assert pyspy.version(binary).startswith("py-spy ")


def test_without_py_spy_auto_uses_the_in_process_sampler_and_py_spy_fails_clearly():
    chooser = backends.Backends(backends.AUTO, find_py_spy=lambda: None)
    sampler = chooser.start(cpu.CPU, 100, lambda: None)
    try:
        assert sampler.backend == "in-process"
    finally:
        builder = sampler.stop()
    assert "py-spy not used: py-spy is not installed (pip install 'labotel[pyspy]')" in \
        builder.comments[0]
    assert "in-process sampler: py-spy is not installed" in chooser.describe()
    strict = backends.Backends(backends.PY_SPY, find_py_spy=lambda: None)
    with pytest.raises(cpu.Unavailable, match=r"not installed .*profile_backend=py-spy"):
        strict.start(cpu.CPU, 100, lambda: None)
    off = backends.Backends(backends.IN_PROCESS, find_py_spy=lambda: pytest.fail("looked"))
    off.start(cpu.WALL, 100, lambda: None).stop()


def test_a_py_spy_that_fails_to_start_is_a_clean_fallback(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "temporary"))
    (tmp_path / "temporary").mkdir()
    failing = tmp_path / "py-spy"
    failing.write_text("#!/bin/sh\necho 'Error: no such luck' >&2\nexit 1\n")
    failing.chmod(0o755)
    chooser = backends.Backends(backends.AUTO, find_py_spy=lambda: str(failing))
    sampler = chooser.start(cpu.CPU, 100, lambda: None)
    assert sampler.backend == "in-process"
    assert "py-spy not used: py-spy cannot profile this process: no such luck" in \
        sampler.stop().comments[0]
    assert not list((tmp_path / "temporary").iterdir()), "the failed attempt left files"


@pytest.mark.parametrize("value", ["pyspy", "both", ""])
def test_an_unknown_backend_is_refused_naming_the_option(value):
    with pytest.raises(ValueError, match="profile_backend"):
        labotel.start(admin_address="", profile_backend=value)


def test_the_index_page_says_which_backend_takes_profiles():
    monitor = start(profile_backend="auto")
    try:
        url = monitor.admin_url + "/debug/pprof/"
        before = get(url).text
        assert "CPU and wall profiles are taken by: <span id=backend>py-spy where it may " \
               "trace this process, else the in-process sampler (profile_backend=auto)" in before
        assert get(url + "wall?seconds=1").status == 200
        after = get(url).text
        assert "; last wall profile: py-spy 0." in after and "from outside the process" in after
    finally:
        labotel.shutdown()
    monitor = start(profile_backend="in-process")
    try:
        page = get(monitor.admin_url + "/debug/pprof/").text
        assert "taken by: <span id=backend>the in-process sampler (profile_backend=in-process)" \
            in page
    finally:
        labotel.shutdown()


def spinner_stacks(profile) -> set[tuple[tuple[str, int], ...]]:
    """(function, line) stacks of the spinner thread's samples, outermost first."""
    functions = location_functions(profile)
    lines = {loc.id: loc.line[0].line for loc in profile.location}
    return {tuple((functions[i], lines[i]) for i in reversed(s.location_id))
            for s in profile.sample
            if any(profile.string_table[lb.str] == "spinner-0" for lb in s.label)}


def test_both_backends_make_the_same_profile_of_the_same_code():
    profiles = {}
    for backend in BACKENDS:
        monitor = start(profile_backend=backend, profile_cpu_budget=1.0)
        try:
            with running(hot_spin, name="spinner"):
                profiles[backend] = decode(
                    get(monitor.admin_url + "/debug/pprof/profile?seconds=1").body)
        finally:
            labotel.shutdown()
    ours, theirs = profiles["in-process"], profiles["py-spy"]
    for profile in (ours, theirs):
        assert [(profile.string_table[t.type], profile.string_table[t.unit])
                for t in profile.sample_type] == [("samples", "count"), ("cpu", "nanoseconds")]
        assert profile.string_table[profile.period_type.type] == "cpu"
        assert profile.period == 10_000_000
        assert all(s.value[1] == s.value[0] * profile.period for s in profile.sample)
    # The same functions, files and lines on the spinner's stacks, and its thread label.
    assert spinner_stacks(ours) & spinner_stacks(theirs)
    outermost = {stack[:3] for stack in spinner_stacks(ours) | spinner_stacks(theirs)}
    assert [[f for f, _ in stack] for stack in outermost] == [[
        "threading.Thread._bootstrap", "threading.Thread._bootstrap_inner",
        "threading.Thread.run"]]
    # py-spy's samples end in the spinner, or in the stop.is_set() it calls every 20 000
    # rounds (caught there once in a CI run)
    leaves = {s[-1][0] for s in spinner_stacks(theirs)}
    assert SPIN in leaves and leaves <= {SPIN, "threading.Event.is_set"}, leaves
    assert all(SPIN in [f for f, _ in stack] for stack in spinner_stacks(theirs))
    for profile in (ours, theirs):
        files = {profile.string_table[f.name]: profile.string_table[f.filename]
                 for f in profile.function}
        assert files[SPIN] == hot_spin.__code__.co_filename
    assert "taken by py-spy" in comments(theirs)[0]
    assert "in-process sampler" in comments(ours)[0]


def test_py_spy_raw_lines_become_samples_with_thread_labels(tmp_path):
    profile = pyspy.PySpyProfile("py-spy", cpu.WALL, 100)
    profile._names = {4242: "odd;name"}
    profile._directory = str(tmp_path)
    (tmp_path / "profile.txt").write_text(
        "thread (4242): odd;name;Thread.run (/lib/threading.py:982);work (/app/x.py:7) 3\n"
        "thread (77): worker;<module> (/app/main.py:1);Worker.go (/app/x.py:12) 2\n"
        "thread (0x1F);run (/app/y.py:3) 1\n"
        "thread (5): weird;no location here 4\n"
        "thread (6): no frames at all 2\n"
        "thread (7) 1\n"
        "not a sample line\n")
    builder = ProfileBuilder([("samples", "count"), ("wall", "nanoseconds")],
                             ("wall", "nanoseconds"), 10_000_000)
    profile._convert(builder)
    decoded = decode(builder.encode())
    functions = location_functions(decoded)
    got = {}
    for sample in decoded.sample:
        (label,) = sample.label
        got[decoded.string_table[label.str]] = (
            [functions[i] for i in sample.location_id], list(sample.value))
    assert got == {
        "odd;name": (["work", "Thread.run"], [3, 30_000_000]),
        "worker": (["Worker.go", "<module>"], [2, 20_000_000]),
        "thread-31": (["run"], [1, 10_000_000]),
        "weird": (["no location here"], [4, 40_000_000]),
    }


def _capabilities() -> int:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


REFUSED = r"""
import ctypes, json, pathlib, sys
sys.path.insert(0, sys.argv[1])
status = pathlib.Path("/proc/self/status").read_text()
effective = int(next(l for l in status.splitlines() if l.startswith("CapEff:")).split()[1], 16)
assert not effective & (1 << 19), "CAP_SYS_PTRACE is still there"
# Not dumpable: the kernel refuses ptrace from anyone without CAP_SYS_PTRACE, as it does for
# a process that changed credentials, or (with Yama) for a child tracing its parent.
assert ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0) == 0  # PR_SET_DUMPABLE
import labotel
from tests.unit.test_pprof_support import comments, decode, get, hot_spin, running, top_function
out = {}
for backend in ("auto", "py-spy"):
    monitor = labotel.start(admin_address="127.0.0.1:0", profile_backend=backend)
    url = monitor.admin_url + "/debug/pprof/"
    with running(hot_spin, name="spinner"):
        reply = get(url + "profile?seconds=1")
    result = out[backend] = {"status": reply.status, "index": get(url).text}
    if reply.status == 200:
        profile = decode(reply.body)
        result.update(top=top_function(profile), comments=comments(profile))
    else:
        result["text"] = reply.text
    labotel.shutdown()
print(json.dumps(out))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or shutil.which("setpriv") is None
                    or not _capabilities() & (1 << 19),
                    reason="needs Linux, setpriv (util-linux) and CAP_SYS_PTRACE to drop")
def test_where_the_kernel_refuses_ptrace_auto_falls_back_and_py_spy_says_why():
    command = ["setpriv", "--inh-caps=-sys_ptrace", "--bounding-set=-sys_ptrace",
               sys.executable, "-c", REFUSED, str(ROOT)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    auto = out["auto"]
    assert auto["status"] == 200 and auto["top"] == SPIN  # profiled all the same
    (comment,) = auto["comments"]
    assert comment.startswith("labotel cpu profile: in-process sampler at 100 Hz")
    assert "py-spy not used: py-spy cannot profile this process:" in comment
    assert "Permission denied" in comment
    assert "last cpu profile: the in-process sampler (py-spy cannot profile" in auto["index"]
    strict = out["py-spy"]
    assert strict["status"] == 500
    assert strict["text"].startswith("CPU profiling failed: py-spy cannot profile this "
                                     "process:")
    assert "Permission denied" in strict["text"] and "(profile_backend=py-spy)" in \
        strict["text"]


def test_stopping_py_spy_ends_its_process_and_removes_its_files():
    binary = pyspy.find_binary()
    profile = pyspy.PySpyProfile(binary, cpu.CPU, 100, seconds=1)
    profile.start()
    pid = profile._process.pid
    stopper = threading.Thread(target=profile.stop)
    stopper.start()
    stopper.join(15)
    profile.stop()  # idempotent
    assert not stopper.is_alive()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not os.path.exists(profile._directory)


def test_a_py_spy_killed_mid_profile_is_a_counted_500_and_leaves_nothing_behind():
    monitor = start(profile_backend="py-spy")
    try:
        replies: list = []
        request = threading.Thread(target=lambda: replies.append(
            get(monitor.admin_url + "/debug/pprof/profile?seconds=2")))
        request.start()
        assert wait_for_profile().backend == "py-spy"
        (child,) = py_spy_children()
        child.kill()  # as the OOM killer would
        request.join(15)
        reply = replies[0]
        assert reply.status == 500 and reply.headers["X-Go-Pprof"] == "1"
        assert "CPU profiling failed" in reply.text and "py-spy wrote no profile" in reply.text
        metrics = get(monitor.admin_url + "/metrics").text
        assert 'labotel_internal_errors_total{labotel_component="profile.cpu"' in metrics
        assert not py_spy_children()
        assert get(monitor.admin_url + "/debug/pprof/profile?seconds=1").status == 200
    finally:
        labotel.shutdown()


def _names_thread_cannot_start(monkeypatch, error: BaseException) -> None:
    """py-spy's names thread fails to start, as in a process at its thread limit."""
    start_thread = threading.Thread.start

    def start_unless_names(thread: threading.Thread) -> None:
        if thread.name == pyspy.NAMES_THREAD:
            raise error
        start_thread(thread)

    monkeypatch.setattr(threading.Thread, "start", start_unless_names)


def test_a_start_that_fails_once_py_spy_runs_ends_it_and_is_a_clear_fallback(tmp_path,
                                                                             monkeypatch):
    """Only a refusal used to end py-spy: a names thread that could not start left
    ``py-spy record`` sampling for seconds + 60 s, its directory forever, and the error
    went up to the caller."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    _names_thread_cannot_start(monkeypatch, RuntimeError("can't start new thread"))
    failures: list[str] = []
    sampler = backends.Backends(backends.AUTO).start(
        cpu.CPU, 100, lambda: failures.append("cpu"), 1)
    try:
        assert sampler.backend == "in-process"
        assert not py_spy_children()
    finally:
        (comment,) = sampler.stop().comments
    assert "py-spy not used: py-spy failed to start: RuntimeError: can't start new thread" \
        in comment
    assert failures == ["cpu"], "an unexpected failure is counted"
    assert not list(tmp_path.iterdir()), "the failed start left files"
    with pytest.raises(cpu.Unavailable, match=r"^py-spy failed to start: RuntimeError: can't "
                                              r"start new thread \(profile_backend=py-spy\)$"):
        backends.Backends(backends.PY_SPY).start(cpu.WALL, 100, lambda: None, 1)
    assert not py_spy_children() and not list(tmp_path.iterdir())


def test_an_interrupted_py_spy_start_ends_py_spy_and_removes_its_files(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    _names_thread_cannot_start(monkeypatch, KeyboardInterrupt())
    profile = pyspy.PySpyProfile(pyspy.find_binary(), cpu.CPU, 100, seconds=1)
    with pytest.raises(KeyboardInterrupt):
        profile.start()
    assert not py_spy_children()
    assert not list(tmp_path.iterdir())


_CROWDED = """
import json, sys, threading, time
from labotel.profile import backends, cpu
threading.stack_size(256 * 1024)
release = threading.Event()
for _ in range(int(sys.argv[1])):
    threading.Thread(target=release.wait, daemon=True).start()
result = {"threads": threading.active_count()}
began = time.monotonic()
try:
    profile = backends.Backends(backends.AUTO).start(cpu.CPU, 100, lambda: None)
    result["auto"] = profile.backend
    result["comment"] = profile.stop().comments[0]
except Exception as error:
    result["auto"] = repr(error)
result["auto_seconds"] = time.monotonic() - began
try:
    backends.Backends(backends.PY_SPY).start(cpu.CPU, 100, lambda: None).stop()
    result["strict"] = "started"
except cpu.Unavailable as refused:
    result["strict"] = str(refused)
release.set()
print(json.dumps(result))
"""


def _crowded_profile(threads: int) -> dict:
    run = subprocess.run([sys.executable, "-c", _CROWDED, str(threads)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.splitlines()[-1])


def test_a_process_with_more_threads_than_py_spy_reads_is_not_handed_to_it():
    """py-spy fails every sample of a process with over 4096 threads and never says it
    started: auto waited out its 10 s start, py-spy using about a core, and then fell back;
    py-spy chosen gave a 500 after those 10 s. Now neither starts it."""
    crowded = _crowded_profile(4200)
    assert crowded["threads"] > backends.PY_SPY_THREAD_LIMIT
    assert crowded["auto"] == "in-process", crowded
    assert f"py-spy not used: this process has {crowded['threads']} threads and py-spy " \
           f"reads at most 4096" in crowded["comment"], crowded
    assert crowded["strict"].startswith(f"this process has {crowded['threads']} threads"), \
        crowded
    assert crowded["strict"].endswith(f"(profile_backend={backends.PY_SPY})"), crowded


def test_a_process_under_py_spy_s_thread_limit_still_gets_py_spy():
    busy = _crowded_profile(3900)
    assert busy["threads"] <= backends.PY_SPY_MAX_THREADS
    assert busy["auto"] == "py-spy", busy
    assert busy["strict"] == "started", busy


# -- py-spy keeps to profile_cpu_budget --------------------------------------------------------
@pytest.mark.parametrize(("mode", "threads", "budget", "rate"), [
    (cpu.CPU, 10, 0.01, 100),  # 79 us a tick: 126 Hz affordable, 100 asked
    (cpu.CPU, 1000, 0.01, 5),  # 1.96 ms a tick
    (cpu.WALL, 10, 0.01, 9),  # --idle unwinds every thread: 1.1 ms a tick
    (cpu.WALL, 100, 0.01, 1),  # 8.75 ms a tick: 1.1 Hz, so its lowest rate fits
    (cpu.WALL, 10, 1.0, 100),
])
def test_py_spy_s_rate_keeps_its_predicted_cpu_within_the_budget(mode, threads, budget, rate):
    choice = pyspy_rate.PySpyRate(budget).choose(mode, 100, threads)
    assert choice.rate_hz == rate
    assert choice.lowered == (rate < 100)


@pytest.mark.parametrize(("mode", "threads", "budget", "share"), [
    (cpu.WALL, 300, 0.01, "2.6%"),
    (cpu.WALL, 1000, 0.01, "8.5%"),
    (cpu.CPU, 4000, 0.005, "0.77%"),
])
def test_where_even_1_hz_would_pass_the_budget_py_spy_is_not_used(mode, threads, budget,
                                                                    share):
    """py-spy's 1 Hz floor used to win over the budget: 1,000 threads in wall mode cost
    8.5% of a core against 1%, and the profile said it kept within the budget."""
    with pytest.raises(cpu.Unavailable) as refused:
        pyspy_rate.PySpyRate(budget).choose(mode, 100, threads)
    assert str(refused.value).startswith(
        f"py-spy's {mode} sampling of {threads} threads would use about {share} of one core "
        f"even at its lowest rate, 1 Hz (")
    assert str(refused.value).endswith(
        f"over profile_cpu_budget ({100 * budget:g}% of one core)")


def test_a_process_py_spy_cannot_sample_within_the_budget_is_profiled_in_process(monkeypatch):
    """auto falls back to the in-process sampler (it spaces its ticks by their CPU), and
    profile_backend=py-spy is a 500 that says why; py-spy is not started."""
    monkeypatch.setattr(backends, "thread_count", lambda: 1000)
    reason = "py-spy's wall sampling of 1000 threads would use about 8.5% of one core"
    sampler = backends.Backends(backends.AUTO).start(cpu.WALL, 100, lambda: None, 1)
    try:
        assert sampler.backend == "in-process"
        assert not py_spy_children()
    finally:
        (comment,) = sampler.stop().comments
    assert f"py-spy not used: {reason}" in comment and "profile_cpu_budget" in comment
    monitor = start(profile_backend="py-spy")
    try:
        reply = get(monitor.admin_url + "/debug/pprof/wall?seconds=1")
        assert reply.status == 500 and reply.headers["X-Go-Pprof"] == "1"
        assert reply.text.startswith(f"wall-clock profiling failed: {reason}"), reply.text
        assert reply.text.rstrip("\n").endswith("over profile_cpu_budget (1% of one core) "
                                               "(profile_backend=py-spy)"), reply.text
        assert not py_spy_children()
    finally:
        labotel.shutdown()


def test_py_spy_s_rate_follows_what_py_spy_used_in_a_long_enough_profile():
    rates = pyspy_rate.PySpyRate(0.01)
    first = rates.choose(cpu.CPU, 100, 1000)
    # py-spy used twice the prediction per tick over 10 s: the next rate is half
    rates.learn(cpu.CPU, first, 2 * first.seconds_per_sample * 50, 50, 10.0)
    assert rates.choose(cpu.CPU, 100, 1000).rate_hz == first.rate_hz // 2
    assert rates.choose(cpu.WALL, 100, 10).rate_hz == 9  # each mode learns its own
    rates.learn(cpu.CPU, first, 100.0, 50, 1.0)  # a short profile: attach-dominated, ignored
    assert rates.choose(cpu.CPU, 100, 1000).rate_hz == first.rate_hz // 2


def test_one_cheap_profile_lifts_py_spy_s_rate_only_a_little():
    """The learnt scale was the last profile's: one odd profile (py-spy stopped, then
    catching up in a cheap burst) set the next rate several times over the budget."""
    rates = pyspy_rate.PySpyRate(0.01)
    first = rates.choose(cpu.CPU, 100, 1000)
    cheap = 0.1 * first.seconds_per_sample  # a tenth of the prediction, every tick
    rates.learn(cpu.CPU, first, cheap * 50, 50, 10.0)
    assert first.rate_hz < rates.choose(cpu.CPU, 100, 1000).rate_hz <= 2 * first.rate_hz
    for _ in range(10):  # cheap profile after cheap profile: followed, a step at a time
        choice = rates.choose(cpu.CPU, 100, 1000)
        rates.learn(cpu.CPU, choice, cheap * 10 * choice.rate_hz, 10 * choice.rate_hz, 10.0)
    assert rates.choose(cpu.CPU, 100, 1000).rate_hz >= 9 * first.rate_hz


@pytest.mark.parametrize(("taken", "cost", "log", "rate"), [
    (800, 2.0, "", 5),  # twice the prediction per tick taken: about half the rate
    (200, 1.0, "", 11),  # a fifth of the ticks asked: stalled, nothing learnt
    (1000, 0.3, "py-spy> 4.12s behind in sampling, results may be inaccurate", 11),
])
def test_a_wall_profile_teaches_the_rate_by_the_ticks_py_spy_took(tmp_path, taken, cost, log,
                                                                  rate):
    """py-spy's names thread is in every --idle tick: its count is the ticks taken. They
    used to be the rate times the time, so a py-spy that stopped for most of a profile
    taught a cost per tick far too low."""
    rates = pyspy_rate.PySpyRate(1.0)
    assert rates.choose(cpu.WALL, 100, 1000).rate_hz == 11  # 85 ms a tick
    profile = pyspy.PySpyProfile("py-spy", cpu.WALL, 100, rates=rates, threads=10)
    assert profile.rate_hz == 100
    profile._directory = str(tmp_path)
    (tmp_path / "profile.txt").write_text(
        f"thread (7): {pyspy.NAMES_THREAD};Event.wait (/lib/threading.py:629) {taken}\n")
    (tmp_path / "py-spy.log").write_text(f"py-spy> Sampling process\n{log}\n")
    profile._convert(ProfileBuilder([("samples", "count"), ("wall", "nanoseconds")],
                                    ("wall", "nanoseconds"), 10_000_000))
    # 10 s of sampling at 100 Hz asked 1000 ticks
    profile.own_cpu_seconds = taken * cost * pyspy_rate.predicted_cost(cpu.WALL, 10)
    profile._learn(stopped=profile._attached[0] + 10.0, log=profile._read_log())
    assert rates.choose(cpu.WALL, 100, 1000).rate_hz == rate


def test_a_py_spy_stopped_for_most_of_a_profile_teaches_the_rate_nothing():
    """Real py-spy, stopped (SIGSTOP, as a frozen container) for 5.5 s of a 6 s profile:
    it catches up in a burst, far cheaper per tick than sampling as it goes, and says it
    fell behind. That profile used to set the next rate a few times over the budget."""
    rates = pyspy_rate.PySpyRate(0.01)
    before = rates.choose(cpu.CPU, 100, 1000).rate_hz
    profile = pyspy.PySpyProfile(pyspy.find_binary(), cpu.CPU, 100, 10, rates=rates,
                                 threads=2)
    profile.start()
    pid = profile._process.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        threading.Event().wait(5.5)
    finally:
        os.kill(pid, signal.SIGCONT)
    threading.Event().wait(0.3)
    (comment,) = profile.stop().comments
    assert profile.error is None
    assert "py-spy fell behind the sampling rate at times" in comment
    assert rates.choose(cpu.CPU, 100, 1000).rate_hz == before


def test_a_py_spy_profile_of_many_threads_is_sampled_slower_and_says_why():
    """Real py-spy, 300 idle threads: a wall profile at 100 Hz would cost py-spy about a
    core here; with a budget of 10% of a core it samples at a few Hz, and the profile says
    so. With the default 1%, even 1 Hz would pass it: py-spy is not used."""
    release = threading.Event()
    idle = [threading.Thread(target=release.wait, daemon=True) for _ in range(300)]
    for thread in idle:
        thread.start()
    try:
        with pytest.raises(cpu.Unavailable, match=r"^py-spy's wall sampling of 30\d threads "
                                                  r"would use about .* even at its lowest"):
            backends.Backends(backends.PY_SPY).start(cpu.WALL, 100, lambda: None, 1)
        # (a CPU profile with a whole core to spend samples as asked)
        for mode, budget in ((cpu.WALL, 0.1), (cpu.CPU, 1.0)):
            chooser = backends.Backends(backends.PY_SPY, cpu_budget=budget)
            profile = chooser.start(mode, 100, lambda: None, 1)
            threading.Event().wait(1)
            builder = profile.stop()
            (comment,) = builder.comments
            if budget < 1:
                assert 1 <= profile.rate_hz < 10
                assert builder.period == 1_000_000_000 // profile.rate_hz
                assert (f"sampled at {profile.rate_hz} Hz, not the 100 Hz asked, to keep "
                        "py-spy within profile_cpu_budget (10% of one core: about ") in comment
            else:
                assert profile.rate_hz == 100 and "not the 100 Hz asked" not in comment
    finally:
        release.set()
        for thread in idle:
            thread.join()


def test_a_long_py_spy_log_still_gives_its_closing_counts(tmp_path):
    """py-spy writes its samples-and-errors line as it stops, at the end of its log; a log
    long with read errors pushed it past the 64 KiB read from the start, and the profile
    said nothing of the samples it could not read, nor that py-spy fell behind."""
    profile = pyspy.PySpyProfile("py-spy", cpu.CPU, 100)
    profile._directory = str(tmp_path)
    errors = "py-spy> Failed to get stack trace for thread 7: a read error\n" * 3000
    (tmp_path / "py-spy.log").write_text(
        f"py-spy> Sampling process\n{errors}py-spy> 1.20s behind in sampling, results may "
        "be inaccurate. Try reducing the sampling rate\npy-spy> Samples: 500 Errors: 20\n")
    assert len(errors) > 2 * pyspy.LOG_READ
    comment = profile._describe(5.0, profile._read_log())
    assert "20 of 500 samples could not be read" in comment
    assert "fell behind the sampling rate" in comment


def test_the_names_thread_spaces_its_looks_by_what_they_cost():
    """py-spy's profile keeps an in-process thread naming threads: every 0.1 s it cost
    0.3% of a core with 1 000 threads and 0.6% with 3 000, outside any budget. Its looks
    are now spaced so they stay under NAMES_CPU_SHARE."""
    assert pyspy.names_interval(0.00002) == pyspy.NAMES_INTERVAL  # a few threads
    for cost in (0.0003, 0.0006, 0.01):  # 1 000 threads, 3 000, a crowd
        interval = pyspy.names_interval(cost)
        assert interval > pyspy.NAMES_INTERVAL
        assert cost / interval <= pyspy.NAMES_CPU_SHARE + 1e-12
