"""The pytest plugin on sample projects, each run in a pytest subprocess (labotel patches
process-wide state; a subprocess keeps this run out of it): the exact set of tests that
fail, and the lines their reports name."""

from __future__ import annotations

import re
import textwrap

import pytest

from labotel.testing.plugin import race_start_options

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

LEAKS_CONFTEST = '''
import asyncio
import threading

import pytest


@pytest.fixture(scope="session")
def session_loop():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="session-loop", daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop).result(5)
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


@pytest.fixture(scope="module")
def module_worker():
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, name="module-worker", daemon=True)
    thread.start()
    yield thread
    stop.set()
    thread.join(5)


@pytest.fixture
def forgetful_worker():
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, daemon=True)
    thread.start()  # FIXTURE LEAK
    yield thread  # forgets stop.set()


@pytest.fixture
def tidy_worker():
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, daemon=True)
    thread.start()
    yield thread
    stop.set()
    thread.join(5)
'''

LEAKS_TESTS = '''
import asyncio
import threading
import time
import unittest

import pytest

FOREVER = threading.Event()


def wait_forever():
    FOREVER.wait()


def ignored_worker():
    FOREVER.wait()


def start_pool():
    for _ in range(2):
        threading.Thread(target=wait_forever, daemon=True).start()


async def forever():
    await asyncio.sleep(3600)


async def add(a, b):
    await asyncio.sleep(0.001)
    return a + b


def test_joins_its_threads():
    threads = [threading.Thread(target=time.sleep, args=(0.01,)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_thread_ends_shortly_after_the_test():
    threading.Thread(target=time.sleep, args=(0.3,)).start()


def test_uses_the_session_loop(session_loop):
    assert asyncio.run_coroutine_threadsafe(add(1, 2), session_loop).result(5) == 3


def test_leaks_a_thread():
    threading.Thread(target=wait_forever, daemon=True).start()  # THREAD LEAK


def test_leaks_a_task_on_its_own_background_loop():
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()  # LOOP THREAD LEAK
    asyncio.run_coroutine_threadsafe(forever(), loop)  # OWN LOOP TASK LEAK
    asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop).result(5)


def test_leaks_a_task_on_the_session_loop(session_loop):
    asyncio.run_coroutine_threadsafe(forever(), session_loop)  # SESSION LOOP TASK LEAK
    asyncio.run_coroutine_threadsafe(asyncio.sleep(0), session_loop).result(5)


def test_uses_the_session_loop_again(session_loop):
    assert asyncio.run_coroutine_threadsafe(add(2, 3), session_loop).result(5) == 5


def test_leaks_through_a_function_fixture(forgetful_worker):
    assert forgetful_worker.is_alive()


def test_tidy_fixture(tidy_worker):
    assert tidy_worker.is_alive()


def test_first_to_use_the_module_worker(module_worker):
    assert module_worker.is_alive()


def test_asyncio_run_cancels_what_is_left():
    async def main():
        asyncio.create_task(forever())
        await asyncio.sleep(0)

    asyncio.run(main())


@pytest.mark.labotel(leaks=False)
def test_marked_leaks_false():
    threading.Thread(target=wait_forever, daemon=True).start()


@pytest.mark.labotel(leaks_ignore=["test_leaks.wait_forever"])
def test_marker_ignores_its_top_function():
    threading.Thread(target=wait_forever, daemon=True).start()


def test_option_ignores_a_top_function():
    threading.Thread(target=ignored_worker, daemon=True).start()


def test_option_ignores_a_creation_function():
    start_pool()


class TestUnittestStyle(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.stop = threading.Event()
        cls.worker = threading.Thread(target=cls.stop.wait, daemon=True)
        cls.worker.start()

    @classmethod
    def tearDownClass(cls):
        cls.stop.set()
        cls.worker.join(5)

    def test_a_clean_unittest(self):
        self.assertTrue(self.worker.is_alive())

    def test_leaks_in_unittest(self):
        threading.Thread(target=wait_forever, daemon=True).start()  # UNITTEST LEAK
'''

