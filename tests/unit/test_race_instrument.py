"""Race detection without annotations: unannotated programs (tests/race_programs) are
imported through the hook and their races found with Python's semantics."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib
import logging
import queue
import sys
import threading
import traceback

import pytest

import labotel
from labotel.detect import import_hook, race_runtime
from tests.unit.race_support import run_all, spawn, start_detector, wait_until

PROGRAMS = "tests.race_programs.programs"


def fresh(name: str):
    """Import ``name`` anew (after start(), so the hook sees it)."""
    for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[module]
    return importlib.import_module(name)


@pytest.fixture
def programs():
    for module in [m for m in sys.modules if m.startswith(PROGRAMS)]:
        del sys.modules[module]
    start_detector(race_instrument=PROGRAMS)
    yield fresh(PROGRAMS)
    labotel.shutdown()


def races() -> list[labotel.Detection]:
    return labotel.detections("race_condition")


def races_named(fragment: str) -> list[labotel.Detection]:
    return [d for d in races() if fragment in d.attributes["labotel.race.resource"]]


def twice(target, *args) -> None:
    """Two unsynchronized threads run ``target(*args)``."""
    run_all(lambda: target(*args), lambda: target(*args))


def assert_silent() -> None:
    found = races()
    assert not found, f"false race: {found[0].message}"


# --- read-modify-write and check-then-act are reported ---------------------------------

def test_attribute_read_modify_write_is_reported_with_source_text(programs):
    account = programs.Account()
    twice(account.deposit, 5)
    [race] = races()
    assert race.attributes["labotel.race.resource"].startswith("Account.balance#")
    assert race.attributes["labotel.race.source"] == "self.balance += amount"
    assert race.attributes["labotel.race.access"] == "read-modify-write"
    assert race.attributes["code.filepath"] == programs.__file__
    assert race.attributes["code.function"] == "Account.deposit"
    for stack in race.stacks:
        assert stack.frames[0][2] == "Account.deposit"  # application frame innermost
    assert "self.balance += amount" in race.message
    assert account.balance == 10  # the operation itself ran as written


def test_same_code_behind_a_lock_is_silent(programs):
    account = programs.Account()
    twice(account.deposit_locked, threading.Lock(), 5)
    assert account.balance == 10
    assert_silent()


def sequenced(first, second) -> None:
    """``first`` runs to the end before ``second`` starts, with no happens-before edge
    between them (a plain list is polled): the order is fixed, the threads unordered."""
    done: list = []

    def run_first():
        first()
        done.append(1)

    def run_second():
        wait_until(done)
        second()

    run_all(run_first, run_second)


@pytest.mark.parametrize("name, make, args, resource", [
    ("put_if_absent", dict, ("k", 1), "d['k']#"),
    ("increment_item", dict, ("k",), "d['k']#"),
    ("augment_item", lambda: {"k": 0}, ("k",), "d['k']#"),
    ("append_unique", list, ("x",), "results#"),
    ("add_unique", set, ("x",), "s['x']#"),
    ("bounded_append", list, (1, 10), "results#"),
    ("iterate_then_clear", lambda: [1, 2], (), "results#"),
])
def test_check_then_act_on_containers_is_reported(programs, name, make, args, resource):
    """The check-then-act runs first; another thread's plain write of the same location
    follows, unordered: the write could have landed between the check and the act."""
    shared = make()
    rivals = {dict: lambda: programs.store_item(shared, args[0], 9),
              list: lambda: programs.append_result(shared, 9),
              set: lambda: programs.add_item(shared, "x")}
    sequenced(lambda: getattr(programs, name)(shared, *args), rivals[type(shared)])
    # the resource is named as the reporting (later) access's code calls it
    assert races_named(resource), [d.summary for d in races()]
    assert any(d.attributes["labotel.race.previous.code.function"] == name
               and d.attributes["labotel.race.previous.labotel.race.access"]
               == "read-modify-write" for d in races())


def test_check_then_act_that_does_not_act_is_silent(programs):
    """The second thread finds the key present and only reads: one write, no race."""
    shared: dict = {}
    sequenced(lambda: programs.put_if_absent(shared, "k", 1),
              lambda: programs.put_if_absent(shared, "k", 2))
    assert shared == {"k": 1}
    assert_silent()


def test_deletes_are_atomic_writes_and_check_then_delete_races(programs):
    shared = {"k": 1, "j": 1}
    account = programs.Account()
    sequenced(lambda: (programs.drop(shared, "j"), programs.drop_attribute(account)),
              lambda: (programs.store_item(shared, "j", 2), account.close()))
    assert_silent()
    sequenced(lambda: programs.drop_if_present(shared, "k"),
              lambda: programs.store_item(shared, "k", 2))
    assert races_named("d['k']#")


def test_slices_of_a_list_are_reads_and_writes_of_the_whole_list(programs):
    shared = [1, 2, 3]
    sequenced(lambda: programs.copy_items(shared),
              lambda: programs.append_result(shared, 9))
    sequenced(lambda: programs.drop_first(shared),
              lambda: programs.append_result(shared, 9))
    assert_silent()  # one slice read, one slice delete: single operations
    assert shared == [2, 3, 9, 9]
    sequenced(lambda: programs.keep_first(shared, 2),
              lambda: programs.append_result(shared, 9))
    assert shared == [2, 3, 9]
    assert races_named("results#"), [d.summary for d in races()]
    assert any(d.attributes["labotel.race.previous.code.function"] == "keep_first"
               and d.attributes["labotel.race.previous.labotel.race.access"]
               == "read-modify-write" for d in races())


def test_for_and_with_attribute_targets_are_writes(programs):
    account = programs.Account()
    sequenced(lambda: account.scan_once([1, 2]), account.reset_cursor)
    assert races_named("Account.cursor#"), [d.summary for d in races()]
    account = programs.Account()
    sequenced(lambda: account.open_once(contextlib.nullcontext), account.close)
    assert races_named("Account.conn#"), [d.summary for d in races()]


def test_lazy_initialisation_is_reported(programs):
    account = programs.Account()
    sequenced(account.connection, account.close)
    assert races_named("Account.conn#")


def test_global_counter_is_reported_and_named_like_code(programs):
    twice(programs.count_global)
    [race] = races()
    assert race.attributes["labotel.race.resource"] == f"{PROGRAMS}.hits"
    assert race.attributes["labotel.race.source"] == "hits += 1"


def test_module_attribute_from_outside_is_the_global(programs):
    run_all(programs.count_global, lambda: programs.bump_module_counter(programs))
    assert [d.attributes["labotel.race.resource"] for d in races()] == [f"{PROGRAMS}.hits"]


def test_global_counter_behind_a_lock_is_silent(programs):
    twice(programs.count_global_locked, threading.Lock())
    assert_silent()


def test_plain_write_unordered_with_a_read_modify_write_is_reported(programs):
    account = programs.Account()
    run_all(lambda: account.deposit(1), lambda: account.set_balance(0))
    assert races_named("Account.balance#")


def test_slotted_and_private_attributes(programs):
    slotted, private = programs.Slotted(), programs.Private()
    twice(slotted.bump)
    twice(private.bump)
    assert private.count() == 2  # name mangling kept: self.__count is _Private__count
    assert races_named("Slotted.n#")
    assert races_named("Private._Private__count#")


# --- idioms that must not be flagged ------------------------------------------------------

def test_stop_flag_and_plain_reads_and_writes_are_atomic(programs):
    account = programs.Account()
    run_all(lambda: account.set_balance(1), lambda: account.set_balance(2),
            account.read_balance, programs.set_stop, lambda: programs.poll_stop(100))
    assert_silent()


def test_workers_appending_results_and_setdefault_are_silent(programs):
    results, groups, table = [], {}, {}
    run_all(*[lambda i=i: programs.append_result(results, i) for i in range(4)],
            *[lambda: programs.setdefault_item(groups, "k") for _ in range(3)],
            *[lambda i=i: programs.store_item(table, "k", i) for i in range(3)])
    assert sorted(results) == [0, 1, 2, 3]
    assert_silent()


def test_threading_local_is_never_shared(programs):
    local = threading.local()
    twice(programs.bump_local, local)
    assert_silent()


def test_reads_in_other_threads_are_not_races(programs):
    account = programs.Account()
    account.deposit(1)
    run_all(account.read_balance, account.read_balance, programs.read_global)
    assert_silent()


def test_address_reuse_is_never_a_race(programs):
    """An object that dies and a new one at the same address are different locations.

    Two unordered threads take turns (handshakes through plain lists, which labotel cannot
    see): the first makes an Account, updates it and drops it; the second then makes one,
    usually at the freed address, and updates it too."""
    freed: list = []
    taken: list = []
    reused: list = []

    def spin(box: list, n: int) -> None:
        while len(box) < n:
            pass

    def first():
        for round_ in range(1, 101):
            account = programs.Account()
            account.deposit(1)
            address = id(account)
            del account
            freed.append(address)
            spin(taken, round_)
            if reused:
                return

    def second():
        for round_ in range(1, 101):
            spin(freed, round_)
            account = programs.Account()
            account.deposit(1)
            if id(account) == freed[-1]:
                reused.append(account)
            taken.append(round_)
            if reused:
                return

    run_all(first, second)
    assert reused, "the test needs CPython to reuse the address"
    assert_silent()


def test_dicts_without_weakrefs_are_not_confused_across_reuse(programs):
    done: list = []

    def worker():
        for _ in range(300):
            programs.increment_item({}, "k")  # each dict dies right away
        done.append(1)

    run_all(worker, worker)
    assert len(done) == 2
    assert_silent()


# --- every hooked primitive orders the accesses --------------------------------------------

def _handoff(release, acquire):
    """Thread A does a read-modify-write and releases; B acquires and does one too."""
    from tests.race_programs import programs as module

    account = module.Account()
    ready: list = []

    def a():
        account.deposit(1)
        release()
        ready.append(1)

    def b():
        acquire()
        account.deposit(1)

    threads = [spawn(a), spawn(b)]
    for thread in threads:
        thread.join()
    return account


def _lock_pair(kind):
    """A takes and releases the lock after its update; B waits (plain list) until A is
    through, then takes the lock: the release -> acquire edge orders them."""
    lock, through = kind(), []

    def release():
        with lock:
            through.append(1)

    def acquire():
        wait_until(through)
        with lock:
            pass

    return release, acquire


def _event_pair():
    event = threading.Event()
    return event.set, event.wait


def _queue_pair(kind):
    channel = kind()
    return lambda: channel.put(1), channel.get


def _condition_pair():
    cond, box = threading.Condition(), []

    def release():
        with cond:
            box.append(1)
            cond.notify_all()

    def acquire():
        with cond:
            cond.wait_for(lambda: box)

    return release, acquire


def _semaphore_pair():
    sem = threading.Semaphore(0)
    return sem.release, sem.acquire


def _barrier_pair():
    barrier = threading.Barrier(2)
    return barrier.wait, barrier.wait


PAIRS = {
    "lock": lambda: _lock_pair(threading.Lock), "rlock": lambda: _lock_pair(threading.RLock),
    "event": _event_pair, "queue": lambda: _queue_pair(queue.Queue),
    "simplequeue": lambda: _queue_pair(queue.SimpleQueue), "condition": _condition_pair,
    "semaphore": _semaphore_pair,
}


@pytest.mark.parametrize("primitive", sorted(PAIRS))
def test_each_hooked_primitive_orders_a_handoff(programs, primitive):
    release, acquire = PAIRS[primitive]()
    account = _handoff(release, acquire)
    assert account.balance == 2
    assert_silent()


def test_barrier_orders_what_comes_before_it(programs):
    account, barrier = programs.Account(), threading.Barrier(2)

    def worker(first):
        if first:
            account.deposit(1)
        barrier.wait()
        if not first:
            account.deposit(1)

    run_all(lambda: worker(True), lambda: worker(False))
    assert_silent()


def test_thread_start_join_and_executor_order_accesses(programs):
    account = programs.Account()
    account.deposit(1)
    thread = spawn(account.deposit, 1)
    thread.join()
    account.deposit(1)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        pool.submit(account.deposit, 1).result()
        account.deposit(1)
    assert account.balance == 5
    assert_silent()


def test_asyncio_call_soon_threadsafe_orders_accesses(programs):
    account = programs.Account()

    async def main():
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, account.deposit, 1)
        account.deposit(1)

    asyncio.run(main())
    assert_silent()


def test_the_unordered_handoff_is_reported(programs):
    account = _handoff(lambda: None, lambda: None)
    assert account.balance == 2
    assert races_named("Account.balance#")


# --- suppressions ----------------------------------------------------------------------------

def test_ignore_comment_suppresses_and_counts(programs):
    account = programs.Account()
    twice(account.ignored_deposit, 1)
    assert_silent()
    assert labotel_stats()["races_suppressed"] >= 1


def labotel_stats() -> dict:
    from labotel.monitor import current

    component = next(c for c in current().components if c.name == "detect.races")
    return component.detector.stats()


@pytest.mark.parametrize("pattern", ["Account.deposit", "Account.balance#*",
                                     "race_programs/programs.py:*", "*.deposit"])
def test_race_suppressions_patterns(pattern):
    for module in [m for m in sys.modules if m.startswith(PROGRAMS)]:
        del sys.modules[module]
    start_detector(race_instrument=PROGRAMS, race_suppressions=f"nothing*, {pattern}")
    try:
        module = fresh(PROGRAMS)
        account = module.Account()
        twice(account.deposit, 1)
        assert_silent()
        assert labotel_stats()["races_suppressed"] == 1
    finally:
        labotel.shutdown()


# --- the hook ---------------------------------------------------------------------------------

def test_tracebacks_keep_line_numbers_and_file_attributes(programs):
    with pytest.raises(KeyError) as raised:
        programs.fail_lookup({})
    frames = [f for f in traceback.extract_tb(raised.tb) if f.filename == programs.__file__]
    source = open(programs.__file__).read().splitlines()
    assert frames and source[frames[-1].lineno - 1].strip() == 'return d["missing"]'
    with pytest.raises(AttributeError):
        programs.fail_attribute(object())
    assert programs.__spec__.origin == programs.__file__
    assert "opt-labotelrace" in programs.__cached__
    assert isinstance(programs.__loader__, import_hook.InstrumentingLoader)


def test_non_matching_modules_are_untouched_and_hook_claims_nothing_after_shutdown(programs):
    plain = fresh("tests.race_programs.plain_module")
    assert type(plain.__loader__) is importlib.machinery.SourceFileLoader
    assert "_labotel_ga" not in vars(plain)
    assert import_hook.claiming() == (PROGRAMS,)
    labotel.shutdown()
    assert import_hook.claiming() == ()
    again = fresh(PROGRAMS)  # imported after shutdown: compiled as usual
    assert type(again.__loader__) is importlib.machinery.SourceFileLoader
    # left on sys.meta_path (see runtime.loop_classes), once, however often labotel starts
    assert [type(f) for f in sys.meta_path].count(import_hook.InstrumentingFinder) == 1
    assert race_runtime._detector is None
    account = programs.Account()  # instrumented code left behind still works
    account.deposit(2)
    assert account.balance == 2


def test_cached_bytecode_is_reused_and_separate(programs):
    path = programs.__cached__
    again = fresh(PROGRAMS)
    assert again.__cached__ == path
    account = again.Account()
    twice(account.deposit, 1)
    assert races_named("Account.balance#")


def test_already_imported_module_gets_one_warning(caplog):
    importlib.import_module("tests.race_programs.plain_module")
    caplog.set_level(logging.WARNING, logger="labotel")
    import_hook._warned.discard("tests.race_programs.plain_module")
    for _ in range(2):
        start_detector(race_instrument="tests.race_programs.plain_module")
        labotel.shutdown()
    warnings = [r for r in caplog.records if "plain_module" in r.getMessage()]
    assert len(warnings) == 1
    assert "labotel.start()" in warnings[0].getMessage()


def test_bad_prefix_is_a_clear_error():
    with pytest.raises(ValueError, match="race_instrument"):
        labotel.start(race_detection=True, race_instrument="my app", admin_address="")
    labotel.shutdown()


def test_races_endpoint_lists_instrumented_modules(programs):
    from labotel.monitor import current

    component = next(c for c in current().components if c.name == "detect.races")
    assert PROGRAMS in component.finder.instrumented


# --- a real third-party library instrumented by name ------------------------------------------

@pytest.fixture
def cachetools_module():
    for module in [m for m in sys.modules if m == "cachetools" or m.startswith("cachetools.")]:
        del sys.modules[module]
    start_detector(race_instrument="cachetools")
    module = importlib.import_module("cachetools")
    yield module
    labotel.shutdown()
    for name in [m for m in sys.modules if m == "cachetools" or m.startswith("cachetools.")]:
        del sys.modules[name]


def _fill(cache_set, start):
    for i in range(start, start + 50):
        cache_set(i)


def test_cachetools_lru_cache_without_a_lock_is_reported_inside_the_library(
        cachetools_module):
    cache = cachetools_module.LRUCache(maxsize=16)

    def store(i):
        cache[i] = i

    run_all(lambda: _fill(store, 0), lambda: _fill(store, 100))
    found = races()
    assert found
    assert all("cachetools" in d.attributes["code.filepath"] for d in found)
    assert any("currsize" in d.attributes["labotel.race.resource"] for d in found)


def test_cachetools_cached_with_a_lock_is_silent(cachetools_module):
    cache = cachetools_module.LRUCache(maxsize=16)
    square = cachetools_module.cached(cache, lock=threading.Lock())(lambda i: i * i)
    run_all(lambda: _fill(square, 0), lambda: _fill(square, 5))
    assert square(3) == 9
    assert_silent()


# --- hostile objects (issue 11's rules hold in instrumented code) ------------------------------

HOSTILE = "tests.race_programs.hostile"


@pytest.fixture
def hostile():
    for module in [m for m in sys.modules if m.startswith(HOSTILE)]:
        del sys.modules[module]
    start_detector(race_instrument=HOSTILE)
    yield fresh(HOSTILE)
    labotel.shutdown()


def test_hostile_objects_never_deadlock_or_raise_into_the_app(hostile):
    from tests.chaos.support import call_with_deadline

    errors: list = []
    rounds: list = []  # list.append is atomic: every round the two threads ran, counted
    objects = [hostile.Hostile(), hostile.NoWeakref(), hostile.Lock()]
    table: dict = {}
    buffer = bytearray(4)

    def work():
        try:
            for _ in range(50):
                for obj in objects:
                    if isinstance(obj, hostile.NoWeakref):
                        hostile.bump_slots(obj)
                    elif not isinstance(obj, hostile.Lock):
                        hostile.bump_attr(obj)
                    hostile.missing_attr(obj)
                    hostile.bump_item(table, obj)
                    hostile.contains_then_store(table, obj)
                hostile.bump_bytes(buffer)
                rounds.append(None)
        except BaseException as error:  # noqa: BLE001 - the app must see none
            errors.append(error)

    call_with_deadline(lambda: run_all(work, work), 30)
    assert not errors, errors
    assert len(rounds) == 100
    # the increments race for real (two threads, no lock), so they can lose updates: 89 of
    # 100 for the bytearray in one CI run on a loaded machine
    assert 0 < objects[0].n <= 100 and 0 < objects[1].n <= 100
    assert 0 < buffer[0] <= 100
    names = {d.attributes["labotel.race.resource"].split("#")[0] for d in races()}
    # found on every kind of object, named without calling the hostile hooks
    assert {"Hostile.n", "NoWeakref.n", "buffer[0]"} <= names, names
    assert "d[<Hostile>]" in names or "d[<Lock>]" in names, names
    assert labotel_stats()["instrumented_locations"] > 0


# --- the rewrite keeps Python's behaviour ------------------------------------------------------

def _stdlib_work(difflib, fractions, statistics, json) -> list:
    return [difflib.SequenceMatcher(None, "abcdefgh" * 20, "abxdefzh" * 20).ratio(),
            list(difflib.unified_diff(["a\n", "b\n", "c\n"], ["a\n", "c\n", "d\n"])),
            str(sum(fractions.Fraction(1, n) for n in range(1, 30))),
            statistics.median([5, 3, 9, 1]), statistics.pstdev([1.5, 2.5, 2.75, 4.75]),
            json.dumps(json.loads('{"a": [1, 2.5, "x", null, true], "b": {"c": "\\u00e9"}}'),
                       indent=1, sort_keys=True)]


def test_instrumented_stdlib_modules_compute_the_same_results():
    """Real code with classes, private names, generators, comprehensions, closures and
    match-free control flow: instrumented, it must behave exactly as compiled normally."""
    import difflib
    import fractions
    import json
    import statistics

    names = ("difflib", "fractions", "statistics", "json")
    expected = _stdlib_work(difflib, fractions, statistics, json)
    saved = {name: module for name, module in sys.modules.items()
             if name.split(".")[0] in names}
    try:
        for name in saved:
            del sys.modules[name]
        start_detector(race_instrument=",".join(names))
        modules = [importlib.import_module(name) for name in names]
        assert all(isinstance(m.__loader__, import_hook.InstrumentingLoader) for m in modules)
        assert _stdlib_work(*modules) == expected
        assert not races()
    finally:
        labotel.shutdown()
        for name in [n for n in sys.modules if n.split(".")[0] in names]:
            del sys.modules[name]
        sys.modules.update(saved)


def test_env_vars_turn_instrumentation_on(monkeypatch):
    monkeypatch.setenv("LABOTEL_RACE_DETECTION", "1")
    monkeypatch.setenv("LABOTEL_RACE_INSTRUMENT", f" {PROGRAMS} , cachetools")
    monkeypatch.setenv("LABOTEL_RACE_SUPPRESSIONS", "*.deposit")
    for module in [m for m in sys.modules if m.startswith(PROGRAMS)]:
        del sys.modules[module]
    labotel.shutdown()
    labotel.start(admin_address="", runtime_metrics=False, leak_detection=False)
    try:
        module = fresh(PROGRAMS)
        assert isinstance(module.__loader__, import_hook.InstrumentingLoader)
        account = module.Account()
        twice(account.deposit, 1)
        assert_silent()
        assert labotel_stats()["races_suppressed"] == 1
    finally:
        labotel.shutdown()


def test_instrument_without_detection_warns_and_installs_nothing(caplog):
    caplog.set_level(logging.WARNING, logger="labotel")
    labotel.shutdown()
    labotel.start(race_instrument=PROGRAMS, admin_address="", runtime_metrics=False,
                  leak_detection=False)
    try:
        assert import_hook.claiming() == ()
        assert any("race_detection is off" in r.getMessage() for r in caplog.records)
    finally:
        labotel.shutdown()


# --- which calls are recorded: every call of a cold function, a share of a hot one's ---

def test_schedule_records_cold_calls_then_a_shrinking_share():
    schedule = race_runtime._schedule(0.01)
    cold = [schedule() for _ in range(race_runtime.COLD_CALLS)]
    tenth = [schedule() for _ in range(race_runtime.STAGE_CALLS)]
    floor = [schedule() for _ in range(50_000)]
    assert all(cold)
    assert sum(tenth) == race_runtime.STAGE_CALLS // 10
    assert sum(floor) == 500
    every = race_runtime._schedule(1.0)
    assert all(every() for _ in range(20_000))


def hammer(target, calls: int, *args) -> None:
    """Two unsynchronized threads each call ``target(*args)`` ``calls`` times."""
    def loop():
        for _ in range(calls):
            target(*args)
    run_all(loop, loop)


def test_a_hot_racy_function_is_still_reported(programs):
    """Past its cold calls only 1 call in 100 is recorded: the race is found all the
    same (both threads' recorded calls stay unordered: nothing orders them)."""
    account = programs.Account()
    heat = race_runtime.COLD_CALLS + race_runtime.STAGE_CALLS
    for _ in range(heat):  # one thread alone: no race yet, and deposit() is hot now
        account.deposit(1)
    assert_silent()
    assert account.balance == heat
    amount = CountedAmount()
    hammer(account.deposit, 20_000, amount)
    [race] = races_named("Account.balance#")
    assert race.attributes["labotel.race.source"] == "self.balance += amount"
    # Every call ran, recorded or not. The balance itself may come out short: the race
    # is real and loses updates, so the body's runs are counted by the amount.
    assert amount.added == 40_000


class CountedAmount:
    """Adds 1 to an int, and counts how many times it was added (list.append is atomic)."""

    def __init__(self):
        self.calls: list[None] = []

    @property
    def added(self) -> int:
        return len(self.calls)

    def __radd__(self, other: int) -> int:
        self.calls.append(None)
        return other + 1


def test_a_hot_function_behind_a_lock_stays_silent(programs):
    """Calls not recorded never invent a race: lock operations are always seen."""
    account, lock = programs.Account(), threading.Lock()
    hammer(account.deposit_locked, 30_000, lock, 1)
    assert account.balance == 60_000
    assert_silent()


def test_every_call_is_recorded_with_a_floor_of_one():
    start_detector(race_instrument=PROGRAMS, race_sample_floor=1.0)
    try:
        programs = fresh(PROGRAMS)
        schedule = programs._labotel_s[0]
        programs.Account()  # the first call gives the function its schedule
        assert all(programs._labotel_s[0]() for _ in range(50_000))
        assert schedule is not programs._labotel_s[0]
    finally:
        labotel.shutdown()


def test_shutdown_turns_every_function_to_its_code_as_written_and_start_turns_it_back(
        programs):
    account = programs.Account()
    labotel.shutdown()
    table = programs._labotel_s
    assert table and all(entry is race_runtime._never for entry in table)
    account.deposit(1)  # runs the copy as written
    with pytest.raises(KeyError) as raised:  # whose line numbers are the source's
        programs.fail_lookup({})
    [frame] = [f for f in traceback.extract_tb(raised.tb) if f.filename == programs.__file__]
    assert frame.line == 'return d["missing"]'
    start_detector(race_instrument=PROGRAMS)  # the module is instrumented: recorded again
    twice(account.deposit, 1)
    assert races_named("Account.balance#")
    labotel.shutdown()
    start_detector(race_instrument="tests.race_programs.plain_module")  # not named now
    assert all(entry is race_runtime._never for entry in programs._labotel_s)


def test_rewrite_keeps_docstrings_declarations_and_nesting():
    from labotel.detect.rewrite import MAX_COPIED_DEPTH, rewrite

    source = '''
"""module doc"""
from __future__ import annotations
total = 0
def bump(box):
    """bump doc"""
    global total
    box.n += 1
    total += 1
    def inner():
        nonlocal box
        box = box
        return box.n
    return inner
def pure(a, b):
    return a + b
def deep(o):
    o.a
    def d2():
        o.a
        def d3():
            o.a
            def d4():
                return o.x
            return d4
        return d3
    return d2
key = lambda item: item.k
'''
    tree = rewrite(source, "<m>", "m")
    compiled = compile(tree, "<m>", "exec")
    namespace = dict(race_runtime.FUNCTIONS, __name__="m")
    exec(compiled, namespace)
    text = __import__("ast").unparse(tree)
    assert namespace["bump"].__doc__ == "bump doc"
    assert namespace["__doc__"] == "module doc"

    class Box:
        n = 0

    box = Box()
    assert namespace["bump"](box)() == 1 and namespace["total"] == 1
    assert "def pure(a, b):\n    return a + b" in text  # nothing to record: one copy
    assert namespace["key"](type("K", (), {"k": 3})) == 3
    # copies double at each level down to MAX_COPIED_DEPTH; d4, one deeper, has no copy
    assert text.count("def d4") == 2 ** MAX_COPIED_DEPTH
    assert text.count("return _labotel_ga(o, 'x'") == 2 ** MAX_COPIED_DEPTH
    assert len(namespace["_labotel_s"]) == text.count("_labotel_s[")


def test_sample_floor_out_of_range_is_a_clear_error():
    for bad in (0, 1.5, -1):
        with pytest.raises(ValueError, match="race_sample_floor"):
            labotel.start(race_detection=True, race_sample_floor=bad, admin_address="")
    labotel.shutdown()


def test_an_annotated_object_used_by_instrumented_code_names_the_application_line(programs):
    """``shared()`` records from inside race_runtime's container-method wrapper: the
    report's location is the application's line, never labotel's (it was race_runtime.py
    in the README's pytest example)."""
    results = labotel.shared([], "results-shared")
    twice(programs.append_result, results, 1)
    [race] = races_named("results-shared")
    assert race.attributes["code.filepath"] == programs.__file__
    assert race.attributes["code.function"] == "append_result"
    assert "race_runtime" not in race.message.split("ACTION REQUIRED")[0]


def test_a_failing_schedule_table_never_fails_the_application_s_import(monkeypatch):
    def broken(module, table):
        raise RuntimeError("labotel's own failure")

    monkeypatch.setattr(race_runtime, "_arm", broken)
    table = race_runtime.schedules("myapp.models", 3)
    assert table == [race_runtime._never] * 3  # the module runs its code as written
