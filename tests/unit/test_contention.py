"""The mutex and block profiles: who waited, at which primitive, charged to which stack."""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
import time
from collections.abc import Callable

import pytest

import labotel
from labotel.hooks.primitives import instrumented
from labotel.profile import contention
from tests.unit.test_pprof_support import decode, get

# An exception a hook lets into an application thread must fail the test, not warn.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")

HOLD = 0.15
MODULE = "tests.unit.test_contention."
_EARLY_LOCK = threading.Lock()  # made at import time, before any start()


def start(**options) -> labotel.Monitor:
    labotel.shutdown()
    settings = dict(contention_profiling=True, admin_address="", runtime_metrics=False,
                    leak_detection=False, loop_block_detection=False,
                    service_name="contention-test")
    settings.update(options)
    return labotel.start(**settings)


@pytest.fixture
def profiler():
    monitor = start()
    yield monitor.component("profile.contention")
    labotel.shutdown()


def samples(profiler, name: str) -> list[tuple[list[str], int, int]]:
    """(functions innermost first, contentions, delay ns) of every stack in a profile."""
    builder = profiler.profile(name)
    return [([builder.locations[i - 1].function for i in stack], values[0], values[1])
            for (stack, _), values in builder.samples.items()]


def waits_in(profiler, name: str, function: str) -> list[tuple[list[str], int, int]]:
    return [s for s in samples(profiler, name) if MODULE + function in s[0]]


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


def waiters(lock) -> int:
    return len(lock._waiting or [])


# -- the program the profiles must explain ----------------------------------------------------
def hold_lock(lock, others_wait: Callable[[], None]) -> None:
    with lock:
        others_wait()
        time.sleep(HOLD)


def wait_for_lock(lock) -> None:
    with lock:
        pass


def never_waits(lock, rounds: int = 2000) -> None:
    for _ in range(rounds):
        with lock:
            pass


def contended_program(lock, waiting_threads: int = 2) -> None:
    holding = threading.Event()

    def others_wait() -> None:
        holding.set()
        if instrumented(lock):
            wait_until(lambda: waiters(lock) == waiting_threads)
        else:  # a plain lock tells nothing: give them time
            time.sleep(0.1)

    holder = threading.Thread(target=hold_lock, args=(lock, others_wait), name="holder")
    holder.start()
    holding.wait()
    threads = [threading.Thread(target=wait_for_lock, args=(lock,), name=f"waiter-{n}")
               for n in range(waiting_threads)]
    for thread in threads:
        thread.start()
    never_waits(threading.Lock())
    holder.join()
    for thread in threads:
        thread.join()


def test_mutex_charges_the_holder_and_block_the_waiters(profiler):
    contended_program(threading.Lock())
    # The holder kept two threads waiting HOLD each: its release is charged both waits
    # (Go 1.22's semantics: all the waiters a release kept, not just the one it woke).
    (holder,) = waits_in(profiler, "mutex", "hold_lock")
    assert holder[0][:2] == ["threading.Lock.release", MODULE + "hold_lock"]
    assert holder[1] == 1 and holder[2] >= 2 * HOLD * 0.8e9
    blocked = waits_in(profiler, "block", "wait_for_lock")
    assert [s[0][:2] for s in blocked] == [["threading.Lock.acquire", MODULE + "wait_for_lock"]]
    assert blocked[0][1] == 2 and blocked[0][2] >= 2 * HOLD * 0.8e9
    everything = samples(profiler, "mutex") + samples(profiler, "block")
    assert not any(MODULE + "never_waits" in s[0] for s in everything)


def test_the_waits_charged_to_releasers_add_up_to_the_waits():
    monitor = start(contention_profile_rate=1)  # every wait, unsampled
    try:
        contended_program(threading.Lock(), waiting_threads=3)
        profiler = monitor.component("profile.contention")
        charged = sum(s[2] for s in samples(profiler, "mutex"))
        waited = sum(s[2] for s in waits_in(profiler, "block", "wait_for_lock"))
        assert abs(charged - waited) < 0.05 * waited, (charged, waited)
        (holder,) = waits_in(profiler, "mutex", "hold_lock")
        assert holder[2] > 0.9 * charged  # the one slow holder, not the quick hand-offs
    finally:
        labotel.shutdown()


def test_an_rlock_is_charged_like_a_lock(profiler):
    contended_program(threading.RLock(), waiting_threads=1)
    assert [s[0][:2] for s in waits_in(profiler, "mutex", "hold_lock")] == [
        ["threading.RLock.release", MODULE + "hold_lock"]]
    assert [s[0][:2] for s in waits_in(profiler, "block", "wait_for_lock")] == [
        ["threading.RLock.acquire", MODULE + "wait_for_lock"]]