RACE_PACKAGE = '''
import threading

import labotel


class Counter:
    def __init__(self):
        self._lock = threading.Lock()  # made when the conftest imports this package
        self.value = 0

    def add(self):
        with self._lock:
            labotel.record_access("mypkg.counter", write=True)
            self.value += 1


COUNTER = Counter()
'''

RACE_CONFTEST = '''
import threading

import pytest

import labotel
import mypkg  # its lock is made here: --race must be on before conftest files load


def _write_session_state():
    labotel.record_access("session-state", write=True)  # SESSION RACE


@pytest.fixture(scope="session")
def racy_session_fixture():
    threads = [threading.Thread(target=_write_session_state) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    yield
'''

RACE_TESTS = '''
import threading

import pytest

import labotel
import mypkg


def run_in_two_threads(function):
    threads = [threading.Thread(target=function) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_racy_counter():
    def work():
        labotel.record_access("counter", write=True)  # RACY WRITE

    run_in_two_threads(work)


def test_racy_shared_dict():
    cache = labotel.shared({}, "cache")

    def work():
        cache["key"] = threading.get_ident()  # RACY SHARED WRITE

    run_in_two_threads(work)


def test_locked_counter():
    run_in_two_threads(mypkg.COUNTER.add)
    assert mypkg.COUNTER.value == 2


def test_joined_handoff():
    worker = threading.Thread(target=lambda: labotel.record_access("handoff", write=True))
    worker.start()
    worker.join()
    labotel.record_access("handoff", write=True)


@pytest.mark.labotel(race=False)
def test_known_race_marked_race_false():
    def work():
        labotel.record_access("known", write=True)

    run_in_two_threads(work)


def test_uses_the_racy_session_fixture(racy_session_fixture):
    pass
'''


def line(path, marker: str) -> str:
    for number, text in enumerate(path.read_text().splitlines(), 1):
        if marker in text:
            return f"{path}:{number}"
    raise AssertionError(f"{marker!r} not in {path}")


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-rfE", "-p", "no:cacheprovider", *args, timeout=300)


def outcomes(result: pytest.RunResult) -> tuple[set[str], set[str]]:
    """(tests FAILED, tests with an ERROR) from the short summary."""
    failed = {ln.split()[1] for ln in result.outlines if ln.startswith("FAILED ")}
    errors = {ln.split()[1] for ln in result.outlines if ln.startswith("ERROR ")}
    return failed, errors


def sections(result: pytest.RunResult) -> dict[str, str]:
    """Each failure's text by test name (``ERROR at teardown of`` stripped)."""
    found: dict[str, list[str]] = {}
    current = None
    for text in result.outlines:
        header = re.fullmatch(r"_{3,} (?:ERROR at \w+ of )?(\S+) _{3,}", text)
        if header:
            current = header.group(1).split(".")[-1]
            found[current] = []
        elif text.startswith("====="):
            current = None
        elif current is not None and not text.startswith("[gw"):  # xdist's worker line
            found[current].append(text)
    return {name: "\n".join(lines) for name, lines in found.items()}


@pytest.fixture
def leaks_project(pytester: pytest.Pytester):
    pytester.makeconftest(LEAKS_CONFTEST)
    pytester.makepyfile(test_leaks=LEAKS_TESTS)
    return pytester


LEAKING = {"test_leaks.py::test_leaks_a_thread",
           "test_leaks.py::test_leaks_a_task_on_its_own_background_loop",
           "test_leaks.py::test_leaks_a_task_on_the_session_loop",
           "test_leaks.py::test_leaks_through_a_function_fixture",
           "test_leaks.py::TestUnittestStyle::test_leaks_in_unittest"}
IGNORES = ("--leaks-ignore=test_leaks.ignored_worker", "--leaks-ignore",
           "test_leaks.start_pool")


