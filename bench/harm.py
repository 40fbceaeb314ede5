"""Does labotel hurt the application? The scenarios of issue 11 at full length.

Each scenario (``bench/harm_scenarios.py``) runs in a process of its own: an application
workload (two threads building tuples, dicts and strings) runs throughout; labotel is off
for a baseline phase, on (with the scenario's faults) for ``--seconds``, then off again.
Printed per scenario:

- worst 1 s: the workload's lowest throughput over any 1-second window while labotel was
  on, as a ratio of its median 1-second throughput with labotel off in the same run
  (goal >= 0.8, never below 0.5); ``median`` is the median window's ratio; ``(off)`` is
  the worst window with labotel off, in the same way: the machine's own noise;
- unstolen: the same worst window (and its ``(off)``) with the hypervisor's steal taken
  out: on a VM whose CPUs lose a varying share of their time to other guests, each
  window's throughput is scaled by 1 / (1 - the share stolen in it) (``unstolen_figures``);
  ``stolen on/off`` is the median stolen share with labotel on and off;
- cpu: the most CPU labotel's own threads (and the OTel SDK's export threads) used in any
  1-second window, in cores; the race detector's checks and reports run on the app's
  threads and are not in it;
- RSS growth: peak RSS while labotel was on minus RSS just before ``start()``, less what
  the scenario's own app code keeps on purpose (goal <= 50 MB);
- fork: parent-side ``os.fork()`` latency, median and max, with labotel on (goal <= 10 ms);
- shutdown: seconds ``labotel.shutdown()`` took, against ``shutdown_timeout + 0.2``
  (the windows include shutdown; ``start()`` itself is timed apart, as ``start_s`` in the
  JSON);
- app errors: exceptions application code saw (must be 0), and labotel/OTel threads left
  after shutdown.

    uv run python bench/harm.py                       # every scenario, 300 s each
    uv run python bench/harm.py --seconds 30          # shorter
    uv run python bench/harm.py --only fork_storm     # one scenario (repeatable option)
    uv run python bench/harm.py --list
    uv run python bench/harm.py --json out.json       # also write the results
    uv run python bench/harm.py --control             # each scenario again, labotel off

The machine's other load shows up in the worst window: run it more than once. The
``(off)`` column is the worst of 2 x baseline windows, far fewer than the run's; ``--control``
runs each scenario a second time, as long, with labotel never started, so the worst window
it prints is the machine's own over the same number of windows.
"""

from __future__ import annotations

import argparse
import bisect
import faulthandler
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BUCKET = 0.1  # seconds per throughput bucket
WINDOW_BUCKETS = int(1.0 / BUCKET)  # a 1-second window
PAGE = os.sysconf("SC_PAGE_SIZE")
MB = 1024 * 1024


# -- the application workload ------------------------------------------------------------
def _numbers(n: int):
    yield from range(n)


def unit_of_work(i: int) -> int:
    """~20 µs of ordinary Python: a tuple from a generator, a dict, a string, a sort."""
    items = tuple(x * 2 for x in _numbers(40))
    record = {"id": i, "name": f"user-{i}", "tags": [str(i % 7), "a", "b"], "items": items}
    ordered = sorted(record["tags"])
    return len(record["name"]) + len(ordered) + items[-1]