def test_uncontended_acquires_record_nothing(profiler):
    lock, rlock = threading.Lock(), threading.RLock()
    for _ in range(10_000):
        with lock, rlock, rlock:
            pass
        assert lock.acquire(timeout=1)
        lock.release()

    async def main() -> None:
        lock, event, items = asyncio.Lock(), asyncio.Event(), asyncio.Queue()
        event.set()
        for n in range(1000):
            async with lock:
                await event.wait()
                await items.put(n)
                await items.get()
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        await done

    asyncio.run(main())
    assert profiler.recorder.stats()["waits_kept"] == 0
    assert samples(profiler, "block") == samples(profiler, "mutex") == []


# -- every primitive a thread or a task waits on ----------------------------------------------
def later(action: Callable[[], object], delay: float = 0.05) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(delay), action()))
    thread.start()
    return thread


def wait_on_condition() -> None:
    cond = threading.Condition()
    with cond:
        thread = later(lambda: _notify(cond))
        cond.wait()
    thread.join()


def _notify(cond) -> None:
    with cond:
        cond.notify()


def wait_on_semaphore() -> None:
    semaphore = threading.Semaphore(0)
    thread = later(semaphore.release)
    semaphore.acquire()
    thread.join()


def wait_on_event() -> None:
    event = threading.Event()
    thread = later(event.set)
    event.wait()
    thread.join()


def wait_on_queue_get() -> None:
    items: queue.Queue = queue.Queue()
    thread = later(lambda: items.put(1))
    items.get()
    thread.join()


def wait_on_queue_put() -> None:
    items: queue.Queue = queue.Queue(maxsize=1)
    items.put(0)
    thread = later(items.get)
    items.put(1)
    thread.join()


def wait_on_simple_queue() -> None:
    items: queue.SimpleQueue = queue.SimpleQueue()
    thread = later(lambda: items.put(1))
    items.get()
    thread.join()


def wait_on_thread_join() -> None:
    thread = threading.Thread(target=time.sleep, args=(0.05,))
    thread.start()
    thread.join()


def wait_on_future_result() -> None:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(time.sleep, 0.05).result()


def wait_on_asyncio_lock() -> None:
    async def main() -> None:
        lock = asyncio.Lock()
        await lock.acquire()
        asyncio.get_running_loop().call_later(0.05, lock.release)
        await task_waiting_on_lock(lock)

    asyncio.run(main())


async def task_waiting_on_lock(lock: asyncio.Lock) -> None:
    async with lock:
        pass


def wait_on_asyncio_event() -> None:
    async def main() -> None:
        event = asyncio.Event()
        asyncio.get_running_loop().call_later(0.05, event.set)
        await task_waiting_on_event(event)

    asyncio.run(main())


async def task_waiting_on_event(event: asyncio.Event) -> None:
    await event.wait()


def wait_on_asyncio_queue() -> None:
    async def main() -> None:
        items: asyncio.Queue = asyncio.Queue()
        asyncio.get_running_loop().call_later(0.05, items.put_nowait, 1)
        await asyncio.create_task(task_waiting_on_queue(items))

    asyncio.run(main())


async def task_waiting_on_queue(items: asyncio.Queue) -> None:
    await items.get()


def wait_on_asyncio_semaphore() -> None:
    async def main() -> None:
        semaphore = asyncio.Semaphore(0)
        asyncio.get_running_loop().call_later(0.05, semaphore.release)
        await task_waiting_on_semaphore(semaphore)

    asyncio.run(main())


async def task_waiting_on_semaphore(semaphore: asyncio.Semaphore) -> None:
    await semaphore.acquire()


def wait_on_asyncio_condition() -> None:
    async def main() -> None:
        cond = asyncio.Condition()

        async def notify_and_linger() -> None:
            async with cond:
                cond.notify()
                await asyncio.sleep(0.05)  # the waiter takes the lock back after this

        asyncio.get_running_loop().call_later(0.05, asyncio.ensure_future,
                                              notify_and_linger())
        await task_waiting_on_condition(cond)

    asyncio.run(main())


async def task_waiting_on_condition(cond: asyncio.Condition) -> None:
    async with cond:
        await cond.wait()


def wait_on_asyncio_future() -> None:
    async def main() -> None:
        future = asyncio.get_running_loop().create_future()
        later(lambda: future.get_loop().call_soon_threadsafe(future.set_result, 1))
        await task_waiting_on_future(future)

    asyncio.run(main())


