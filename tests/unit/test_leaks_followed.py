"""The thread/task leak tracker with more members than it follows: every member is counted
at each sample, but where members are is read of at most ``FOLLOWED_PER_GROUP`` per group
(``MAX_FOLLOWED`` in all), and a group's arrivals and departures are exact while all its
members are followed, estimated from the followed ones beyond. Members here are plain
objects (the tracker only needs weak references to them); the detector's own run with
real tasks, and the creation stacks many tasks share, are at the end."""

from __future__ import annotations

import asyncio
import random
import threading

import labotel
from labotel.detect import threads as leaks
from labotel.detect.threads import FOLLOWED_PER_GROUP, MAX_FOLLOWED, MIN_FOLLOWED, LeakTracker
from labotel.runtime import origins


class Member:
    """Anything a weak reference can point to."""


def source_line(marker: str) -> int:
    with open(__file__) as source:
        return next(number for number, line in enumerate(source, 1)
                    if line.rstrip().endswith(marker) and "source_line" not in line)


def origin(line: int) -> tuple[tuple[str, int, str], ...]:
    return (("app.py", line, "spawn"),)


class Sampler:
    """Feeds a tracker samples one second apart; counts the places it is asked for."""

    def __init__(self, tracker: LeakTracker) -> None:
        self.tracker = tracker
        self.now = 0.0
        self.asked = 0

    def where(self, member: Member) -> tuple[str, int, str]:
        self.asked += 1
        return ("app.py", 99, "wait")  # every member sits at the same place

    def sample(self, groups: dict[int, list[Member]]) -> None:
        self.now += 1.0
        live = [member for members in groups.values() for member in members]
        created = [origin(line) for line, members in groups.items() for _ in members]
        self.tracker.observe(self.now, live, created, self.where)

    def last(self, line: int) -> tuple[float, int, int, int]:
        return self.tracker.groups[f"app.py:{line}"].history[-1]


def test_a_big_group_is_counted_whole_but_only_some_of_it_is_followed():
    sampler = Sampler(LeakTracker(window=60, min_growth=10, limit=10**9))
    crowd = [Member() for _ in range(20_000)]
    sampler.sample({1: crowd})
    sampler.sample({1: crowd})
    assert sampler.tracker.total == 20_000 and sampler.last(1)[1] == 20_000
    assert sampler.tracker.followed["app.py:1"] == FOLLOWED_PER_GROUP
    assert sampler.asked == 2 * FOLLOWED_PER_GROUP  # places read: the followed ones only
    assert sampler.tracker.bytes() < 100_000  # a record per member before


def test_arrivals_and_departures_are_exact_while_a_group_is_followed_whole():
    sampler = Sampler(LeakTracker(window=60, min_growth=10, limit=10**9))
    members = [Member() for _ in range(50)]
    sampler.sample({1: members})
    members = members[5:] + [Member() for _ in range(3)]  # 5 leave, 3 come
    sampler.sample({1: members})
    assert sampler.last(1)[1:] == (48, 3, 5)


def test_a_member_freed_and_its_address_reused_by_a_new_one_is_a_departure_and_an_arrival():
    """CPython gives a new object the memory, so the id, of one just freed: a followed
    member's record must not be taken over by its successor."""
    sampler = Sampler(LeakTracker(window=60, min_growth=10, limit=10**9))
    members = [Member() for _ in range(50)]
    sampler.sample({1: members})
    freed = {id(member) for member in members[:5]}
    del members[:5]
    members += [Member() for _ in range(5)]
    assert freed & {id(member) for member in members[-5:]}  # the case meant
    sampler.sample({1: members})
    assert sampler.last(1)[1:] == (50, 5, 5)
    assert sampler.tracker.followed["app.py:1"] == len(sampler.tracker.members) == 50


def test_departures_beyond_the_followed_are_estimated_from_them():
    """A pool of 2000 (100 followed) in which a tenth of the members leave and are
    replaced at each sample: about 200 departures and as many arrivals, not the 10 or so
    that leave among the followed."""
    rng = random.Random(7)
    sampler = Sampler(LeakTracker(window=60, min_growth=10, limit=10**9))
    pool = [Member() for _ in range(2000)]
    sampler.sample({1: pool})
    departures = []
    for _ in range(10):
        leaving = set(rng.sample(range(len(pool)), 200))
        pool = [m for i, m in enumerate(pool) if i not in leaving] + [Member() for _ in range(200)]
        sampler.sample({1: pool})
        _, count, came, gone = sampler.last(1)
        assert count == 2000 and came == gone  # the count's own arithmetic holds
        departures.append(gone)
    assert 120 <= sum(departures) / len(departures) <= 280, departures


