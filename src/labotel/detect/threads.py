"""Thread- and task-leak detector: groups live threads and asyncio tasks by the line that
created them (``runtime.origins``) and reports a group that keeps growing while its
members stay stuck — the Python counterpart of uber-go/goleak.

Every ``leak_sample_interval`` seconds a background thread counts each group's members
and notes where each member is right now (its innermost frame; for a task, the innermost
``await``). A group is a leak when, over the samples of the last ``leak_window`` seconds
(at least ``MIN_POINTS`` of them):

- its size grew steadily (``detect.trend``) by at least ``leak_min_growth`` members;
- its members stay: almost none finished (a busy pool of short-lived workers has
  departures), and most were found at the same place in consecutive samples (blocked
  or pending, not working).

A stable pool does not grow; short-lived workers finish; neither is reported. The
absolute limits ``thread_limit`` / ``task_limit`` are a second trigger.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading
import time
import weakref
from collections import Counter, deque
from collections.abc import Iterable
from typing import Any

from labotel.config import Settings
from labotel.detect.detection import Detection, Stack
from labotel.detect.periodic import SamplingDetector
from labotel.detect.trend import trend
from labotel.frames import application_frame, describe, located
from labotel.runtime import aio, origins
from labotel.runtime.thread_frames import current_frames, stack

Frame = tuple[str, int, str]  # (filename, lineno, function)

MIN_POINTS = 5  # samples (4 intervals: 20 s by default) before a group can be a leak;
# members that finish within that time are never mistaken for leaked ones
MAX_DEPARTED_SHARE = 0.1  # a leaking group loses at most 10% of what it gains
MIN_STUCK_SHARE = 0.8  # share of the group's older members found at the same place
STACK_FRAMES = 12
MAX_GROUPS = 2000  # creation sites remembered at most (least recently seen dropped)
LIMIT_REARM = 0.9
VIEW_GROUPS = 50


@dataclasses.dataclass
class Member:
    signature: Frame | None  # where it was at the last sample
    samples: int = 1  # consecutive samples it was seen in
    still: int = 0  # consecutive samples at the same place


@dataclasses.dataclass
class Group:
    site: str
    origin: tuple[Frame, ...]
    history: deque  # (time, members, arrived, departed) per sample
    reported_at: float | None = None

    def within(self, since: float) -> list[tuple[float, int, int, int]]:
        return [h for h in self.history if h[0] >= since]


@dataclasses.dataclass(frozen=True)
class Verdict:
    group: Group
    count: int
    growth: int
    rate: float  # members per second (Theil–Sen)
    span: float
    stuck: int
    departed: int
    trigger: str  # trend | limit


class LeakTracker:
    """Group sizes over time for one kind of member (threads or tasks)."""

    def __init__(self, window: float, min_growth: int, limit: int):
        self.window = window
        self.min_growth = min_growth
        self.limit = limit
        # by id, with a weak reference to tell a member from a later object at the same
        # address: a WeakKeyDictionary would hash the Thread/Task (a subclass's __hash__
        # is the application's code) under the detector's lock
        self.members: dict[int, tuple[weakref.ref, Member]] = {}
        self.groups: dict[str, Group] = {}
        self._last_sample: float | None = None
        self._limit_armed = True
        self.total = 0

    def observe(self, now: float, live: Iterable[tuple[Any, tuple[Frame, ...] | None,
                                                       Frame | None]]) -> None:
        """Record one sample: ``live`` yields (member, creation frames, current place)."""
        counts: Counter[str] = Counter()
        arrived: Counter[str] = Counter()
        members = self.members
        for key, (ref, _) in list(members.items()):
            if ref() is None:  # finished and gone
                del members[key]
        for member, origin, signature in live:
            site = origins.site(origin)
            counts[site] += 1
            state = self.member(member)
            if state is None:
                members[id(member)] = (weakref.ref(member), Member(signature))
                arrived[site] += 1
                if site not in self.groups:
                    self._new_group(site, origin or ())
            else:
                state.samples += 1
                state.still = state.still + 1 if signature == state.signature else 0
                state.signature = signature
        self.total = sum(counts.values())
        for site, group in list(self.groups.items()):
            before = group.history[-1][1] if group.history else 0
            departed = max(before + arrived[site] - counts[site], 0)
            group.history.append((now, counts[site], arrived[site], departed))
            while group.history and group.history[0][0] < now - self.window:
                group.history.popleft()
            if not counts[site] and all(h[1] == 0 for h in group.history):
                del self.groups[site]  # gone for a whole window
        self._last_sample = now

    def _new_group(self, site: str, origin: tuple[Frame, ...]) -> None:
        history: deque = deque()
        if self._last_sample is not None:  # it had no members at the previous sample
            history.append((self._last_sample, 0, 0, 0))
        self.groups[site] = Group(site, origin, history)
        if len(self.groups) > MAX_GROUPS:
            del self.groups[next(iter(self.groups))]

    def member(self, member: Any) -> Member | None:
        entry = self.members.get(id(member))
        return entry[1] if entry is not None and entry[0]() is member else None

    def stuck_members(self, site: str, members: Iterable[tuple[Any, str]]) -> tuple[int, int]:
        """(members found at the same place twice running, members seen twice or more)."""
        stuck = older = 0
        for member, member_site in members:
            state = self.member(member)
            if member_site != site or state is None or state.samples < 2:
                continue
            older += 1
            stuck += state.still >= 1
        return stuck, older

    def assess(self, site: str, now: float, members: list[tuple[Any, str]]) -> Verdict | None:
        """A leak verdict for one group, or None."""
        group = self.groups[site]
        history = group.within(now - self.window)
        if len(history) < MIN_POINTS:
            return None
        times = [h[0] for h in history]
        counts = [h[1] for h in history]
        found = trend(times, counts)
        min_rate = self.min_growth / self.window
        if not found.growing(min_rate, min_rise=self.min_growth):
            return None
        arrivals = sum(h[2] for h in history[1:])
        departures = sum(h[3] for h in history[1:])
        if departures > MAX_DEPARTED_SHARE * max(arrivals, 1):
            return None  # members finish: busy workers, not a leak
        stuck, older = self.stuck_members(site, members)
        if older == 0 or stuck < MIN_STUCK_SHARE * older:
            return None
        return Verdict(group, counts[-1], counts[-1] - counts[0], found.slope, found.span,
                       stuck, departures, "trend")

    def over_limit(self, now: float) -> Verdict | None:
        """The biggest group, once, when the total passes the limit."""
        if self.total < self.limit * LIMIT_REARM:
            self._limit_armed = True
        if self.total < self.limit or not self._limit_armed or not self.groups:
            return None
        self._limit_armed = False
        group = max(self.groups.values(), key=lambda g: g.history[-1][1] if g.history else 0)
        history = group.within(now - self.window)
        counts = [h[1] for h in history] or [0]
        found = trend([h[0] for h in history], counts) if len(history) >= 2 else None
        return Verdict(group, counts[-1], counts[-1] - counts[0],
                       found.slope if found else 0.0, found.span if found else 0.0,
                       0, sum(h[3] for h in history[1:]), "limit")

    def should_report(self, verdict: Verdict, now: float) -> bool:
        """Report a growing group once per window while it keeps leaking."""
        reported = verdict.group.reported_at
        if verdict.trigger == "trend" and reported is not None and now - reported < self.window:
            return False
        verdict.group.reported_at = now
        return True

    def view(self, now: float) -> list[dict[str, Any]]:
        groups = sorted(self.groups.values(),
                        key=lambda g: g.history[-1][1] if g.history else 0, reverse=True)
        result = []
        for group in groups[:VIEW_GROUPS]:
            history = group.within(now - self.window)
            if not history:
                continue
            found = trend([h[0] for h in history], [h[1] for h in history])
            result.append({
                "site": group.site,
                "created_at": [describe(where) for where in group.origin],
                "count": history[-1][1],
                "growth": history[-1][1] - history[0][1],
                "growth_per_second": round(found.slope, 4),
                "arrived": sum(h[2] for h in history[1:]),
                "departed": sum(h[3] for h in history[1:]),
                "growing": found.growing(self.min_growth / self.window, self.min_growth),
                "reported_seconds_ago": None if group.reported_at is None
                else round(now - group.reported_at, 3),
                "history": [{"seconds_ago": round(now - h[0], 3), "count": h[1]}
                            for h in history],
            })
        return result


# -- where members are now --------------------------------------------------------------
def thread_stack(frame: Any, limit: int = STACK_FRAMES) -> tuple[Frame, ...]:
    """A thread's current stack, innermost first."""
    return tuple(map(located, stack(frame, limit)))