async def task_waiting_on_future(future: asyncio.Future) -> None:
    await future


def wait_on_executor_from_a_task() -> None:
    async def main() -> None:
        await task_waiting_on_executor()

    asyncio.run(main())


async def task_waiting_on_executor() -> None:
    await asyncio.get_running_loop().run_in_executor(None, time.sleep, 0.05)


@pytest.mark.parametrize(("program", "site", "caller"), [
    (wait_on_condition, "threading.Condition.wait", None),
    (wait_on_semaphore, "threading.Condition.wait", "threading.Semaphore.acquire"),
    (wait_on_event, "threading.Condition.wait", "threading.Event.wait"),
    (wait_on_queue_get, "threading.Condition.wait", "queue.Queue.get"),
    (wait_on_queue_put, "threading.Condition.wait", "queue.Queue.put"),
    (wait_on_simple_queue, "queue.SimpleQueue.get", None),
    (wait_on_thread_join, "threading.Thread.join", None),
    (wait_on_future_result, "threading.Condition.wait", "concurrent.futures._base.Future.result"),
    (wait_on_asyncio_lock, "asyncio.Lock.acquire", "asyncio.locks._ContextManagerMixin.__aenter__"),
    (wait_on_asyncio_event, "asyncio.Event.wait", MODULE + "task_waiting_on_event"),
    (wait_on_asyncio_queue, "asyncio.Queue.get", MODULE + "task_waiting_on_queue"),
    (wait_on_asyncio_future, "asyncio.Future.__await__", MODULE + "task_waiting_on_future"),
    (wait_on_asyncio_semaphore, "asyncio.Semaphore.acquire",
     MODULE + "task_waiting_on_semaphore"),
    (wait_on_asyncio_condition, "asyncio.Condition.wait", MODULE + "task_waiting_on_condition"),
], ids=lambda value: getattr(value, "__name__", None))
def test_each_primitive_is_a_block_at_the_waiting_stack(profiler, program, site, caller):
    program()
    waiter = program.__name__
    blocked = [s for s in samples(profiler, "block") if s[0][0] == site
               and (caller is None or s[0][1] == caller) and s[2] >= 0.03e9]
    assert blocked, samples(profiler, "block")
    functions = blocked[0][0]
    if site.startswith("asyncio"):  # the task's coroutine chain, not the loop's frames
        assert any(f.startswith(MODULE + "task_waiting_on") for f in functions), functions
        outermost = functions[-1]
        assert outermost.endswith(".<locals>.main") or "task_waiting_on" in outermost
        assert not any("asyncio.runners" in f or "base_events" in f for f in functions)
    else:
        assert MODULE + waiter in functions


def test_an_asyncio_condition_wait_and_its_relock_are_one_block(profiler):
    wait_on_asyncio_condition()
    waits = [s for s in samples(profiler, "block")
             if MODULE + "task_waiting_on_condition" in s[0]]
    assert [s[0][0] for s in waits] == ["asyncio.Condition.wait"]
    assert waits[0][2] >= 0.09e9  # notified after 0.05 s, the lock back 0.05 s later


def test_a_task_awaiting_an_executor_future_is_blocked(profiler):
    wait_on_executor_from_a_task()
    assert any(s[0][:2] == ["asyncio.Future.__await__", MODULE + "task_waiting_on_executor"]
               for s in samples(profiler, "block"))


def sleeper() -> None:
    async def main() -> None:
        await asyncio.sleep(0.05)

    asyncio.run(main())
    time.sleep(0.05)


def test_sleeping_is_not_blocking(profiler):
    sleeper()  # as in Go, where the block profile leaves out sleeps and network waits
    assert not any(MODULE + "sleeper" in "".join(s[0]) or "asyncio.tasks.sleep" in s[0]
                   for s in samples(profiler, "block"))


def test_a_condition_wait_is_one_block_and_its_relock_charges_the_notifier(profiler):
    cond = threading.Condition(threading.Lock())
    waiting = threading.Event()

    def notify_and_linger() -> None:
        waiting.wait()
        with cond:
            cond.notify()
            time.sleep(HOLD)  # the waiter is notified but must wait for the lock

    thread = threading.Thread(target=notify_and_linger)
    thread.start()
    with cond:
        later(waiting.set, 0.02)
        cond.wait()
    thread.join()
    test = MODULE + "test_a_condition_wait_is_one_block_and_its_relock_charges_the_notifier"
    assert [s[0][0] for s in samples(profiler, "block") if s[0][1] == test] == [
        "threading.Condition.wait"]
    assert any(test + ".<locals>.notify_and_linger" in s[0] and s[2] >= HOLD * 0.8e9
               for s in samples(profiler, "mutex"))