class Workload:
    """Worker threads counting units of work per 100 ms bucket, errors counted."""

    def __init__(self, ctx: Any, workers: int = 2) -> None:
        self.ctx = ctx
        self.origin = time.monotonic()
        self.buckets = [[0] * 100_000 for _ in range(workers)]  # enough for 2.7 hours
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(n,), name=f"app-worker-{n}",
                                         daemon=True) for n in range(workers)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def _run(self, n: int) -> None:
        counts = self.buckets[n]
        clock, origin = time.monotonic, self.origin
        i = 0
        while not self.stop.is_set():
            try:
                for _ in range(20):
                    unit_of_work(i)
                    i += 1
            except BaseException as error:  # noqa: BLE001
                self.ctx.app_error(error)
            counts[int((clock() - origin) / BUCKET)] += 20

    def bucket(self, t: float) -> int:
        return int((t - self.origin) / BUCKET)

    def _window_range(self, begin: float, end: float) -> tuple[int, int]:
        """The first whole bucket inside [begin, end), and how many 1-second windows of
        whole buckets fit from it."""
        first, last = self.bucket(begin) + 1, self.bucket(end)
        return first, max(last - first - WINDOW_BUCKETS + 1, 0)

    def windows(self, begin: float, end: float) -> list[float]:
        """Units per second in every 1-second window inside [begin, end)."""
        first, count = self._window_range(begin, end)
        totals = [sum(b[k] for b in self.buckets)
                  for k in range(first, first + count + WINDOW_BUCKETS - 1)]
        return [sum(totals[k:k + WINDOW_BUCKETS]) for k in range(count)]

    def window_starts(self, begin: float, end: float) -> list[float]:
        """When each of ``windows(begin, end)`` began."""
        first, count = self._window_range(begin, end)
        return [self.origin + (first + k) * BUCKET for k in range(count)]


TICK = os.sysconf("SC_CLK_TCK")


def labotel_threads_cpu() -> list[tuple[str, float]]:
    """(name, CPU seconds so far) of each of labotel's (and the OTel SDK's) own threads."""
    used = []
    for thread in threading.enumerate():
        if not thread.name.startswith(("labotel", "Otel")) or thread.native_id is None:
            continue
        try:
            with open(f"/proc/self/task/{thread.native_id}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        used.append((thread.name, (int(fields[11]) + int(fields[12])) / TICK))  # utime + stime
    return used


def machine_cpu_ticks() -> tuple[int, int]:
    """(busy, stolen) clock ticks of all this machine's CPUs so far (``/proc/stat``): busy is
    what the guest ran, stolen is time its CPUs wanted and the hypervisor gave elsewhere."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return user + nice + system + irq + softirq, steal


def labotel_cpu_seconds() -> float:
    """CPU seconds used so far by labotel's (and the OTel SDK's) own threads."""
    return sum(seconds for _, seconds in labotel_threads_cpu())


def share_stolen(first: tuple[float, float], last: tuple[float, float]) -> float:
    """Of the CPU time wanted between two (busy, stolen) readings, the share stolen."""
    busy, stolen = last[0] - first[0], last[1] - first[1]
    return stolen / (busy + stolen) if busy + stolen > 0 else 0.0


def end_labotel_side(ctx: Any) -> None:
    """Stop the scenario's labotel-side threads (its debug-server clients, its storms)."""
    ctx.labotel_stop.set()
    for thread in ctx.threads:
        if thread.name.startswith(("app-poll", "app-storm")):
            thread.join(30)