def task_stack(task: asyncio.Task, limit: int = STACK_FRAMES) -> tuple[Frame, ...]:
    """Where a task is suspended: the innermost ``limit`` frames of its await chain,
    innermost first."""
    chain = aio.await_chain(task)[-limit:]
    return tuple(map(located, reversed(chain)))


def _innermost(stack: tuple[Frame, ...]) -> Frame | None:
    return stack[0] if stack else None


# -- the component ------------------------------------------------------------------------
class ConcurrencyLeakDetector(SamplingDetector):
    """Samples threads and asyncio tasks; reports ``thread_leak`` and ``task_leak``."""

    name = "detect.threads"
    thread_name = "labotel-thread-leak"
    view_name = "goroutines"

    def configure(self, settings: Settings) -> None:
        self.min_growth = settings.leak_min_growth

    def _reset(self) -> None:
        settings = self.context.settings
        self.threads = LeakTracker(self.window, self.min_growth, settings.thread_limit)
        self.tasks = LeakTracker(self.window, self.min_growth, settings.task_limit)
        self.reports = 0

    def tick(self) -> None:
        now = time.monotonic()
        frames = current_frames()
        threads = threading.enumerate()
        thread_sites = []
        live_threads = []
        for thread in threads:
            if origins.is_labotel_thread(thread):
                continue  # labotel's own (debug server, exporters): never the app's leak
            origin = origins.thread_origin(thread)
            frame = frames.get(thread.ident) if thread.ident is not None else None
            here = (frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name) \
                if frame is not None else None
            live_threads.append((thread, origin, here))
            thread_sites.append((thread, origins.site(origin)))
        tasks = [task for group in aio.all_tasks_by_loop().values() for task in group]
        task_sites = []
        live_tasks = []
        for task in tasks:
            origin = origins.task_origin(task)
            live_tasks.append((task, origin, _innermost(task_stack(task, 3))))
            task_sites.append((task, origins.site(origin)))
        with self._lock:
            self.threads.observe(now, live_threads)
            self.tasks.observe(now, live_tasks)
            thread_verdicts = self._verdicts(self.threads, now, thread_sites)
            task_verdicts = self._verdicts(self.tasks, now, task_sites)
        for verdict in thread_verdicts:
            stacks = [thread_stack(frames.get(t.ident)) for t, site in thread_sites
                      if site == verdict.group.site and t.ident in frames]
            self._report("thread_leak", verdict, stacks, self.threads)
        for verdict in task_verdicts:
            stacks = [task_stack(t) for t, site in task_sites if site == verdict.group.site]
            self._report("task_leak", verdict, stacks, self.tasks)

    def _verdicts(self, tracker: LeakTracker, now: float,
                  members: list[tuple[Any, str]]) -> list[Verdict]:
        verdicts = []
        for site in list(tracker.groups):
            verdict = tracker.assess(site, now, members)
            if verdict is not None and tracker.should_report(verdict, now):
                verdicts.append(verdict)
        limit = tracker.over_limit(now)
        if limit is not None and tracker.should_report(limit, now):
            verdicts.append(limit)
        return verdicts

    def _report(self, kind: str, verdict: Verdict, stacks: list[tuple[Frame, ...]],
                tracker: LeakTracker) -> None:
        self.reports += 1
        self.context.reporter.report(leak_detection(kind, verdict, stacks, tracker))

    def view(self) -> dict[str, Any]:
        now = time.monotonic()
        with self._lock:
            threads, tasks = self.threads, self.tasks
            return {"leak_detection": {
                "options": {"leak_sample_interval": self.interval, "leak_window": self.window,
                            "leak_min_growth": self.min_growth,
                            "thread_limit": threads.limit, "task_limit": tasks.limit},
                "reports": self.reports,
                "threads": {"total": threads.total, "groups": threads.view(now)},
                "tasks": {"total": tasks.total, "groups": tasks.view(now)},
            }}