def test_a_group_that_appears_once_the_table_is_full_still_gets_followed():
    sampler = Sampler(LeakTracker(window=60, min_growth=10, limit=10**9))
    pools = {line: [Member() for _ in range(FOLLOWED_PER_GROUP + 50)]
             for line in range(1, MAX_FOLLOWED // FOLLOWED_PER_GROUP + 1)}
    sampler.sample(pools)
    assert len(sampler.tracker.members) == MAX_FOLLOWED
    late = [Member() for _ in range(30)]
    sampler.sample({**pools, 999: late})
    assert sampler.tracker.followed["app.py:999"] == MIN_FOLLOWED
    assert len(sampler.tracker.members) == MAX_FOLLOWED  # taken from the biggest groups


def test_a_leak_in_a_group_bigger_than_the_followed_share_is_found():
    """5000 members already there, 50 more stuck at each sample: the trend is counted on
    every member, the members' staying put judged on the followed ones."""
    sampler = Sampler(LeakTracker(window=10, min_growth=10, limit=10**9))
    group = [Member() for _ in range(5000)]
    verdict = None
    for _ in range(8):
        group = group + [Member() for _ in range(50)]
        sampler.sample({1: group})
        verdict = sampler.tracker.assess("app.py:1", sampler.now) or verdict
    assert verdict is not None and verdict.trigger == "trend"
    assert 40 <= verdict.rate <= 60 and verdict.departed == 0
    assert verdict.stuck <= FOLLOWED_PER_GROUP


def test_the_detector_with_20000_pending_tasks_follows_few_and_still_finds_a_leak():
    """Real tasks: 20000 pending from one line, and a leak of ten a second from another.
    The leak is reported, with the members looked at said; the view shows how many are
    followed and how the samples are spaced."""
    monitor = labotel.start(admin_address="127.0.0.1:0", leak_sample_interval=0.3,
                            leak_window=4.0)
    detector = monitor.component("detect.threads")

    def leak_found() -> list:
        return [d for d in labotel.detections("task_leak")
                if d.attributes["labotel.leak.trigger"] == "trend"]

    async def main() -> None:
        await asyncio.sleep(0)  # labotel hooks the loop's task factory once it runs
        release = asyncio.Event()
        crowd = [asyncio.create_task(release.wait()) for _ in range(20_000)]  # CROWD
        for _ in range(150):
            if leak_found():
                break
            asyncio.create_task(release.wait())  # LEAK
            await asyncio.sleep(0.1)
        release.set()
        await asyncio.gather(*crowd)

    asyncio.run(main())
    view = detector.view()["leak_detection"]
    leaked = leak_found()
    assert leaked, view["sampling"]
    assert leaked[0].attributes["labotel.leak.site"].endswith(
        f":{source_line('# LEAK')}")
    crowd = next(group for group in view["tasks"]["groups"]
                 if group["site"].endswith(f":{source_line('# CROWD')}"))
    assert crowd["count"] == 20_000 and crowd["followed"] == FOLLOWED_PER_GROUP
    assert view["tasks"]["followed"] <= MAX_FOLLOWED
    sampling = view["sampling"]
    assert sampling["seconds_apart"] >= 0.3
    spaced = sampling["last_sample_cpu_seconds"] / leaks.SAMPLE_SHARE
    assert sampling["seconds_apart"] >= min(spaced, 0.3) - 1e-9
    assert sampling["judged_over_seconds"] >= max(4.0, leaks.MIN_POINTS * 0.3)


def test_members_created_at_one_line_share_one_creation_stack():
    """A server's per-connection tasks all have the same creation stack: each kept its own
    copy (~340 bytes), 43.7 MB in all for 100 000 tasks. The copies are one shared
    tuple now, and what is kept per task is counted in labotel's own memory."""
    monitor = labotel.start(admin_address="")

    async def main() -> list[asyncio.Task]:
        await asyncio.sleep(0)  # labotel hooks the loop's task factory once it runs
        release = asyncio.Event()
        tasks = [asyncio.create_task(release.wait()) for _ in range(200)]  # SAME LINE
        await asyncio.sleep(0)
        kept = dict(monitor.footprint.breakdown())
        release.set()
        await asyncio.gather(*tasks)
        return tasks, kept

    tasks, kept = asyncio.run(main())
    created = {id(origins.task_origin(task)) for task in tasks}
    assert len(created) == 1 and origins.task_origin(tasks[0])[0][1] == source_line(
        "# SAME LINE")
    assert kept["creation_sites"] >= 200 * origins.ORIGIN_ENTRY_BYTES

    threads = [threading.Thread(target=print, args=("",)) for _ in range(3)]
    for thread in threads:
        thread.start()  # THREADS
        thread.join()
    assert len({id(origins.thread_origin(thread)) for thread in threads}) == 1


def test_the_shared_creation_stacks_are_bounded(monkeypatch):
    monkeypatch.setattr(origins, "MAX_SHARED", 3)
    monkeypatch.setattr(origins, "_shared_origins", {})
    for depth in range(10):  # ten distinct stacks
        nested(depth, origins.capture)
    assert 1 <= len(origins._shared_origins) <= 3


def nested(depth: int, call):
    return call() if depth == 0 else nested(depth - 1, call)