class Probes:
    """RSS, labotel's threads' CPU and the machine's stolen time sampled every 0.2 s, and a
    probe fork every ``fork_every`` seconds."""

    def __init__(self, fork_every: float) -> None:
        self.fork_every = fork_every
        self.rss: list[tuple[float, int]] = []
        self.cpu: list[tuple[float, float]] = []  # (time, labotel threads' CPU seconds)
        self.machine: list[tuple[float, int, int]] = []  # (time, busy ticks, stolen ticks)
        # (when, seconds in os.fork(), of which inside fork() itself with the C libraries'
        # handlers, gRPC's among them): the rest is Python's at-fork hooks, labotel's too
        self.forks: list[tuple[float, float, float]] = []
        self._fork_marks = {"before": 0.0, "after": 0.0}
        self.stop = threading.Event()
        self._threads = [threading.Thread(target=self._sample_rss, daemon=True,
                                          name="harm-rss"),
                         threading.Thread(target=self._fork, daemon=True, name="harm-fork")]

    def start(self) -> None:
        # registered before labotel's hooks: "before" hooks run in reverse order of
        # registration, "after" ones in order, so these two run next to fork() itself
        marks = self._fork_marks
        os.register_at_fork(before=lambda: marks.__setitem__("before", time.perf_counter()),
                            after_in_parent=lambda: marks.__setitem__("after",
                                                                      time.perf_counter()))
        for thread in self._threads:
            thread.start()

    def close(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(10)

    @staticmethod
    def current_rss() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * PAGE

    def _sample_rss(self) -> None:
        while not self.stop.wait(0.2):
            now = time.monotonic()
            self.rss.append((now, self.current_rss()))
            self.cpu.append((now, labotel_cpu_seconds()))
            self.machine.append((now, *machine_cpu_ticks()))

    def stolen_share(self, begin: float, end: float) -> float | None:
        """Of the CPU time this machine's CPUs wanted in [begin, end), the share the
        hypervisor gave elsewhere: steal / (busy + steal), counters interpolated between
        the samples around each end (None without samples on both sides)."""
        samples = self.machine

        def counters_at(t: float) -> tuple[float, float] | None:
            after = bisect.bisect_left(samples, t, key=lambda sample: sample[0])
            if after < len(samples) and samples[after][0] == t:  # a sample at t itself
                return samples[after][1], samples[after][2]
            if after == 0 or after == len(samples):
                return None
            (t0, busy0, steal0), (t1, busy1, steal1) = samples[after - 1], samples[after]
            part = (t - t0) / (t1 - t0) if t1 > t0 else 0.0
            return busy0 + part * (busy1 - busy0), steal0 + part * (steal1 - steal0)

        first, last = counters_at(begin), counters_at(end)
        if first is None or last is None:
            return None
        return share_stolen(first, last)

    def worst_cpu_share(self, begin: float, end: float) -> float | None:
        """The most CPU labotel's own threads used in any 1-second window, in cores.
        (Threads come and go, so each 0.2 s step counts only the threads seen at both of
        its ends: a step that looks negative counts as zero.)"""
        points = [(t, c) for t, c in self.cpu if begin <= t <= end]
        steps = [(t1, max(0.0, c1 - c0)) for (t0, c0), (t1, c1) in zip(points, points[1:],
                                                                          strict=False)]
        worst = None
        for index in range(len(steps)):
            window = [c for t, c in steps[index:] if t - steps[index][0] < 1.0]
            share = sum(window)
            worst = share if worst is None or share > worst else worst
        return worst

    def _fork(self) -> None:
        while not self.stop.wait(self.fork_every):
            began = time.perf_counter()
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            ended = time.perf_counter()
            inside = self._fork_marks["after"] - self._fork_marks["before"]
            self.forks.append((time.monotonic(), ended - began, inside))
            os.waitpid(pid, 0)


# -- one scenario, in this process --------------------------------------------------------
def labotel_threads() -> list[str]:
    return sorted(t.name for t in threading.enumerate()
                  if t.name.startswith(("labotel", "Otel")) and t.is_alive())


def monitor_figures(monitor: Any) -> dict[str, Any]:
    """What labotel did during the phase: detections, attributions, its own memory."""
    figures: dict[str, Any] = {}
    try:
        detections = monitor.reporter.detections()
        figures["detections"] = {kind: sum(1 for d in detections if d.kind == kind)
                                 for kind in {d.kind for d in detections}}
        stats = getattr(monitor.reporter, "stats", None)
        if stats:
            figures["reporter"] = stats()
        memory = monitor.component("detect.memory")
        if memory is not None:
            view = memory.view()["memory_leak"]
            figures["memory_detector"] = {"state": view["state"], "reports": view["reports"],
                                          "attributions": view.get("attributions"),
                                          "last": (view["last_attribution"] or {}).get("outcome"),
                                          "gc_check": (view.get("last_gc_check") or {}).get(
                                              "outcome"),
                                          "gc_collections": view.get("gc_collections")}
        races = monitor.component("detect.races")
        if races is not None and races.detector is not None:
            figures["races"] = races.detector.stats()
        footprint = getattr(monitor, "footprint", None)
        if footprint is not None:
            figures["own_memory_bytes"] = footprint.breakdown()
    except Exception as error:  # noqa: BLE001 - figures are extras, never the result
        figures["figures_error"] = repr(error)
    return figures


def consistent_state() -> dict[str, Any]:
    """Is labotel either fully on or fully off (the state of the last start/shutdown)?"""
    import labotel.monitor
    from labotel.detect import races
    from labotel.hooks import primitives

    monitor = labotel.monitor.current()
    running = monitor is not None and monitor.running
    patched = threading.Lock is primitives.InstrumentedLock
    detector = races.active() is not None
    threads = bool([t for t in labotel_threads() if t.startswith("labotel")])
    race_on = running and monitor.settings.race_detection
    hooks_on = running and (race_on or monitor.settings.contention_profiling)
    return {"running": running, "consistent": detector == race_on and patched == hooks_on
            and threads == running}


def _labotel_phase(scenario: Any, ctx: Any, seconds: float,
                   result: dict[str, Any]) -> tuple[float, float]:
    """labotel on for ``seconds`` with the scenario's faults, then shut down; returns when
    the windows that count begin and end."""
    import labotel

    options = {"admin_address": "127.0.0.1:0", **scenario.options()}
    start_began = time.monotonic()
    monitor = labotel.start(**options)
    # windows are counted from here: start() is the app's own call (its imports and,
    # with race detection, its lock adoption), reported apart as start_s
    on_began = time.monotonic()
    result["start_s"] = on_began - start_began
    ctx.monitor_url = monitor.admin_url
    scenario.labotel_side(ctx)
    time.sleep(seconds)
    end_labotel_side(ctx)
    result["final_state"] = consistent_state()
    current = labotel.monitor.current() or monitor
    result["labotel"] = monitor_figures(current)
    timeout = current.settings.shutdown_timeout
    shutdown_began = time.monotonic()
    labotel.shutdown()
    result["shutdown_s"] = time.monotonic() - shutdown_began
    result["shutdown_limit_s"] = timeout + 0.2
    on_ended = time.monotonic()
    time.sleep(0.5)  # threads that end right after shutdown returned are not "left"
    result["threads_left"] = labotel_threads()
    return on_began, on_ended


def _control_phase(seconds: float, result: dict[str, Any]) -> tuple[float, float]:
    """The same ``seconds`` with labotel never started."""
    on_began = time.monotonic()
    time.sleep(seconds)
    result["threads_left"] = []
    return on_began, time.monotonic()


def run_scenario(name: str, seconds: float, baseline_seconds: float,
                 control: bool = False) -> dict[str, Any]:
    from bench import harm_scenarios

    scenario = harm_scenarios.REGISTRY[name]()
    ctx = harm_scenarios.Context()
    workload = Workload(ctx)
    probes = Probes(scenario.fork_every)
    result: dict[str, Any] = {"scenario": name, "seconds": seconds, "control": control}
    import labotel

    # labotel's modules load on first use: load them before the probe thread starts forking,
    # so start() imports nothing while it does (on 3.12.1 an import in the main thread and a
    # fork thread's warning, importing linecache, deadlocked on importlib's module locks)
    import labotel.monitor  # noqa: F401

    with harm_scenarios.environment(scenario.environment()):
        workload.start()
        scenario.app_side(ctx)
        probes.start()
        before = (time.monotonic(), 0.0)
        time.sleep(baseline_seconds)
        before = (before[0], time.monotonic())

        rss_at_start = probes.current_rss()
        # control: the same run with labotel left off, the machine's noise over as long
        on_began, on_ended = (_control_phase(seconds, result) if control
                              else _labotel_phase(scenario, ctx, seconds, result))

        after_began = time.monotonic()
        time.sleep(baseline_seconds)
        after = (after_began, time.monotonic())
        ctx.app_stop.set()
        workload.stop.set()
        probes.close()
        for thread in workload.threads + ctx.threads:
            thread.join(30)
        result["figures"] = scenario.figures(ctx)
        scenario.close()

    baseline = workload.windows(*before) + workload.windows(*after)
    during = workload.windows(on_began, on_ended)
    base = statistics.median(baseline) if baseline else float("nan")
    result["baseline_ops_per_s"] = base
    # the machine's own noise: the worst window with labotel off, in the same run
    result["worst_window_ratio_off"] = min(baseline) / base if baseline and base else None
    result["worst_window_ratio"] = min(during) / base if during and base else None
    result["median_window_ratio"] = statistics.median(during) / base if during and base else None
    if during and base:  # where the worst window was, and the run's second-by-second ratios
        worst = during.index(min(during))
        result["worst_window_at_s"] = round(worst * BUCKET, 1)
        result["timeline"] = [round(w / base, 2) for w in during[::WINDOW_BUCKETS]]
        worst_began = workload.window_starts(on_began, on_ended)[worst]
        result["stolen_share_at_worst"] = probes.stolen_share(worst_began, worst_began + 1.0)
    result.update(unstolen_figures(workload, probes, [before, after], (on_began, on_ended)))
    result["labotel_cpu_worst_1s"] = probes.worst_cpu_share(on_began, on_ended)
    rss_during = [rss for t, rss in probes.rss if on_began <= t <= on_ended]
    result["rss_growth_mb"] = (max(rss_during, default=rss_at_start) - rss_at_start) / MB
    result["app_kept_mb"] = scenario.app_kept_bytes / MB
    forks_on = sorted(d for t, d, _ in probes.forks if on_began <= t <= on_ended)
    forks_off = sorted(d for t, d, _ in probes.forks if not on_began <= t <= on_ended)
    result["forks"] = len(forks_on)
    result["fork_ms_median"] = statistics.median(forks_on) * 1e3 if forks_on else None
    result["fork_ms_max"] = forks_on[-1] * 1e3 if forks_on else None
    result["fork_ms_p99"] = forks_on[int(0.99 * (len(forks_on) - 1))] * 1e3 if forks_on else None
    # (when, ms in all, ms inside fork() and its C handlers) of the five slowest
    result["fork_ms_slowest"] = [
        (round(t - on_began, 1), round(d * 1e3, 1), round(inside * 1e3, 1))
        for t, d, inside in sorted(((t, d, inside) for t, d, inside in probes.forks
                                    if on_began <= t <= on_ended), key=lambda p: -p[1])[:5]]
    result["fork_ms_max_off"] = forks_off[-1] * 1e3 if forks_off else None
    result["app_errors"] = len(ctx.errors)
    result["app_error_samples"] = sorted(set(ctx.errors))[:5]
    return result


def unstolen_figures(workload: Workload, probes: Probes, off: list[tuple[float, float]],
                     on: tuple[float, float]) -> dict[str, Any]:
    """The throughput ratios again with the hypervisor's steal taken out.

    This VM's CPUs lose a share of the time they want to other guests, varying second by
    second (a median of 0.42 with spikes to 0.70 in one 90 s labotel-off run, throughput
    correlating -0.93 with it). Each window's units are divided by (1 - its stolen share),
    the rate it would have run at unstolen, and compared to the median of the same with
    labotel off. labotel's own CPU is in the busy time, so what it takes from the app still
    shows; only what the host took is removed."""

    def unstolen(begin: float, end: float) -> tuple[list[float], list[float]]:
        rates, shares = [], []
        for start, units in zip(workload.window_starts(begin, end),
                                workload.windows(begin, end), strict=True):
            share = probes.stolen_share(start, start + 1.0)
            if share is not None and share < 0.9:  # nearly all stolen: nothing to scale
                rates.append(units / (1.0 - share))
                shares.append(share)
        return rates, shares

    baseline: list[float] = []
    shares_off: list[float] = []
    for begin, end in off:
        rates, shares = unstolen(begin, end)
        baseline += rates
        shares_off += shares
    during, shares = unstolen(*on)
    if not baseline or not during:
        return {}
    base = statistics.median(baseline)
    # the stolen share with labotel on next to off: were labotel's own wake-ups to raise
    # it (each one a vCPU the host must schedule), the scaling would credit labotel
    return {"worst_window_ratio_unstolen": min(during) / base,
            "median_window_ratio_unstolen": statistics.median(during) / base,
            "worst_window_ratio_off_unstolen": min(baseline) / base,
            "stolen_share_median": statistics.median(shares),
            "stolen_share_median_off": statistics.median(shares_off),
            "stolen_share_max": max(shares)}


# -- the runner -----------------------------------------------------------------------------
def run_child(name: str, seconds: float, baseline: float, timeout: float,
              control: bool = False) -> dict[str, Any]:
    """Run one scenario in a fresh interpreter; a hang dumps every thread's stack."""
    command = [sys.executable, os.path.abspath(__file__), "--child", name,
               "--seconds", str(seconds), "--baseline", str(baseline)]
    if control:
        command.append("--control")
    began = time.monotonic()
    try:
        process = subprocess.run(command, capture_output=True, text=True, timeout=timeout + 30)
    except subprocess.TimeoutExpired as expired:
        return {"scenario": name, "hung": True,
                "stderr": (expired.stderr or b"")[-6000:].decode(errors="replace")
                if isinstance(expired.stderr, bytes) else (expired.stderr or "")[-6000:]}
    lines = [line for line in process.stdout.splitlines() if line.startswith("{")]
    if process.returncode != 0 or not lines:
        return {"scenario": name, "failed": True, "returncode": process.returncode,
                "stderr": process.stderr[-6000:]}
    result = json.loads(lines[-1])
    result["wall_s"] = time.monotonic() - began
    result["stderr_tail"] = process.stderr[-1500:]
    return result


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(results: list[dict[str, Any]]) -> None:
    header = (f"{'scenario':28} {'worst 1s':>8} {'median':>7} {'(off)':>6} {'unstolen':>8} "
              f"{'(off)':>6} {'stolen on/off':>13} {'cpu':>5} "
              f"{'RSS MB':>7} {'fork ms':>13} {'shutdown s':>11} {'errors':>6}  threads left")
    print(header)
    print("-" * len(header))
    for r in results:
        if r.get("hung") or r.get("failed"):
            print(f"{r['scenario']:28} {'HUNG' if r.get('hung') else 'FAILED'}")
            continue
        rss = r["rss_growth_mb"] - r["app_kept_mb"]
        fork = f"{_fmt(r['fork_ms_median'], '.1f')}/{_fmt(r['fork_ms_max'], '.1f')}"
        stolen = (f"{_fmt(r.get('stolen_share_median'), '.2f')}/"
                  f"{_fmt(r.get('stolen_share_median_off'), '.2f')}")
        unstolen = (f"{_fmt(r.get('worst_window_ratio_unstolen'), '.2f'):>8} "
                    f"{_fmt(r.get('worst_window_ratio_off_unstolen'), '.2f'):>6} {stolen:>13}")
        if r.get("control"):  # labotel was never on: only the throughput columns mean much
            print(f"{'  (control, labotel off)':28} {_fmt(r['worst_window_ratio'], '.2f'):>8} "
                  f"{_fmt(r['median_window_ratio'], '.2f'):>7} "
                  f"{_fmt(r.get('worst_window_ratio_off'), '.2f'):>6} {unstolen} {'-':>5} "
                  f"{rss:7.1f} "
                  f"{fork:>13} {'-':>11} {r['app_errors']:>6}  -")
            continue
        shutdown = f"{r['shutdown_s']:.2f}/{r['shutdown_limit_s']:.1f}"
        print(f"{r['scenario']:28} {_fmt(r['worst_window_ratio'], '.2f'):>8} "
              f"{_fmt(r['median_window_ratio'], '.2f'):>7} "
              f"{_fmt(r.get('worst_window_ratio_off'), '.2f'):>6} {unstolen} "
              f"{_fmt(r.get('labotel_cpu_worst_1s'), '.2f'):>5} {rss:7.1f} {fork:>13} "
              f"{shutdown:>11} {r['app_errors']:>6}  {','.join(r['threads_left']) or '-'}")
        slowest = ", ".join(f"{ms} ms at {t} s ({inside} in fork())"
                            for t, ms, inside in r.get("fork_ms_slowest", [])[:3])
        if slowest:
            print(f"{'':28} slowest forks: {slowest}")
    print("\nworst 1s / median: workload throughput while labotel ran, over its median with "
          "labotel off (goal >= 0.8, never < 0.5); (off): the worst 1 s with labotel off, the "
          "machine's own noise\nunstolen (off): the worst 1 s again, each second's throughput "
          "scaled by 1 / (1 - the share of CPU time the hypervisor stole in it); stolen on/off: "
          "the median stolen share with labotel on and off\ncpu: the most CPU labotel's own "
          "threads used in any 1 s, in cores (race checks and reports run on the app's "
          "threads: not in it)\n"
          "RSS MB: peak RSS growth while on, less what "
          "the scenario's app keeps on purpose (goal <= 50)\nfork ms: median/max parent-side "
          "os.fork() (goal <= 10); in fork(): the part inside fork() itself and the C "
          "libraries' handlers (gRPC's), the rest is Python's at-fork hooks\nshutdown s: "
          "took/limit (shutdown_timeout + 0.2)")


def main(argv: list[str] | None = None) -> int:
    from bench import harm_scenarios

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=300.0,
                        help="seconds labotel runs in each scenario (default 300)")
    parser.add_argument("--baseline", type=float, default=None,
                        help="seconds of baseline before and after (default: seconds/10, "
                             "between 2 and 15)")
    parser.add_argument("--only", action="append", metavar="NAME",
                        help="run only this scenario (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the scenarios")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--control", action="store_true",
                        help="after each scenario, run it again with labotel left off for "
                             "as long: the machine's own worst window over the same length")
    parser.add_argument("--child", metavar="NAME", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    baseline = args.baseline if args.baseline is not None else min(max(args.seconds / 10, 2), 15)

    if args.child:
        faulthandler.dump_traceback_later(args.seconds + 2 * baseline + 60, exit=True)
        print(json.dumps(run_scenario(args.child, args.seconds, baseline, args.control)),
              flush=True)
        os._exit(0)  # a stuck daemon thread must not keep the child alive
    if args.list:
        for name, cls in harm_scenarios.REGISTRY.items():
            print(f"{name:28} {cls.summary}")
        return 0
    names = args.only or list(harm_scenarios.REGISTRY)
    unknown = [n for n in names if n not in harm_scenarios.REGISTRY]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r}; --list shows them")
    results = []
    for name in names:
        print(f"running {name} ({args.seconds:g} s + 2 x {baseline:g} s baseline)...",
              file=sys.stderr, flush=True)
        limit = args.seconds + 2 * baseline + 60
        results.append(run_child(name, args.seconds, baseline, limit))
        if args.control:
            print(f"running {name} with labotel off (control)...", file=sys.stderr, flush=True)
            results.append(run_child(name, args.seconds, baseline, limit, control=True))
    print_table(results)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)
    return 1 if any(r.get("hung") or r.get("failed") or r.get("app_errors") for r in results) \
        else 0


if __name__ == "__main__":
    sys.exit(main())