def check_leak_reports(result: pytest.RunResult, project: pytest.Pytester) -> None:
    tests, conftest = project.path / "test_leaks.py", project.path / "conftest.py"
    assert outcomes(result) == (set(), LEAKING), result.stdout.str()
    reports = sections(result)
    thread = reports["test_leaks_a_thread"]
    assert thread.startswith("labotel --leaks: threads or tasks the test started are still "
                             "alive 1 s after its teardown")
    assert "1 leaked thread:" in thread
    assert f"1 thread created at {line(tests, '# THREAD LEAK')} (in test_leaks_a_thread)" \
        in thread
    assert f"wait_forever ({tests}:" in thread  # where it sits now
    assert "created by test_leaks.test_leaks_a_thread, top test_leaks.wait_forever" in thread
    own = reports["test_leaks_a_task_on_its_own_background_loop"]
    assert "1 leaked thread and 1 leaked task:" in own
    assert f"1 thread created at {line(tests, '# LOOP THREAD LEAK')}" in own
    assert f"1 task created at {line(tests, '# OWN LOOP TASK LEAK')}" in own
    session = reports["test_leaks_a_task_on_the_session_loop"]
    assert "1 leaked task:" in session and "thread created at" not in session  # owned loop
    assert f"1 task created at {line(tests, '# SESSION LOOP TASK LEAK')}" in session
    fixture = reports["test_leaks_through_a_function_fixture"]
    assert f"1 thread created at {line(conftest, '# FIXTURE LEAK')} (in forgetful_worker)" \
        in fixture
    unittest_report = reports["test_leaks_in_unittest"]
    assert f"1 thread created at {line(tests, '# UNITTEST LEAK')}" in unittest_report
    # one report per leaking test: a leak is not reported again by the tests after it
    assert sum(text.count("leaked thread") for text in reports.values()) == 4


def test_leaks_fail_exactly_the_leaking_tests_naming_the_creation_lines(leaks_project):
    result = run(leaks_project, "--leaks", *IGNORES)
    check_leak_reports(result, leaks_project)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert "labotel: --leaks (grace 1 s, ignoring test_leaks.ignored_worker, " \
           "test_leaks.start_pool)" in result.outlines


def test_leaks_with_xdist_each_worker_checks_its_own_tests(leaks_project):
    result = run(leaks_project, "--leaks", *IGNORES, "-n", "2")
    check_leak_reports(result, leaks_project)


def test_without_the_ignore_options_their_tests_leak_too(leaks_project):
    result = run(leaks_project, "--leaks", "-k", "option_ignores", "--leaks-grace=0.1")
    assert outcomes(result) == (set(), {
        "test_leaks.py::test_option_ignores_a_top_function",
        "test_leaks.py::test_option_ignores_a_creation_function"})
    assert "2 threads created at" in sections(result)["test_option_ignores_a_creation_function"]
    assert "still alive 0.1 s after its teardown" in result.stdout.str()


def test_without_flags_nothing_is_checked_patched_or_imported(pytester: pytest.Pytester):
    pytester.makepyfile(test_untouched='''
        import asyncio
        import sys
        import threading

        import pytest


        @pytest.mark.labotel(leaks=False)
        def test_untouched():
            threading.Thread(target=threading.Event().wait, daemon=True).start()
            assert not hasattr(threading.Thread.start, "__wrapped__")
            assert not hasattr(asyncio.BaseEventLoop.create_task, "__wrapped__")
            loaded = sorted(m for m in sys.modules if m.split(".")[0] in (
                "labotel", "opentelemetry", "psutil", "prometheus_client"))
            assert loaded == ["labotel", "labotel.pytest_plugin"], loaded
    ''')
    result = run(pytester, "--strict-markers")  # the marker is registered all the same
    result.assert_outcomes(passed=1)
    assert "labotel:" not in result.stdout.str()
    disabled = run(pytester, "-p", "no:labotel", "--leaks")
    assert disabled.ret == pytest.ExitCode.USAGE_ERROR
    assert "unrecognized arguments: --leaks" in disabled.stderr.str()


UVLOOP_LEAK = """
import asyncio
import threading

import uvloop  # imported after the plugin's hooks went in: they reach its loop class

held = []  # asyncio keeps tasks weakly: a collection would free the leaked one


def test_leaks_a_task_on_a_uvloop_loop():
    loop = uvloop.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    async def spawn():
        held.append(asyncio.get_running_loop().create_task(asyncio.Event().wait()))  # UV TASK

    asyncio.run_coroutine_threadsafe(spawn(), loop).result(5)
"""