def leak_detection(kind: str, verdict: Verdict, stacks: list[tuple[Frame, ...]],
                   tracker: LeakTracker) -> Detection:
    """The readable report: where they were created, how fast they grow, where they sit."""
    noun = "threads" if kind == "thread_leak" else "tasks"
    limit_name = "thread_limit" if kind == "thread_leak" else "task_limit"
    group = verdict.group
    common, common_count = Counter(s[:8] for s in stacks if s).most_common(1)[0] \
        if any(stacks) else ((), 0)
    created_in = group.origin[0][2] if group.origin else "?"
    if verdict.trigger == "limit":
        headline = (f"{tracker.total} live {noun} passed {limit_name}={tracker.limit}; the "
                    f"biggest group is {verdict.count} {noun} created at {group.site}")
    else:
        headline = (f"{verdict.count} {noun} created at {group.site} (in {created_in}) keep "
                    f"piling up: +{verdict.growth} in {verdict.span:.3g} s "
                    f"({verdict.rate:.2f}/s), {verdict.departed} finished")
    lines = [f"{kind.replace('_', ' ').capitalize()} in pid {os.getpid()}: {headline}."]
    if common:
        lines.append(f"{common_count} of {len(stacks)} are stuck at:")
        lines += [f"  {fn} ({f}:{ln})" for f, ln, fn in common]
    lines.append("Created at:")
    lines += [f"  {fn} ({f}:{ln})" for f, ln, fn in group.origin] or ["  unknown (created "
                                                                        "before labotel started)"]
    lines.append(f"Live {noun} in total: {tracker.total} ({limit_name} {tracker.limit}).")
    attributes: dict[str, Any] = {
        "labotel.leak.trigger": verdict.trigger,
        "labotel.leak.site": group.site,
        "labotel.leak.count": verdict.count,
        "labotel.leak.growth": verdict.growth,
        "labotel.leak.growth_rate": verdict.rate,
        "labotel.leak.window": verdict.span,
        "labotel.leak.stuck": verdict.stuck,
        "labotel.leak.total": tracker.total,
        "labotel.leak.stuck_at": describe(common[application_frame(common)]) if common
        else None,
    }
    if group.origin:
        filename, lineno, function = group.origin[0]
        attributes.update({"code.filepath": filename, "code.lineno": lineno,
                           "code.function": function})
    detection_stacks = []
    if common:
        detection_stacks.append(Stack(f"{common_count} of {len(stacks)} {noun} stuck here",
                                      common))
    if group.origin:
        detection_stacks.append(Stack(f"{noun} created here", group.origin))
    return Detection(kind=kind, summary=f"{kind.replace('_', ' ')}: {headline}",
                     message="\n".join(lines), attributes=attributes,
                     stacks=detection_stacks, fingerprint=(group.site,))
