"""labotel's loop hooks on uvloop's loop class, imported before ``start()`` or after it.

uvloop's methods are C, so the hooks on ``asyncio.BaseEventLoop`` never saw its loops:
a thread's ``call_soon_threadsafe`` hand-over was no happens-before edge (a false race),
a loop run by hand was never found, tasks it made had no creation site for the leak
checks, and its futures' awaits were not timed. labotel now wraps the same methods on
``uvloop.Loop`` (a Python subclass of the C class), as soon as uvloop is imported.
"""

from __future__ import annotations

import _thread
import asyncio
import pathlib
import subprocess
import sys
import textwrap
import threading
import time
import types

import pytest
import uvloop

import labotel
from labotel.runtime import loop_classes, loops
from labotel.testing import find_leaks, ignore_current, install, uninstall
from tests.unit import test_contention
from tests.unit.race_support import races_on, start_detector
from tests.unit.test_leaks_memory import source_line
from tests.unit.test_testing_leaks import _all_tasks

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
ROOT = pathlib.Path(__file__).resolve().parents[2]
WRAPPED = ("run_forever", "create_task", "call_soon_threadsafe", "create_future")


@pytest.fixture
def uvloop_policy():
    previous = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    yield
    asyncio.set_event_loop_policy(previous)


def hand_over_from_a_thread(loop_factory) -> None:
    """A thread writes, then hands a callback that writes too to the loop: ordered."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        done = asyncio.Event()

        def on_the_loop() -> None:
            labotel.record_access("handed-over", write=True)
            done.set()

        def in_a_thread() -> None:
            labotel.record_access("handed-over", write=True)
            loop.call_soon_threadsafe(on_the_loop)

        thread = threading.Thread(target=in_a_thread)
        thread.start()
        await done.wait()  # no join before it: only the hand-over orders the two writes
        thread.join()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())


def test_a_call_soon_threadsafe_hand_over_on_uvloop_is_no_race():
    start_detector()
    try:
        hand_over_from_a_thread(uvloop.new_event_loop)
        time.sleep(0.1)
        assert races_on("handed-over") == []
    finally:
        labotel.shutdown()


def test_without_the_hand_over_the_same_writes_are_a_race_on_uvloop():
    """The check above can fail: unordered writes on uvloop are reported."""
    start_detector()
    try:
        async def main() -> None:
            written: list[bool] = []  # polled: no synchronization labotel could see
            held = _thread.allocate_lock()  # raw: the thread outlives the loop's write
            held.acquire()

            def in_a_thread() -> None:
                labotel.record_access("not-handed-over", write=True)
                written.append(True)
                held.acquire()

            thread = threading.Thread(target=in_a_thread)
            thread.start()
            while not written:
                await asyncio.sleep(0.005)
            labotel.record_access("not-handed-over", write=True)
            held.release()
            thread.join()

        uvloop.run(main())
        assert len(races_on("not-handed-over")) == 1
    finally:
        labotel.shutdown()


def run_by_hand_on_a_thread(ready: threading.Event, release: threading.Event) -> None:
    loop = uvloop.new_event_loop()

    async def main() -> None:
        ready.set()
        while not release.is_set():
            await asyncio.sleep(0.01)

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


def test_a_uvloop_loop_run_by_hand_is_found():
    monitor = labotel.start(admin_address="", leak_detection=False, service_name="uv-test")
    ready, release = threading.Event(), threading.Event()
    thread = threading.Thread(target=run_by_hand_on_a_thread, args=(ready, release))
    thread.start()
    try:
        assert ready.wait(5)
        deadline = time.monotonic() + 5
        while not any(isinstance(loop, uvloop.Loop) for loop in loops.running_loops()):
            assert time.monotonic() < deadline, "the loop run by hand was not found"
            time.sleep(0.01)
        assert monitor.running
    finally:
        release.set()
        thread.join(5)
        labotel.shutdown()


def test_a_task_left_on_a_uvloop_loop_has_its_creation_line():
    install()
    loop = uvloop.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="leaky-uvloop", daemon=True)
    thread.start()
    before = ignore_current()
    try:
        held = []  # asyncio keeps tasks weakly: a collection would free this one

        async def spawn() -> None:
            running = asyncio.get_running_loop()
            held.append(running.create_task(asyncio.Event().wait()))  # LEFT ON UVLOOP

        asyncio.run_coroutine_threadsafe(spawn(), loop).result(5)
        groups = find_leaks(before, grace=0.2)
        assert [(g.kind, g.site) for g in groups] == [
            ("task", source_line("# LEFT ON UVLOOP", __file__))]
    finally:
        for task in asyncio.run_coroutine_threadsafe(_all_tasks(), loop).result(5):
            loop.call_soon_threadsafe(task.cancel)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
        uninstall()


@pytest.mark.parametrize(("program", "site"), [
    (test_contention.wait_on_asyncio_future, "asyncio.Future.__await__"),
    (test_contention.wait_on_executor_from_a_task, "asyncio.Future.__await__"),
    (test_contention.wait_on_asyncio_event, "asyncio.Event.wait"),
    (test_contention.wait_on_asyncio_lock, "asyncio.Lock.acquire"),
], ids=lambda value: getattr(value, "__name__", None))
def test_a_task_waiting_on_uvloop_is_in_the_block_profile(uvloop_policy, program, site):
    seen = []

    async def loop_type() -> None:
        seen.append(type(asyncio.get_running_loop()))

    asyncio.run(loop_type())
    assert seen == [uvloop.Loop]
    profiler = test_contention.start().component("profile.contention")
    try:
        program()
        assert any(s[0][0] == site and s[2] >= 0.03e9
                   for s in test_contention.samples(profiler, "block")), (
            test_contention.samples(profiler, "block"))
    finally:
        labotel.shutdown()


def test_shutdown_takes_every_wrapper_off_uvloops_class():
    start_detector(contention_profiling=True)
    install()
    wrapped = [name for name in WRAPPED if name in vars(uvloop.Loop)]
    uninstall()
    labotel.shutdown()
    assert wrapped == list(WRAPPED)
    assert [name for name in WRAPPED if name in vars(uvloop.Loop)] == []


IMPORTED_AFTER_START = textwrap.dedent("""
    import asyncio, sys, threading, time
    import labotel, labotel.testing
    from labotel.runtime import loop_classes, loops
    options = dict(race_detection=True, contention_profiling=True, admin_address="",
                   leak_detection=False, service_name="uv-late")
    labotel.start(**options)
    assert sys.meta_path[0] is loop_classes._FINDER
    labotel.shutdown()
    # left in place (taking it out could make another thread's import skip a finder),
    # answering nothing
    assert loop_classes._FINDER.find_spec("uvloop", None) is None, "active after shutdown"
    labotel.start(**options)
    labotel.testing.install()  # the leak checks' hook: create_task
    assert "uvloop" not in sys.modules
    assert sys.meta_path.count(loop_classes._FINDER) == 1, "put in again"
    import uvloop
    assert uvloop.__spec__.loader is uvloop.__loader__
    assert type(uvloop.__loader__).__name__ != "_ThenHook", "the module names our loader"
    from tests.unit.test_uvloop_hooks import WRAPPED, hand_over_from_a_thread
    print("wrapped", sorted(n for n in WRAPPED if n in vars(uvloop.Loop)))
    hand_over_from_a_thread(uvloop.new_event_loop)
    found = []
    async def main():
        await asyncio.sleep(0)
        found.append(asyncio.get_running_loop() in loops.running_loops())
    loop = uvloop.new_event_loop()
    loop.run_until_complete(main())
    loop.close()
    time.sleep(0.1)
    print("races", len(labotel.detections("race_condition")), "found", found)
    labotel.testing.uninstall()
    labotel.shutdown()
    print("left", sorted(n for n in WRAPPED if n in vars(uvloop.Loop)))
