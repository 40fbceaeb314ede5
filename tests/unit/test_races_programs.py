"""Small concurrent programs over every primitive: each racy one must be reported, no
race-free one may be. Many race-free ones are what a time-window detector would flag
(accesses from two threads milliseconds apart, correctly ordered); some racy ones have
their accesses seconds apart."""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import socket
import threading
import time

import pytest

import labotel
from tests.unit.race_support import (
    races_on,
    read,
    run_all,
    spawn,
    start_detector,
    wait_until,
    write,
)


@pytest.fixture(autouse=True)
def detector():
    yield start_detector()
    labotel.shutdown()


def assert_race(resource: str) -> None:
    found = races_on(resource)
    assert found, f"the race on {resource!r} was not reported"


def assert_no_race(resource: str) -> None:
    found = races_on(resource)
    assert not found, f"false race on {resource!r}: {found[0].message}"


# --- locks ------------------------------------------------------------------------------

def test_lock_protected_counter_is_race_free():
    lock = threading.Lock()

    def worker():
        for _ in range(50):
            with lock:
                read("counter")
                write("counter")

    run_all(*[worker] * 4)
    read("counter")
    assert_no_race("counter")


def test_unprotected_counter_is_a_race():
    def worker():
        for _ in range(3):
            read("counter")
            write("counter")

    run_all(worker, worker)
    assert_race("counter")


def test_lock_on_one_side_only_is_a_race():
    lock = threading.Lock()

    def locked_writer():
        with lock:
            write("half")

    def bare_reader():
        read("half")

    run_all(locked_writer, bare_reader)
    assert_race("half")


def test_two_different_locks_are_a_race():
    lock_a, lock_b = threading.Lock(), threading.Lock()

    def with_a():
        with lock_a:
            write("two-locks")

    def with_b():
        with lock_b:
            write("two-locks")

    run_all(with_a, with_b)
    assert_race("two-locks")


def test_rlock_reentrant_acquire_is_race_free():
    rlock = threading.RLock()

    def inner():
        with rlock:
            write("rlocked")

    def outer():
        for _ in range(20):
            with rlock:
                read("rlocked")
                inner()  # reentrant acquire and release inside the critical section

    run_all(outer, outer, outer)
    assert_no_race("rlocked")


def test_rlock_reentrant_release_does_not_hide_an_unlocked_writer():
    rlock = threading.RLock()

    def locked():
        with rlock, rlock:
            write("rlock-half")

    run_all(locked, lambda: write("rlock-half"))
    assert_race("rlock-half")


def test_non_blocking_acquire_spin_is_race_free():
    lock = threading.Lock()

    def worker():
        for _ in range(10):
            while not lock.acquire(blocking=False):
                time.sleep(0)
            try:
                write("spin")
            finally:
                lock.release()

    run_all(worker, worker)
    assert_no_race("spin")


def test_failed_non_blocking_acquire_gives_no_protection():
    lock = threading.Lock()
    tried = []

    def intruder():
        acquired = lock.acquire(blocking=False)
        write("nonblocking")  # proceeds although it did not get the lock
        tried.append(acquired)

    with lock:
        thread = spawn(intruder)
        wait_until(tried)
        write("nonblocking")
    thread.join()
    assert tried == [False]
    assert_race("nonblocking")


def test_acquire_with_timeout_is_race_free_and_timed_out_acquire_is_not():
    lock = threading.Lock()

    def patient():
        assert lock.acquire(timeout=5)
        write("timeout-ok")
        lock.release()

    run_all(patient, patient)
    assert_no_race("timeout-ok")

    outcome = []

    def impatient():
        outcome.append(lock.acquire(timeout=0.02))
        write("timeout-expired")

    with lock:
        thread = spawn(impatient)
        wait_until(outcome)
        write("timeout-expired")
    thread.join()
    assert outcome == [False]
    assert_race("timeout-expired")


# --- conditions, semaphores, events, barriers -----------------------------------------

EARLY = pytest.mark.parametrize("early", [False, True],
                                ids=["made-after-start", "made-before-start"])


def make(early: bool, factory, *args):
    """``factory(*args)``, made before ``start()`` when ``early`` (its lock is then a plain
    one, which the detector sees only through the hooks on the Condition class)."""
    if not early:
        return factory(*args)
    labotel.shutdown()
    made = factory(*args)
    start_detector()
    return made

