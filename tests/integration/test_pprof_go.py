"""The real ``go tool pprof`` against a live labotel: it fetches, parses and reports every
binary profile, prints our error messages, and Go's own tabwriter agrees with our text."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
import urllib.error

import pytest

import labotel
from tests.unit.test_contention import HOLD, contended_program
from tests.unit.test_pprof_support import (
    BACKENDS,
    allocate_blocks,
    blocked_in_known_function,
    get,
    hot_spin,
    running,
    start,
)

pytestmark = pytest.mark.skipif(shutil.which("go") is None,
                                reason="`go` is not installed (Debian package golang-go)")
CONTENTION = "tests.unit.test_contention."
SPIN = "tests.unit.test_pprof_support.hot_spin"
BLOCKED = "tests.unit.test_pprof_support.blocked_in_known_function"
ALLOCATE = "tests.unit.test_pprof_support.allocate_blocks"


TABWRITER = (
    "package main\n\nimport (\n\t\"bufio\"\n\t\"os\"\n\t\"text/tabwriter\"\n)\n\n"
    "func main() {\n\ttw := tabwriter.NewWriter(os.Stdout, 1, 8, 1, '\\t', 0)\n"
    "\tbufio.NewReader(os.Stdin).WriteTo(tw)\n\ttw.Flush()\n}\n")


@pytest.fixture
def pprof_env(tmp_path):
    env = dict(os.environ, PPROF_TMPDIR=str(tmp_path), HOME=os.environ.get("HOME", str(tmp_path)))
    env.pop("DISPLAY", None)
    return env


@pytest.fixture
def base():
    monitor = start(heap_profiling=True, profile_max_seconds=30)
    yield monitor.admin_url + "/debug/pprof/"
    labotel.shutdown()


def pprof(env, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["go", "tool", "pprof", *args], env=env, capture_output=True,
                            text=True, timeout=120)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def fetch_and_read(env, tmp_path, url: str, name: str) -> dict[str, str]:
    """pprof fetches ``url`` itself, saves it, then -top/-traces/-raw must all succeed."""
    saved = tmp_path / f"{name}.pb.gz"
    pprof(env, "-proto", "-output", str(saved), url)
    return {view: pprof(env, f"-{view}", str(saved)).stdout for view in ("top", "traces", "raw")}


def top_rows(report: str) -> list[tuple[float, str]]:
    """(flat value, function) rows of ``pprof -top`` in order."""
    rows = []
    for line in report.splitlines():
        match = re.match(r"\s*([\d.]+)(\w*)\s+[\d.]+%\s+[\d.]+%\s+[\d.]+\w*\s+[\d.]+%\s+(.+)$",
                         line)
        if match:
            rows.append((float(match.group(1)), match.group(3).strip()))
    return rows


@pytest.fixture(params=BACKENDS)
def sampled(request):
    monitor = start(profile_backend=request.param)
    yield monitor.admin_url + "/debug/pprof/", request.param
    labotel.shutdown()


def test_cpu_profile_top_is_the_hot_function(sampled, pprof_env, tmp_path):
    base, backend = sampled
    with running(hot_spin, name="spinner"), running(blocked_in_known_function, name="idle"):
        views = fetch_and_read(pprof_env, tmp_path, base + "profile?seconds=2", "cpu")
    assert "Type: cpu" in views["top"]
    # Which backend took it is in every report's header (a profile comment).
    sampler = "taken by py-spy" if backend == "py-spy" else "in-process sampler"
    assert f"labotel cpu profile: {sampler}" in views["top"].split("Showing")[0]
    comments = pprof(pprof_env, "-comments", str(tmp_path / "cpu.pb.gz")).stdout
    assert sampler in comments
    assert top_rows(views["top"])[0][1] == SPIN
    assert BLOCKED not in views["top"] + views["traces"]
    assert "thread:[spinner-0]" in views["raw"] or "thread:  spinner-0" in views["traces"]
    assert "samples/count cpu/nanoseconds" in views["raw"]
    assert "[FN][FL][LN]" in views["raw"]  # one mapping, fully symbolized


def test_wall_profile_shows_the_blocked_function(sampled, pprof_env, tmp_path):
    base, _ = sampled
    with running(blocked_in_known_function, name="idle"):
        views = fetch_and_read(pprof_env, tmp_path, base + "wall?seconds=1", "wall")
    assert "Type: wall" in views["top"]
    assert BLOCKED in views["traces"]


def test_heap_profile_is_dominated_by_the_allocating_function(base, pprof_env, tmp_path):
    keep: list = []
    allocate_blocks(keep, 3000)
    views = fetch_and_read(pprof_env, tmp_path, base + "heap", "heap")
    assert "Type: inuse_space" in views["top"]
    assert ALLOCATE in views["traces"]
    assert top_rows(views["top"])[0][1] == ALLOCATE
    inuse_objects = pprof(pprof_env, "-top", "-sample_index=inuse_objects",
                          str(tmp_path / "heap.pb.gz")).stdout
    assert "Type: inuse_objects" in inuse_objects


def test_heap_window_delta_names_the_allocating_function(pprof_env, tmp_path):
    monitor = start()  # heap profiling off: the window starts and stops tracemalloc
    try:
        keep: list = []
        timer = threading.Timer(0.5, allocate_blocks, (keep, 3000))
        timer.start()
        views = fetch_and_read(pprof_env, tmp_path,
                               monitor.admin_url + "/debug/pprof/heap?seconds=2", "delta")
        timer.join()
    finally:
        labotel.shutdown()
    assert top_rows(views["top"])[0][1] == ALLOCATE


def test_goroutine_and_threadcreate_profiles(base, pprof_env, tmp_path):
    with running(blocked_in_known_function, name="waiter", count=2):
        goroutine = fetch_and_read(pprof_env, tmp_path, base + "goroutine", "goroutine")
        created = fetch_and_read(pprof_env, tmp_path, base + "threadcreate", "threadcreate")
    assert "Type: goroutine" in goroutine["top"]
    assert BLOCKED in goroutine["traces"] and "waiter-1" in goroutine["traces"]
    assert "Type: threadcreate" in created["top"]
    assert "tests.unit.test_pprof_support.running" in created["traces"]


@pytest.fixture
def contention_base():
    monitor = start(contention_profiling=True, profile_max_seconds=30)
    yield monitor.admin_url + "/debug/pprof/"
    labotel.shutdown()


def cum_rows(report: str) -> dict[str, float]:
    """function -> cumulative value (ms) of ``pprof -top`` rows."""
    rows = {}
    for line in report.splitlines():
        match = re.match(r"\s*[\d.]+\w*\s+[\d.]+%\s+[\d.]+%\s+([\d.]+)(\w+)\s+[\d.]+%\s+(.+)$",
                         line)
        if match:
            scale = {"s": 1000, "ms": 1, "us": 0.001, "ns": 1e-6}.get(match.group(2), 0)
            rows[match.group(3).strip()] = float(match.group(1)) * scale
    return rows


def test_mutex_profile_names_the_holder_and_block_the_waiters(contention_base, pprof_env,
                                                               tmp_path):
    contended_program(threading.Lock())
    mutex = fetch_and_read(pprof_env, tmp_path, contention_base + "mutex", "mutex")
    block = fetch_and_read(pprof_env, tmp_path, contention_base + "block", "block")
    assert "Type: delay" in mutex["top"] and "Type: delay" in block["top"]
    assert "contentions/count delay/nanoseconds" in mutex["raw"]
    holders = cum_rows(mutex["top"])
    assert top_rows(mutex["top"])[0][1] == "threading.Lock.release"  # Go: sync.Mutex.Unlock
    assert holders[CONTENTION + "hold_lock"] >= HOLD * 800  # ms: the waiter it kept
    waiters = cum_rows(block["top"])
    assert waiters[CONTENTION + "wait_for_lock"] >= 2 * HOLD * 800
    assert "threading.Lock.acquire\n             " + CONTENTION + "wait_for_lock" in \
        block["traces"]
    for views in (mutex, block):
        assert CONTENTION + "never_waits" not in views["top"] + views["traces"]
    contentions = pprof(pprof_env, "-top", "-sample_index=contentions",
                        str(tmp_path / "block.pb.gz")).stdout
    assert "Type: contentions" in contentions


def test_list_shows_the_line_that_held_and_the_line_that_waited(contention_base, pprof_env,
                                                                 tmp_path):
    contended_program(threading.Lock())
    for name, function in (("mutex", "hold_lock"), ("block", "wait_for_lock")):
        saved = tmp_path / f"{name}.pb.gz"
        pprof(pprof_env, "-proto", "-output", str(saved), contention_base + name)
        listing = pprof(pprof_env, f"-list={CONTENTION}{function}$", str(saved)).stdout
        assert f"ROUTINE ======================== {CONTENTION}{function}" in listing
        with_line = next(line for line in listing.splitlines() if "with lock:" in line)
        assert re.match(r"\s+\.\s+[\d.]+m?s\s+\d+:\s+with lock:", with_line), listing


def test_contention_delta_profile_over_seconds(contention_base, pprof_env, tmp_path):
    timer = threading.Timer(0.5, contended_program, (threading.Lock(), 1))
    timer.start()
    views = fetch_and_read(pprof_env, tmp_path, contention_base + "block?seconds=2", "delta")
    timer.join()
    assert CONTENTION + "wait_for_lock" in views["traces"]


def test_contention_text_matches_gos_tabwriter(contention_base, tmp_path):
    contended_program(threading.Lock())
    texts = [get(contention_base + name + "?debug=1").text for name in ("mutex", "block")]
    program = tmp_path / "tabwriter.go"
    program.write_text(TABWRITER)
    for text in texts:
        cells = re.sub(r"\t+", "\t", text)
        go = subprocess.run(["go", "run", str(program)], input=cells, capture_output=True,
                            text=True, timeout=120, check=True)
        assert go.stdout == text


@pytest.mark.parametrize("path, message", [
    ("profile?seconds=abc", 'invalid value for "seconds" - must be a positive integer'),
    ("nonesuch", "Unknown profile"),
    ("mutex", "mutex profiling is off"),
    ("block", "LABOTEL_CONTENTION_PROFILING=1"),
])
def test_pprof_prints_our_error_messages(base, pprof_env, path, message):
    result = pprof(pprof_env, "-top", base + path, check=False)
    assert result.returncode != 0
    assert message in result.stderr


@pytest.mark.slow
def test_debug_text_matches_gos_tabwriter(base, tmp_path):
    with running(blocked_in_known_function, name="waiter", count=2):
        ours = get(base + "goroutine?debug=1").text
    heap_text = get(base + "heap?debug=1").text
    program = tmp_path / "tabwriter.go"
    program.write_text(TABWRITER)
    for text in (ours, heap_text):
        cells = re.sub(r"\t+", "\t", text)  # our cells never contain tabs: undo the padding
        go = subprocess.run(["go", "run", str(program)], input=cells, capture_output=True,
                            text=True, timeout=120, check=True)
        assert go.stdout == text


def test_flame_graph_in_pprofs_web_ui_shows_the_hot_function(base, pprof_env, tmp_path):
    saved = tmp_path / "cpu.pb.gz"
    with running(hot_spin, name="spinner"):
        pprof(pprof_env, "-proto", "-output", str(saved), base + "profile?seconds=1")
    # The README's command: an empty port makes pprof pick a free one and print it.
    server = subprocess.Popen(["go", "tool", "pprof", "-http=127.0.0.1:", "-no_browser",
                               str(saved)], env=pprof_env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        banner = server.stdout.readline()
        assert banner.startswith("Serving web UI on http://127.0.0.1:"), banner
        ui = banner.split()[-1]
        assert not ui.endswith(":0")
        deadline = time.monotonic() + 30
        while True:
            try:
                reply = get(ui + "/ui/flamegraph", timeout=5)
                break
            except urllib.error.URLError:  # printed the banner before listening
                assert time.monotonic() < deadline, "pprof's web UI never answered"
                time.sleep(0.2)
        assert reply.status == 200 and SPIN in reply.text
    finally:
        server.terminate()
        server.wait(10)
