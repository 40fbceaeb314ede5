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

Cost, with a hundred thousand tasks: every member is counted at each sample (about 2 us
each), but where members are is read for at most ``FOLLOWED_PER_GROUP`` of each group
(``MAX_FOLLOWED`` in all: reading every task's await chain took 1.3 s of CPU per sample
with 100k tasks, and with a record per member the process grew 95 MB). Arrivals and
departures are exact while a group's members are all followed, estimated from those
followed beyond.
A sample that still costs more than ``SAMPLE_SHARE`` of a core pushes the next one out,
and trends are then judged over a window long enough for ``MIN_POINTS`` samples (the
view shows both).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading
import time
import weakref
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from labotel.config import Settings
from labotel.context import Context
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
FOLLOWED_PER_GROUP = 100  # members of one group whose place is read at each sample
MAX_FOLLOWED = 1000  # ... of all groups together
MIN_FOLLOWED = 10  # ... yet for every group, taken from the biggest when all are taken
SAMPLE_SHARE = 0.02  # of a core the samples may take on average (a dearer one waits)
FOLLOWED_BYTES = 360  # one followed member: its record, weak reference and table slot
HISTORY_BYTES = 120  # one sample of one group: a tuple of four numbers in a deque
GROUP_BYTES = 600  # a group's record, site text and creation frames