""")


def test_uvloop_imported_after_start_gets_the_same_hooks():
    result = subprocess.run([sys.executable, "-c", IMPORTED_AFTER_START], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"wrapped {sorted(WRAPPED)}", "races 0 found [True]", "left []"]


def a_loop_class() -> type:
    """A fresh class standing in for uvloop's (a subclass of it: its C methods inherited)."""
    return type("Loop", (uvloop.Loop,), {})


def test_a_loop_class_handed_over_after_shutdown_is_left_alone():
    """The import's thread takes the listeners, then a shutdown on another thread undoes
    the hooks, then the import hands its class on: nothing may be wrapped for good."""
    start_detector(contention_profiling=True)
    install()
    late = list(loop_classes._listeners)
    uninstall()
    labotel.shutdown()
    loop_class = a_loop_class()
    assert len(late) == 3  # the loop registry, the creation hooks, the primitive hooks
    for listener in late:
        listener(loop_class)
    assert [name for name in WRAPPED if name in vars(loop_class)] == []


def test_a_loop_class_handed_over_while_running_is_wrapped_and_unwrapped():
    start_detector(contention_profiling=True)
    install()
    loop_class = a_loop_class()
    try:
        loop_classes._imported(types.SimpleNamespace(Loop=loop_class))  # type: ignore[arg-type]
        assert sorted(name for name in WRAPPED if name in vars(loop_class)) == sorted(WRAPPED)
    finally:
        uninstall()
        labotel.shutdown()
    assert [name for name in WRAPPED if name in vars(loop_class)] == []