def test_labotels_own_waits_are_left_out():
    monitor = start(leak_detection=True, leak_sample_interval=0.05)  # a sampler thread waits
    try:
        time.sleep(0.5)
        everything = samples(monitor.component("profile.contention"), "block")
        assert not any("labotel." in f and ".demo." not in f for s in everything
                       for f in s[0][1:3]), everything
    finally:
        labotel.shutdown()


# -- locks made before start() --------------------------------------------------------------
def contend_on_the_early_lock() -> None:
    contended_program(_EARLY_LOCK, waiting_threads=1)


@pytest.mark.parametrize("adopt", [True, False])
def test_module_level_locks_made_before_start_follow_the_adoption_rules(adopt):
    monitor = start(race_adopt_locks=adopt)
    try:
        assert instrumented(_EARLY_LOCK) == adopt
        contend_on_the_early_lock()
        profiler = monitor.component("profile.contention")
        seen = bool(waits_in(profiler, "mutex", "hold_lock"))
        assert seen == adopt
        assert profiler.adopted_locks >= 1 if adopt else profiler.adopted_locks == 0
    finally:
        labotel.shutdown()
    assert type(_EARLY_LOCK) is type(threading._allocate_lock())  # noqa: SLF001


# -- over HTTP ---------------------------------------------------------------------------------
@pytest.fixture
def url():
    monitor = start(admin_address="127.0.0.1:0", profile_max_seconds=5)
    yield monitor.admin_url + "/debug/pprof/"
    labotel.shutdown()


def test_profiles_are_gos_contentions_and_delay(url):
    contended_program(threading.Lock(), waiting_threads=1)
    for name in contention.PROFILES:
        reply = get(url + name)
        assert reply.status == 200
        assert reply.headers["Content-Disposition"] == f'attachment; filename="{name}"'
        profile = decode(reply.body)
        strings = profile.string_table
        assert [(strings[t.type], strings[t.unit]) for t in profile.sample_type] == [
            ("contentions", "count"), ("delay", "nanoseconds")]
        assert (strings[profile.period_type.type], profile.period) == ("contentions", 1)
        assert sum(s.value[1] for s in profile.sample) >= HOLD * 0.8e9


def test_seconds_gives_the_waits_of_that_window_only(url):
    contended_program(threading.Lock(), waiting_threads=1)  # before the window
    replies: list = []
    request = threading.Thread(target=lambda: replies.append(get(url + "block?seconds=2")))
    request.start()
    time.sleep(0.5)
    wait_on_event()
    request.join(10)
    reply = replies[0]
    assert reply.status == 200
    assert reply.headers["Content-Disposition"] == 'attachment; filename="block-delta"'
    profile = decode(reply.body)
    names = {profile.string_table[f.name] for f in profile.function}
    assert MODULE + "wait_on_event" in names
    assert MODULE + "wait_for_lock" not in names
    assert profile.duration_nanos >= 1.9e9


def test_debug_text_is_gos_legacy_layout(url):
    contended_program(threading.Lock(), waiting_threads=1)
    mutex = get(url + "mutex?debug=1").text.splitlines()
    assert mutex[:3] == ["--- mutex:", "cycles/second=1000000000", "sampling period=1"]
    block = get(url + "block?debug=1").text.splitlines()
    assert block[:2] == ["--- contention:", "cycles/second=1000000000"]
    records = [line for line in block if line and not line.startswith(("#", "---", "cycles"))]
    delays = [int(line.split()[0]) for line in records]
    assert delays == sorted(delays, reverse=True) and all(" @ 0x" in r for r in records)
    assert any(f"\t{MODULE}wait_for_lock+0x" in line for line in block)


def test_index_counts_the_stacks_of_both_profiles(url):
    contended_program(threading.Lock(), waiting_threads=1)
    page = get(url).text
    for name in contention.PROFILES:
        assert f"<a href='{name}?debug=1'>{name}</a>" in page


def test_sampling_short_waits_leaves_the_applications_random_numbers_alone():
    """Short waits are kept at random (Go's block rate): with labotel's own generator, so
    an application that seeds ``random`` gets the numbers it expects."""
    import random

    start(contention_profile_rate=10**9)
    try:
        random.seed(7)
        contended_program(threading.Lock())  # waits of ~HOLD, far under the rate: each drawn
        expected = random.Random(7)
        assert [random.random() for _ in range(3)] == [expected.random() for _ in range(3)]
    finally:
        labotel.shutdown()