@dataclasses.dataclass(slots=True)
class Member:
    """A followed member: where it was at the last sample, and since when."""

    ref: weakref.ref
    site: str
    signature: Frame | None  # where it was at the last sample
    samples: int = 1  # consecutive samples it was seen in
    still: int = 0  # consecutive samples at the same place
    seen: int = 0  # the number of the last sample it was seen in


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
        # The followed members by id, each with a weak reference to tell it from a later
        # object at the same address: a WeakKeyDictionary would hash the Thread/Task (a
        # subclass's __hash__ is the application's code) under the detector's lock
        self.members: dict[int, Member] = {}
        self.followed: Counter[str] = Counter()  # followed members per group
        self.groups: dict[str, Group] = {}
        self._last_sample: float | None = None
        self._limit_armed = True
        self._sample = 0
        self.total = 0

    def observe(self, now: float, live: list[Any], created: list[tuple[Frame, ...] | None],
                where: Callable[[Any], Frame | None]) -> None:
        """Record one sample: the ``live`` members and where each was ``created``;
        ``where(member)`` is asked of followed members only.

        Two lists, not one of pairs: a hundred thousand pairs kept through the sample
        outlived the collector's young generations and set off a full collection of the
        application's heap (190 ms with 100k tasks), on labotel's thread but with the GIL
        held throughout."""
        self._sample = sample = self._sample + 1
        counts: Counter[str] = Counter()
        before = self.followed.copy()
        # first the followed that are gone: a new member may have the same id already
        departed = self._forget(lambda state: state.ref() is None)
        members, followed = self.members, self.followed
        for member, origin in zip(live, created, strict=True):
            site = origins.site(origin)
            counts[site] += 1
            state = self.member(member)
            if state is not None:
                state.samples += 1
                signature = where(member)
                state.still = state.still + 1 if signature == state.signature else 0
                state.signature, state.seen = signature, sample
                continue
            if site not in self.groups:
                self._new_group(site, origin or ())
            if followed[site] < FOLLOWED_PER_GROUP and (
                    len(members) < MAX_FOLLOWED or self._make_room(site)):
                members[id(member)] = Member(weakref.ref(member), site, where(member),
                                             seen=sample)
                followed[site] += 1
        departed += self._forget(lambda state: state.seen != sample)  # finished, not freed
        self.total = sum(counts.values())
        for site, group in list(self.groups.items()):
            previous = group.history[-1][1] if group.history else 0
            gone = departed[site]
            if before[site] < previous:  # some of the group went unfollowed: its
                # departures are estimated from those of the followed ones
                gone = round(gone * previous / before[site]) if before[site] else 0
            gone = max(gone, previous - counts[site])
            came = counts[site] - previous + gone
            group.history.append((now, counts[site], came, gone))
            while group.history and group.history[0][0] < now - self.window:
                group.history.popleft()
            if not counts[site] and all(h[1] == 0 for h in group.history):
                del self.groups[site]  # gone for a whole window
        self._last_sample = now

    def _make_room(self, site: str) -> bool:
        """All ``MAX_FOLLOWED`` are taken: a group with fewer than ``MIN_FOLLOWED`` gets
        one of the biggest group's (a leak that begins after the pools filled the table
        must still be watched). True if a member was let go."""
        if self.followed[site] >= MIN_FOLLOWED:
            return False
        biggest, count = self.followed.most_common(1)[0]
        if count <= MIN_FOLLOWED:
            return False
        key = next(key for key, state in self.members.items() if state.site == biggest)
        del self.members[key]
        self.followed[biggest] -= 1
        return True

    def _forget(self, departed: Callable[[Member], bool]) -> Counter[str]:
        """Stop following the members that ``departed``; how many per group."""
        gone: Counter[str] = Counter()
        for key, state in list(self.members.items()):
            if departed(state):
                del self.members[key]
                gone[state.site] += 1
                self.followed[state.site] -= 1
        self.followed = +self.followed  # groups with none followed leave the counter
        return gone

    def bytes(self) -> int:
        """labotel's own memory here (an estimate): bounded by ``MAX_FOLLOWED`` members
        and ``MAX_GROUPS`` groups of one window's samples each."""
        history = sum(len(group.history) for group in self.groups.values())
        return (len(self.members) * FOLLOWED_BYTES + len(self.groups) * GROUP_BYTES
                + history * HISTORY_BYTES)

    def _new_group(self, site: str, origin: tuple[Frame, ...]) -> None:
        history: deque = deque()
        if self._last_sample is not None:  # it had no members at the previous sample
            history.append((self._last_sample, 0, 0, 0))
        self.groups[site] = Group(site, origin, history)
        if len(self.groups) > MAX_GROUPS:
            del self.groups[next(iter(self.groups))]

    def member(self, member: Any) -> Member | None:
        state = self.members.get(id(member))
        return state if state is not None and state.ref() is member else None

    def followed_in(self, site: str) -> list[Any]:
        """The followed members of one group that are still alive."""
        found = (state.ref() for state in self.members.values() if state.site == site)
        return [member for member in found if member is not None]

    def stuck_members(self, site: str) -> tuple[int, int]:
        """Of a group's followed members: (those found at the same place twice running,
        those seen twice or more)."""
        stuck = older = 0
        for state in self.members.values():
            if state.site != site or state.samples < 2:
                continue
            older += 1
            stuck += state.still >= 1
        return stuck, older

    def assess(self, site: str, now: float) -> Verdict | None:
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
        stuck, older = self.stuck_members(site)
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
                "followed": self.followed[group.site],  # where they are: read of these
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
    cpu_share = SAMPLE_SHARE

    def configure(self, settings: Settings) -> None:
        self.min_growth = settings.leak_min_growth

    def start(self, context: Context) -> None:
        super().start(context)
        context.footprint.add("concurrency_leaks", self.bytes)

    def _reset(self) -> None:
        settings = self.context.settings
        self.threads = LeakTracker(self.window, self.min_growth, settings.thread_limit)
        self.tasks = LeakTracker(self.window, self.min_growth, settings.task_limit)
        self.reports = 0

    def tick(self) -> None:
        now = time.monotonic()
        frames = current_frames()
        threads = [thread for thread in threading.enumerate()
                   # labotel's own (debug server, exporters): never the app's leak
                   if not origins.is_labotel_thread(thread)]
        thread_origins = list(map(origins.thread_origin, threads))
        tasks = [task for group in aio.all_tasks_by_loop().values() for task in group]
        task_origins = list(map(origins.task_origin, tasks))

        def thread_place(thread: threading.Thread) -> Frame | None:
            frame = frames.get(thread.ident) if thread.ident is not None else None
            return (frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name) \
                if frame is not None else None

        def task_place(task: asyncio.Task) -> Frame | None:
            return _innermost(task_stack(task, 3))

        window = self._judged_window()
        with self._lock:
            self.threads.window = self.tasks.window = window
            self.threads.observe(now, threads, thread_origins, thread_place)
            self.tasks.observe(now, tasks, task_origins, task_place)
            thread_verdicts = self._verdicts(self.threads, now)
            task_verdicts = self._verdicts(self.tasks, now)
            followed_threads = {v.group.site: self.threads.followed_in(v.group.site)
                                for v in thread_verdicts}
            followed_tasks = {v.group.site: self.tasks.followed_in(v.group.site)
                              for v in task_verdicts}
        for verdict in thread_verdicts:
            stacks = [thread_stack(frames.get(thread.ident))
                      for thread in followed_threads[verdict.group.site]
                      if thread.ident in frames]
            self._report("thread_leak", verdict, stacks, self.threads)
        for verdict in task_verdicts:
            stacks = [task_stack(task) for task in followed_tasks[verdict.group.site]]
            self._report("task_leak", verdict, stacks, self.tasks)

    def _judged_window(self) -> float:
        """``leak_window``, or longer while samples are spaced out to keep their budget:
        long enough for ``MIN_POINTS`` of them."""
        return max(self.window, MIN_POINTS * self._sampler.spacing)

    def _verdicts(self, tracker: LeakTracker, now: float) -> list[Verdict]:
        verdicts = []
        for site in list(tracker.groups):
            verdict = tracker.assess(site, now)
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
                "sampling": self._sampling(),
                "threads": {"total": threads.total, "followed": len(threads.members),
                            "groups": threads.view(now)},
                "tasks": {"total": tasks.total, "followed": len(tasks.members),
                          "groups": tasks.view(now)},
            }}

    def _sampling(self) -> dict[str, Any]:
        """How often samples are taken and judged, and why, when not as configured."""
        sampler, window = self._sampler, self._judged_window()
        spaced = sampler.spacing > self.interval
        return {"seconds_apart": round(sampler.spacing, 3),
                "judged_over_seconds": round(window, 3),
                "last_sample_cpu_seconds": round(sampler.last_cpu, 4),
                "cpu_budget": f"{SAMPLE_SHARE:.0%} of a core",
                "members_followed_at_most": MAX_FOLLOWED,
                "note": (f"samples spaced out to {sampler.spacing:.3g} s (the last took "
                         f"{sampler.last_cpu:.3g} s of CPU), trends judged over "
                         f"{window:.3g} s") if spaced else None}

    def bytes(self) -> int:
        """The memory its two trackers keep (an estimate)."""
        with self._lock:
            return self.threads.bytes() + self.tasks.bytes()

    def stop(self) -> None:
        super().stop()
        self.context.footprint.remove("concurrency_leaks")


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
    looked_at = f"{len(stacks)}" if len(stacks) >= verdict.count else \
        f"{len(stacks)} looked at"
    if common:
        lines.append(f"{common_count} of {looked_at} are stuck at:")
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
        detection_stacks.append(Stack(f"{common_count} of {looked_at} {noun} stuck here",
                                      common))
    if group.origin:
        detection_stacks.append(Stack(f"{noun} created here", group.origin))
    return Detection(kind=kind, summary=f"{kind.replace('_', ' ')}: {headline}",
                     message="\n".join(lines), attributes=attributes,
                     stacks=detection_stacks, fingerprint=(group.site,))