@EARLY
def test_condition_producer_consumer_is_race_free(early):
    cond = make(early, threading.Condition)
    items: list[int] = []

    def producer():
        for i in range(20):
            write("cond-data")
            with cond:
                items.append(i)
                cond.notify()

    def consumer():
        taken = 0
        while taken < 20:
            with cond:
                cond.wait_for(lambda: items)
                items.pop()
            read("cond-data")  # ordered after the producer's write via the condition
            taken += 1

    run_all(producer, consumer)
    assert_no_race("cond-data")


@EARLY
def test_condition_wait_loop_with_plain_lock_and_notify_all_is_race_free(early):
    cond = make(early, lambda: threading.Condition(threading.Lock()))
    ready = []

    def waiter():
        with cond:
            while not ready:
                cond.wait()
        read("broadcast")

    threads = [spawn(waiter) for _ in range(3)]
    time.sleep(0.02)
    write("broadcast")
    with cond:
        ready.append(True)
        cond.notify_all()
    for thread in threads:
        thread.join()
    assert_no_race("broadcast")


@EARLY
def test_write_after_notify_outside_the_lock_is_a_race(early):
    cond = make(early, threading.Condition)
    ready = []

    def consumer():
        with cond:
            cond.wait_for(lambda: ready)
        read("late-write")

    thread = spawn(consumer)
    with cond:
        ready.append(True)
        cond.notify()
    write("late-write")  # after the release the consumer synchronised with
    thread.join()
    assert_race("late-write")


@EARLY
@pytest.mark.parametrize("factory", [threading.Semaphore, threading.BoundedSemaphore])
def test_semaphore_as_mutex_is_race_free(factory, early):
    sem = make(early, factory, 1)

    def worker():
        for _ in range(20):
            with sem:
                read("sem-mutex")
                write("sem-mutex")

    run_all(worker, worker, worker)
    assert_no_race("sem-mutex")


@EARLY
def test_semaphore_as_signal_is_race_free(early):
    signal = make(early, threading.Semaphore, 0)

    def producer():
        write("sem-signal")
        signal.release()

    thread = spawn(producer)
    signal.acquire()
    read("sem-signal")
    thread.join()
    assert_no_race("sem-signal")


@EARLY
def test_semaphore_admitting_two_is_a_race(early):
    sem = make(early, threading.Semaphore, 2)
    both_inside = threading.Barrier(2)

    def worker():
        with sem:
            both_inside.wait()
            write("sem-two")

    run_all(worker, worker)
    assert_race("sem-two")


def test_event_wait_and_is_set_polling_are_race_free():
    event = threading.Event()

    def producer():
        write("event-data")
        event.set()

    def waiter():
        event.wait()
        read("event-data")

    def poller():
        while not event.is_set():  # no lock taken: labotel hooks is_set()
            time.sleep(0.001)
        read("event-data")

    run_all(producer, waiter, poller)
    assert_no_race("event-data")


def test_write_after_event_set_is_a_race():
    event = threading.Event()

    def waiter():
        event.wait()
        read("event-late")

    thread = spawn(waiter)
    event.set()
    write("event-late")
    thread.join()
    assert_race("event-late")


@EARLY
def test_barrier_phases_are_race_free(early):
    parties = 3
    barrier = make(early, threading.Barrier, parties)

    def worker(i):
        write(f"phase1-{i}")  # each thread fills its own slot
        barrier.wait()
        for j in range(parties):  # then everyone reads every slot
            read(f"phase1-{j}")
        barrier.wait()
        if i == 0:
            write("phase1-1")  # phase 3: one thread rewrites a slot read in phase 2

    threads = [spawn(worker, i) for i in range(parties)]
    for thread in threads:
        thread.join()
    for j in range(parties):
        assert_no_race(f"phase1-{j}")


@EARLY
def test_writes_after_the_barrier_are_a_race(early):
    barrier = make(early, threading.Barrier, 2)

    def worker():
        barrier.wait()
        write("after-barrier")

    run_all(worker, worker)
    assert_race("after-barrier")


# --- threads and timers ------------------------------------------------------------------

def test_start_and_join_order_parent_and_child():
    write("fork-join")  # before start(): visible to the child

    def child():
        read("fork-join")
        write("fork-join")

    thread = spawn(child)
    thread.join()
    read("fork-join")  # after join(): the child's write is visible
    write("fork-join")
    assert_no_race("fork-join")


def test_polling_is_alive_counts_as_join():
    thread = spawn(lambda: write("alive-poll"))
    while thread.is_alive():
        time.sleep(0.001)
    read("alive-poll")
    assert_no_race("alive-poll")


def test_timer_start_and_join_are_race_free():
    write("timer-data")
    timer = threading.Timer(0.01, lambda: write("timer-data"))
    timer.start()
    timer.join()
    read("timer-data")
    assert_no_race("timer-data")