HOSTILE_LOOP_CLASS = textwrap.dedent('''
    import asyncio, logging, sys, types
    import labotel
    logging.basicConfig(level=logging.ERROR, stream=sys.stdout, format="%(message)s")
    class Refusing(type):
        def __setattr__(cls, name, value):
            raise RuntimeError("this class takes no new attributes")
    class Loop(asyncio.AbstractEventLoop, metaclass=Refusing):
        pass
    labotel.start(race_detection=True, admin_address="", leak_detection=False,
                  service_name="uv-hostile")
    from labotel.runtime import loop_classes
    loop_classes._imported(types.SimpleNamespace(Loop=Loop))
    print("import went on")
    from labotel import log_relay
    log_relay.flush(5)
    labotel.shutdown()
''')


def test_a_loop_class_that_refuses_the_wrapper_does_not_fail_the_import():
    result = subprocess.run([sys.executable, "-c", HOSTILE_LOOP_CLASS], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "import went on"
    assert "labotel: hooking uvloop.Loop failed" in lines[1:]


IMPORTING_WHILE_STARTING = textwrap.dedent("""
    import importlib.abc, importlib.machinery, sys, threading, time
    import labotel

    class Slow(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        '''uvloop's own spec and loader, its module run half a second late.'''
        def find_spec(self, name, path, target=None):
            if name != "uvloop":
                return None
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            self.real = spec.loader
            spec.loader = self
            return spec
        def create_module(self, spec):
            return self.real.create_module(spec)
        def exec_module(self, module):
            time.sleep(0.5)
            self.real.exec_module(module)

    sys.meta_path.insert(0, Slow())
    importing = threading.Thread(target=__import__, args=("uvloop",))
    importing.start()
    while "uvloop" not in sys.modules:
        time.sleep(0.01)
    labotel.start(race_detection=True, contention_profiling=True, admin_address="",
                  leak_detection=False, service_name="uv-during")
    importing.join()
    import uvloop
    from tests.unit.test_uvloop_hooks import WRAPPED
    deadline = time.monotonic() + 5
    while sorted(n for n in WRAPPED if n in vars(uvloop.Loop)) != sorted(
            ["run_forever", "call_soon_threadsafe", "create_future"]):
        assert time.monotonic() < deadline, sorted(vars(uvloop.Loop))
        time.sleep(0.05)
    print("hooked")
    labotel.shutdown()
""")


def test_uvloop_imported_on_another_thread_while_start_runs_gets_the_hooks():
    """uvloop's import was under way (found before labotel's import watch went in) when
    start() ran: its class was never hooked, and every hand-over on its loops was a
    false race. The import is now waited for."""
    result = subprocess.run([sys.executable, "-c", IMPORTING_WHILE_STARTING], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["hooked"]


SPEC_BEFORE_THE_IMPORT = textwrap.dedent("""
    import importlib.util, pkgutil, sys
    import labotel
    labotel.start(admin_address="", leak_detection=False, service_name="uv-spec")
    spec = importlib.util.find_spec("uvloop")  # uvloop not imported yet
    print(spec.loader.get_filename("uvloop").endswith("__init__.py"),
          spec.loader.is_package("uvloop"),
          pkgutil.get_data("uvloop", "__init__.py") is not None)
    labotel.shutdown()
""")


def test_the_spec_found_for_uvloop_before_its_import_has_its_loaders_whole_interface():
    """While labotel waits for uvloop's import, the spec the import system finds for it
    carries labotel's loader: it lacked get_filename, is_package, get_resource_reader...,
    so pkgutil.get_data and importlib.resources failed on uvloop while labotel ran."""
    result = subprocess.run([sys.executable, "-c", SPEC_BEFORE_THE_IMPORT], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True", "True"]


def test_a_loop_class_handed_over_twice_is_wrapped_once():
    """The import's thread took the listeners; a shutdown and start() on another thread
    wrapped the class meanwhile; the import then handed it over too. Wrapped twice,
    create_future saw labotel's own wrapper as its caller and timed every future asyncio
    makes for itself (a sleep's, a lock's)."""
    start_detector(contention_profiling=True)
    loop_class = a_loop_class()
    try:
        for _ in range(2):
            loop_classes._imported(types.SimpleNamespace(Loop=loop_class))  # type: ignore[arg-type]
        loop = loop_class()
        future = loop.run_until_complete(_made_by_asyncio())
        loop.close()
    finally:
        labotel.shutdown()
    assert type(future) is asyncio.Future
    assert [name for name in WRAPPED if name in vars(loop_class)] == []


async def _made_by_asyncio() -> asyncio.Future:
    """The future asyncio.sleep() makes for itself (with the loop's create_future), read
    as its task waits on it."""
    sleeper = asyncio.get_running_loop().create_task(asyncio.sleep(0.05))
    await asyncio.sleep(0)  # the sleeper runs until it waits
    future = sleeper._fut_waiter
    await sleeper
    return future


def test_another_tools_wrapper_around_create_future_does_not_make_asyncios_futures_timed():
    """An APM wrapping create_future after labotel (a wrapper named as the method, as
    functools.wraps users write them): asyncio's own futures (a sleep's) were taken for the
    application's and timed."""
    start_detector(contention_profiling=True)
    labotels = asyncio.BaseEventLoop.create_future

    def create_future(self):
        return labotels(self)

    asyncio.BaseEventLoop.create_future = create_future
    try:
        future = asyncio.run(_made_by_asyncio())
    finally:
        asyncio.BaseEventLoop.create_future = labotels
        labotel.shutdown()
    assert type(future) is asyncio.Future


def test_the_wrapped_loop_methods_keep_their_names_and_signatures():
    start_detector(contention_profiling=True)
    install()
    try:
        for name in WRAPPED:
            wrapper, original = vars(uvloop.Loop)[name], getattr(uvloop.Loop.__mro__[1], name)
            assert (wrapper.__name__, wrapper.__doc__, wrapper.__wrapped__) == (
                original.__name__, original.__doc__, original), name
    finally:
        uninstall()
        labotel.shutdown()


def test_a_loop_in_debug_mode_refuses_a_coroutine_handed_over_at_the_call():
    """asyncio's loop in debug mode refuses a coroutine function given to
    call_soon_threadsafe at the call; race detection's hand-over wrapper hid it from that
    check, and the error came later, on the loop's thread, from inside labotel."""
    async def not_a_callback() -> None:
        pass

    start_detector()
    loop = asyncio.new_event_loop()
    loop.set_debug(True)
    try:
        with pytest.raises(TypeError, match="coroutines cannot be used"):
            loop.call_soon_threadsafe(not_a_callback)
    finally:
        loop.close()
        labotel.shutdown()


CACHING_FINDER = textwrap.dedent("""
    import importlib.machinery, importlib.util, sys
    import labotel

    class Caching:
        '''A finder that keeps the spec it found and hands the same object out again.'''
        spec = None
        def find_spec(self, name, path, target=None):
            if name != "uvloop":
                return None
            if self.spec is None:
                self.spec = importlib.machinery.PathFinder.find_spec(name, path)
            return self.spec

    caching = Caching()
    sys.meta_path.append(caching)
    sys.meta_path.remove(importlib.machinery.PathFinder)  # the caching one finds uvloop
    sys.meta_path.append(importlib.machinery.PathFinder)
    labotel.start(admin_address="", leak_detection=False, service_name="uv-cache")
    for _ in range(3):
        importlib.util.find_spec("uvloop")
    print(type(caching.spec.loader).__name__)
    import uvloop
    print(type(uvloop.__loader__).__name__, "run_forever" in vars(uvloop.Loop))
    labotel.shutdown()
""")


def test_a_finder_that_keeps_its_specs_gets_them_back_untouched():
    """labotel's import watch set its loader on the spec another finder returned: a
    finder that keeps its specs then handed out labotel's loader, one inside another for
    each lookup."""
    result = subprocess.run([sys.executable, "-c", CACHING_FINDER], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["SourceFileLoader", "SourceFileLoader", "True"]


FINDER_IN_FRONT = textwrap.dedent("""
    import asyncio, importlib.machinery, sys
    import labotel

    class InFront:
        '''A finder put in front of labotel's after start() that answers for uvloop.'''
        def find_spec(self, name, path, target=None):
            if name == "uvloop":
                return importlib.machinery.PathFinder.find_spec(name, path)
            return None

    labotel.start(race_detection=True, contention_profiling=True, admin_address="",
                  leak_detection=False, service_name="uv-front")
    sys.meta_path.insert(0, InFront())
    import uvloop
    from tests.unit.test_uvloop_hooks import WRAPPED
    print("imported", sorted(n for n in WRAPPED if n in vars(uvloop.Loop)))
    async def main():
        return sorted(n for n in WRAPPED if n in vars(uvloop.Loop))
    print("running", uvloop.run(main()))
    labotel.shutdown()
""")


def test_uvloop_imported_past_the_watch_is_hooked_before_its_first_loop_runs():
    """A finder in front of labotel's answered for uvloop, so the import watch never saw
    it: its class stayed unhooked. The Runner (uvloop.run(), asyncio.run()) now hands such
    a class on before the loop runs."""
    result = subprocess.run([sys.executable, "-c", FINDER_IN_FRONT], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    hooked = ["call_soon_threadsafe", "create_future", "run_forever"]
    assert result.stdout.splitlines() == ["imported []", f"running {hooked}"]