def test_leaks_sees_a_task_on_a_uvloop_loop(pytester: pytest.Pytester):
    """uvloop's create_task is C: until labotel wrapped it on uvloop.Loop, a task left on
    a uvloop loop was no leak (only its loop's thread was)."""
    tests = pytester.makepyfile(test_uv=UVLOOP_LEAK)
    result = run(pytester, "--leaks")
    report = sections(result)["test_leaks_a_task_on_a_uvloop_loop"]
    assert "1 leaked thread and 1 leaked task:" in report, result.stdout.str()
    assert f"1 task created at {line(tests, '# UV TASK')} (in spawn)" in report


@pytest.fixture
def race_project(pytester: pytest.Pytester):
    pytester.mkpydir("mypkg").joinpath("__init__.py").write_text(textwrap.dedent(RACE_PACKAGE))
    pytester.mkdir("tests")
    pytester.path.joinpath("conftest.py").write_text(textwrap.dedent(RACE_CONFTEST))
    pytester.path.joinpath("tests", "test_race.py").write_text(textwrap.dedent(RACE_TESTS))
    return pytester


RACY = {"tests/test_race.py::test_racy_counter", "tests/test_race.py::test_racy_shared_dict"}


def check_race_reports(result: pytest.RunResult, project: pytest.Pytester) -> None:
    tests, conftest = project.path / "tests" / "test_race.py", project.path / "conftest.py"
    assert outcomes(result) == (RACY, set()), result.stdout.str()
    reports = sections(result)
    counter = reports["test_racy_counter"]
    assert counter.startswith("labotel --race: race detected during call of the test "
                              "(1 report)")
    assert "Resource: counter" in counter
    write = line(tests, "# RACY WRITE")
    assert counter.count(f"Location: {write} in test_racy_counter.<locals>.work") == 2
    assert "Current write by thread" in counter and "Previous write by thread" in counter
    assert f"test_racy_counter.<locals>.work ({write})" in counter  # the stacks
    shared = reports["test_racy_shared_dict"]
    assert "Resource: cache" in shared
    assert f"Location: {line(tests, '# RACY SHARED WRITE')}" in shared
    summary = result.stdout.str().split("labotel --race: races outside of any test", 1)
    assert len(summary) == 2, result.stdout.str()
    assert "Resource: session-state" in summary[1]
    assert f"Location: {line(conftest, '# SESSION RACE')}" in summary[1]
    assert "Resource: known" not in result.stdout.str()  # race=False
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_race_fails_exactly_the_racy_tests_and_the_session_for_a_fixture_race(race_project):
    result = run(race_project, "--race")
    check_race_reports(result, race_project)
    assert "labotel: --race on (instrumenting mypkg)" in result.outlines


def test_race_with_xdist_reports_a_worker_s_session_race_in_the_controller(race_project):
    result = run(race_project, "--race", "-n", "2")
    check_race_reports(result, race_project)