def test_child_write_read_by_parent_seconds_later_without_join_is_a_race():
    done = []

    def child():
        write("slow-race")
        done.append(True)

    thread = spawn(child)
    wait_until(done)
    time.sleep(1.5)  # far outside any time window; still unordered
    read("slow-race")
    thread.join()
    found = races_on("slow-race")
    assert found
    assert found[0].attributes["labotel.race.elapsed_seconds"] >= 1.4


def test_timer_without_join_is_a_race():
    fired = []

    def callback():
        write("timer-race")
        fired.append(True)

    timer = threading.Timer(0.01, callback)
    timer.start()
    wait_until(fired)
    read("timer-race")
    timer.join()
    assert_race("timer-race")


def test_thread_identity_is_not_reused_when_os_ident_is():
    done = []

    def first():
        write("reused-ident")
        done.append(threading.get_ident())

    spawn(first)
    wait_until(done)
    time.sleep(0.05)  # the first thread has exited; its ident is free again
    idents = []

    def second():
        idents.append(threading.get_ident())
        write("reused-ident")  # not ordered after first(): nobody joined it

    thread = spawn(second)
    thread.join()
    assert_race("reused-ident")
    report = races_on("reused-ident")[0].attributes
    assert report["thread.id"] != report["labotel.race.previous.thread.id"]


# --- queues ------------------------------------------------------------------------------

# Names, not classes: queue.SimpleQueue is replaced at start() (it is C code), so it must be
# looked up when the queue is made, as application code does.
QUEUES = ["Queue", "LifoQueue", "PriorityQueue", "SimpleQueue"]


@pytest.mark.parametrize("kind", QUEUES)
def test_queue_handoff_is_race_free(kind):
    q = getattr(queue, kind)()
    resource = f"handoff-{kind}"

    def producer():
        for i in range(10):
            write(f"{resource}-{i}")  # fill the item, then hand it over
            q.put(i)

    def consumer():
        for _ in range(10):
            i = q.get()
            read(f"{resource}-{i}")
            write(f"{resource}-{i}")  # the consumer owns it now

    run_all(producer, consumer)
    for i in range(10):
        assert_no_race(f"{resource}-{i}")


@pytest.mark.parametrize("kind", QUEUES)
def test_touching_an_item_after_put_is_a_race(kind):
    q = getattr(queue, kind)()
    resource = f"after-put-{kind}"

    def consumer():
        q.get()
        read(resource)

    thread = spawn(consumer)
    q.put(1)
    write(resource)  # the producer keeps using what it handed over
    thread.join()
    assert_race(resource)


@pytest.mark.parametrize("before_start", [False, True])
def test_queue_join_after_task_done_is_race_free(before_start):
    work = make(before_start, queue.Queue)
    resource = f"task-done-{before_start}"

    def consumer():
        while True:
            item = work.get()
            if item is None:
                work.task_done()
                return
            write(resource)  # results written by the consumer...
            work.task_done()

    thread = spawn(consumer)
    work.put(1)
    work.put(2)
    work.join()  # ...are visible once join() returns
    read(resource)
    work.put(None)
    thread.join()
    assert_no_race(resource)


def test_queue_created_before_start_still_orders_put_and_get():
    early = make(True, queue.Queue)

    def producer():
        write("early-queue")
        early.put(1)

    thread = spawn(producer)
    early.get()
    read("early-queue")
    thread.join()
    assert_no_race("early-queue")


# --- executors ---------------------------------------------------------------------------

def test_executor_submit_result_and_map_are_race_free():
    write("pool-input")

    def task(i):
        read("pool-input")
        write(f"pool-output-{i}")
        return i

    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        futures = [pool.submit(task, i) for i in range(6)]
        for future in futures:
            read(f"pool-output-{future.result()}")
        for i in pool.map(task, range(6, 12)):
            read(f"pool-output-{i}")
        done = [pool.submit(task, 12)]
        for future in concurrent.futures.as_completed(done):
            future.result()
        read("pool-output-12")
    write("pool-input")
    for i in range(13):
        assert_no_race(f"pool-output-{i}")
    assert_no_race("pool-input")


def test_executor_created_before_start_orders_submit_and_task():
    labotel.shutdown()
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=2)
    pool.submit(lambda: None).result()  # its worker thread exists before start()
    try:
        start_detector()
        ran = []

        def task():
            read("early-pool")
            ran.append(True)

        write("early-pool")
        future = pool.submit(task)
        wait_until(ran)  # the task ran before we touched the future: only submit orders it
        future.result()
        write("early-pool")
        assert_no_race("early-pool")
    finally:
        pool.shutdown()


def test_reading_a_task_result_without_result_is_a_race():
    finished = []

    def task():
        write("no-result")
        finished.append(True)

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(task)
        wait_until(finished)
        read("no-result")
        future.result()
    assert_race("no-result")


def test_tasks_running_concurrently_race():
    together = threading.Barrier(2)

    def task(_):
        together.wait()
        write("pool-shared")

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(task, range(2)))
    assert_race("pool-shared")


# --- asyncio meets threads ------------------------------------------------------------

def test_run_in_executor_result_is_race_free():
    async def main():
        loop = asyncio.get_running_loop()
        write("executor-data")

        def blocking():
            read("executor-data")
            write("executor-data")

        await loop.run_in_executor(None, blocking)  # the result comes back via the loop
        read("executor-data")

    asyncio.run(main())
    assert_no_race("executor-data")


def test_run_coroutine_threadsafe_is_race_free():
    async def main():
        loop = asyncio.get_running_loop()

        async def on_loop():
            read("loop-data")  # ordered by call_soon_threadsafe, not by any lock

        def from_thread():
            write("loop-data")
            asyncio.run_coroutine_threadsafe(on_loop(), loop).result()
            write("loop-data")

        await loop.run_in_executor(None, from_thread)

    asyncio.run(main())
    assert_no_race("loop-data")


def test_thread_writing_after_scheduling_a_coroutine_races():
    async def main():
        loop = asyncio.get_running_loop()
        scheduled = []

        read_done = []

        async def on_loop():
            while not scheduled:
                await asyncio.sleep(0.001)
            read("loop-late")
            read_done.append(True)

        def from_thread():
            future = asyncio.run_coroutine_threadsafe(on_loop(), loop)
            write("loop-late")  # after the hand-over
            scheduled.append(True)
            wait_until(read_done)  # (future.result() would synchronise: wait until read)
            future.result()

        await loop.run_in_executor(None, from_thread)

    asyncio.run(main())
    assert_race("loop-late")


# --- synchronization labotel cannot see: annotations -----------------------------------

@pytest.mark.parametrize("annotated", [True, False])
def test_socket_handoff_needs_annotations(annotated):
    left, right = socket.socketpair()
    resource = f"socket-{annotated}"

    def sender():
        write(resource)
        if annotated:
            labotel.happens_before(("socket", id(left)))
        left.sendall(b"x")

    try:
        thread = spawn(sender)
        assert right.recv(1) == b"x"
        if annotated:
            labotel.happens_after(("socket", id(left)))
        read(resource)
        thread.join()
    finally:
        left.close()
        right.close()
    if annotated:
        assert_no_race(resource)
    else:
        assert_race(resource)


# --- reads, ownership, shared() -----------------------------------------------------------

def test_concurrent_reads_are_not_a_race_but_a_later_write_is():
    write("config")

    def reader():
        for _ in range(5):
            read("config")

    run_all(reader, reader, reader)
    assert_no_race("config")  # joined readers: the main thread's write below is ordered
    write("config")
    assert_no_race("config")
    readers = [spawn(reader) for _ in range(2)]
    write("config")  # concurrent with the still-unjoined readers
    for thread in readers:
        thread.join()
    assert_race("config")


def test_shared_dict_with_and_without_lock():
    lock = threading.Lock()
    safe = labotel.shared({}, "safe-dict")
    racy = labotel.shared({}, "racy-dict")

    def worker(n):
        for i in range(10):
            with lock:
                safe[f"{n}-{i}"] = i
                _ = len(safe)
            racy[f"{n}-{i}"] = i

    threads = [spawn(worker, n) for n in range(2)]
    for thread in threads:
        thread.join()
    assert len(safe) == 20 and len(racy) == 20
    assert_no_race("safe-dict")
    assert_race("racy-dict")


@pytest.mark.parametrize("make", [list, set], ids=["list", "set"])
def test_shared_containers_race(make):
    name = f"shared-{make.__name__}"
    container = labotel.shared(make(), name)
    add = "append" if make is list else "add"

    def worker(n):
        for i in range(5):
            getattr(container, add)((n, i))

    threads = [spawn(worker, n) for n in range(2)]
    for thread in threads:
        thread.join()
    assert len(container) == 10
    assert_race(name)


def test_shared_object_attributes():
    class Stats:
        hits = 0

    stats = labotel.shared(Stats(), "stats")
    lock = threading.Lock()

    def locked():
        with lock:
            stats.hits += 1

    run_all(locked, locked)
    assert stats.hits == 2
    assert_no_race("stats")
    run_all(lambda: setattr(stats, "hits", 5), lambda: stats.hits)
    assert_race("stats")