def test_a_race_outside_any_test_fails_a_session_whose_tests_all_pass(race_project):
    result = run(race_project, "--race", "-k", "session_fixture or locked")
    result.assert_outcomes(passed=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert "labotel --race: races outside of any test" in result.stdout.str()
    clean = run(race_project, "--race", "-k", "locked or handoff")
    assert clean.ret == pytest.ExitCode.OK
    clean.assert_outcomes(passed=2)


def test_race_and_leaks_together(race_project):
    race_project.path.joinpath("tests", "test_leak.py").write_text(
        "import threading\n\n\ndef test_leak():\n"
        "    threading.Thread(target=threading.Event().wait, daemon=True).start()\n")
    result = run(race_project, "--race", "--leaks", "--leaks-grace=0.2")
    assert outcomes(result) == (RACY, {"tests/test_leak.py::test_leak"})


def test_race_instrument_option_and_ini_override_the_discovery(pytester: pytest.Pytester):
    pytester.mkpydir("found")
    given = run(pytester, "--race", "--race-instrument=alpha,beta.core", "--co")
    assert "instrumenting alpha, beta.core" in given.stdout.str()
    pytester.makeini("[pytest]\nlabotel_race_instrument = gamma delta\n")
    ini = run(pytester, "--race", "--co")
    assert "gamma, delta" in ini.stdout.str()
    bad = run(pytester, "--race", "--race-instrument=not-a-package")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    assert "--race-instrument: 'not-a-package' is not a package name" in bad.stderr.str()


def test_race_start_options_pass_the_packages_to_instrument():
    options = race_start_options(["mypkg", "other"])
    assert options["race_detection"] is True and options["admin_address"] == ""
    assert options["race_instrument"] == "mypkg,other"


def test_race_instrument_finds_an_unannotated_race_in_the_project_package(
        pytester: pytest.Pytester):
    pytester.mkpydir("plainpkg").joinpath("__init__.py").write_text(textwrap.dedent('''
        class Counter:
            value = 0

        COUNTER = Counter()


        def bump():
            COUNTER.value += 1  # UNANNOTATED RACE
    '''))
    pytester.makepyfile(test_plain='''
        import threading

        import plainpkg


        def test_unannotated():
            threads = [threading.Thread(target=plainpkg.bump) for _ in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
    ''')
    result = run(pytester, "--race")
    assert outcomes(result) == ({"test_plain.py::test_unannotated"}, set())
    assert line(pytester.path / "plainpkg" / "__init__.py", "# UNANNOTATED RACE") in \
        result.stdout.str()


def test_a_failure_inside_the_plugin_is_a_warning_not_a_test_failure(pytester):
    pytester.makeconftest('''
        import labotel.testing.leaks


        def broken(*args, **kwargs):
            raise RuntimeError("boom")


        labotel.testing.leaks.find_leaks = broken
    ''')
    pytester.makepyfile(test_fine="def test_fine():\n    pass\n")
    result = run(pytester, "--leaks")
    result.assert_outcomes(passed=1, warnings=1)
    assert result.ret == pytest.ExitCode.OK
    text = result.stdout.str()
    assert "LabotelPluginWarning: labotel: checking the test: RuntimeError: boom" in text
    assert "labotel plugin problems" in text


def test_a_suite_that_stops_labotel_itself_is_told_race_detection_stopped(pytester):
    pytester.makepyfile(test_stops="import labotel\n\n\ndef test_stops_labotel():\n"
                        "    labotel.shutdown()\n\n\ndef test_after():\n    pass\n")
    result = run(pytester, "--race")
    result.assert_outcomes(passed=2, warnings=1)
    assert "race detection: RuntimeError: it was stopped during the session" in \
        result.stdout.str()


def test_a_bad_marker_or_option_says_what_is_wrong(pytester):
    pytester.makepyfile(test_marker='''
        import pytest


        @pytest.mark.labotel(leak=False)
        def test_typo():
            pass
    ''')
    result = run(pytester, "--leaks")
    assert outcomes(result) == (set(), {"test_marker.py::test_typo"})
    assert "@pytest.mark.labotel: takes only keyword arguments leaks, leaks_ignore, " \
           "leaks_grace, race; got leak" in result.stdout.str()
    for option, message in (("--leaks-grace=soon", "--leaks-grace: expected seconds >= 0"),
                            ("--leaks-ignore=nodot", "--leaks-ignore: expected "
                                                     "'module.function'")):
        bad = run(pytester, "--leaks", option)
        assert bad.ret == pytest.ExitCode.USAGE_ERROR
        assert message in bad.stderr.str()


def test_loaded_from_a_conftest_the_plugin_says_race_detection_started_late(pytester):
    pytester.makeconftest('pytest_plugins = ["labotel.pytest_plugin"]\n')
    pytester.makepyfile(test_one="def test_one():\n    pass\n")
    result = run(pytester, "-p", "no:labotel", "--race")
    result.assert_outcomes(passed=1)
    assert "started after the conftest files were imported" in result.stdout.str()
