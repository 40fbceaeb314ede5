"""``pytest --leaks`` and ``pytest --race``: when to call ``labotel.testing`` and the race
detector, and how their findings become test failures. ``labotel.pytest_plugin`` registers
``Checks`` when one of the flags is given.

- Leaks: what lives when a test's setup starts is ignored; what class-, module- or
  session-scoped fixtures create during their setup belongs to them, not to the test.
  After the teardown (the test's function-scoped fixtures included) whatever else still
  runs, after a grace period, fails the test's teardown ("ERROR at teardown").
- Races: races reported during setup or call fail the test (FAILED); during teardown, its
  teardown. Races found outside any test (imports, collection, higher-scoped fixtures'
  setup) are listed in the summary and fail the session (exit status 1).
- The plugin's own failures never fail a test: each becomes a ``LabotelPluginWarning``
  and a line in the summary, and the check it was doing is skipped.
"""

from __future__ import annotations

import dataclasses
import logging
import traceback
import warnings
from collections.abc import Callable
from typing import Any

import pytest

from labotel.pytest_plugin import LabotelPluginWarning
from labotel.testing import leaks, packages
from labotel.testing.functions import check_names
from labotel.testing.races import RaceLedger, SeenRace, describe

BASELINE = pytest.StashKey[leaks.Baseline]()
RACES = pytest.StashKey[list]()
SETTINGS = pytest.StashKey["TestSettings"]()
MARKER_OPTIONS = ("leaks", "leaks_ignore", "leaks_grace", "race")
# labotel.start() options for --race: the detector and nothing else (no debug server, no
# exporters, no sampling threads); LABOTEL_* variables still set the race_* options
RACE_OPTIONS: dict[str, Any] = dict(
    race_detection=True, admin_address="", runtime_metrics=False, leak_detection=False,
    loop_block_detection=False, metrics_exporter="none", traces_exporter="none")


def race_start_options(instrument: list[str]) -> dict[str, Any]:
    """What ``labotel.start()`` gets for ``--race``: the packages whose plain reads and
    writes are checked without annotations go through here, and only here."""
    return {**RACE_OPTIONS, "race_instrument": ",".join(instrument)}


@dataclasses.dataclass(frozen=True)
class TestSettings:
    leaks: bool
    ignore: tuple[str, ...]
    grace: float
    race: bool


def _grace(option: str, value: Any) -> float:
    try:
        grace = float(value)
    except (TypeError, ValueError):
        grace = -1.0
    if not grace >= 0 or grace == float("inf"):
        raise ValueError(f"{option}: expected seconds >= 0, got {value!r}")
    return grace


class Checks:
    def __init__(self, config: pytest.Config, options: Any, early: bool = True):
        self.config = config
        self.early = early
        self.leaks = bool(getattr(options, "labotel_leaks", False))
        self.race = bool(getattr(options, "labotel_race", False))
        try:
            grace = getattr(options, "labotel_leaks_grace", None)
            self.grace = _grace("--leaks-grace", grace) if grace is not None else _grace(
                "labotel_leaks_grace", config.getini("labotel_leaks_grace") or leaks.DEFAULT_GRACE)
            self.ignore = check_names("--leaks-ignore", packages.split_names(
                [*getattr(options, "labotel_leaks_ignore", []),
                 *config.getini("labotel_leaks_ignore")]))
            self.instrument = self._instrument(options) if self.race else []
        except ValueError as error:
            raise pytest.UsageError(str(error)) from None
        self.problems: list[str] = []
        self.session_races: list[str] = []
        self.current: pytest.Item | None = None
        self.race_running = False
        self.ledger = RaceLedger()
        self._log_filter: logging.Filter | None = None
        if self.leaks:
            leaks.install()  # before any project code runs: every thread gets its site
        if self.race:
            self._start_race_detection()

    # -- set-up and tear-down of the session ---------------------------------------
    def _instrument(self, options: Any) -> list[str]:
        given = getattr(options, "labotel_race_instrument", None)
        if given is not None:
            return packages.parse_packages("--race-instrument", [given])
        ini = self.config.getini("labotel_race_instrument")
        if ini is not None:
            return packages.parse_packages("labotel_race_instrument", [ini])
        return packages.discover_packages(self.config.rootpath,
                                          self.config.getini("testpaths"))

    def _start_race_detection(self) -> None:
        import labotel
        from labotel.detect import races

        try:
            labotel.start(**race_start_options(self.instrument))
        except ValueError as error:  # a LABOTEL_* variable that does not parse
            raise pytest.UsageError(f"--race: {error}") from None
        except Exception as error:
            self._problem("starting race detection", error)
            return
        if races.active() is None:
            self._problem("starting race detection", RuntimeError(
                "labotel was already started without race_detection"))
            return
        self.race_running = True
        # each race is in the failing test's report (or the summary): not again in its log
        self._log_filter = _WithoutRaces()
        logging.getLogger("labotel.detect.races").addFilter(self._log_filter)

    def pytest_unconfigure(self) -> None:
        if self.race_running:
            import labotel

            self.race_running = False
            self._guard("stopping race detection", labotel.shutdown)
        if self._log_filter is not None:
            logging.getLogger("labotel.detect.races").removeFilter(self._log_filter)
        if self.leaks:
            leaks.uninstall()

    def pytest_report_header(self) -> list[str]:
        lines = []
        if self.leaks:
            ignoring = f", ignoring {', '.join(self.ignore)}" if self.ignore else ""
            lines.append(f"labotel: --leaks (grace {self.grace:g} s{ignoring})")
        if self.race:
            state = "on" if self.race_running else "FAILED TO START"
            if self.race_running and not self.early:
                state += (", started after the conftest files were imported: locks they made"
                          " are invisible to it (load labotel as a plugin, not from a conftest)")
            scope = f"instrumenting {', '.join(self.instrument) or 'nothing'}"
            lines.append(f"labotel: --race {state} ({scope})")
        return lines

    # -- each test -----------------------------------------------------------------
    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Any:
        problem = None
        try:
            settings = self._settings(item)
        except pytest.UsageError as error:
            problem = error
        else:
            self._guard("preparing the checks", self._before_test, item, settings)
        result = yield
        if problem is not None:  # a bad marker: the test's setup error, raised once the
            raise problem  # setup ran (other plugins' teardown expects what it set up)
        return result

    def _before_test(self, item: pytest.Item, settings: TestSettings) -> None:
        self.current = item
        item.stash[SETTINGS] = settings
        item.stash[RACES] = []
        if self.race_running:
            self._outside_tests(self.ledger.take())
        if self.leaks and settings.leaks:
            item.stash[BASELINE] = leaks.ignore_current()

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(self, fixturedef: Any, request: Any) -> Any:
        if fixturedef.scope == "function" or self.current is None:
            return (yield)
        item = self.current
        before = self._guard("watching a fixture", self._before_fixture, item)
        try:
            return (yield)
        finally:
            if before is not None:
                self._guard("watching a fixture", self._after_fixture, item, before)

    def _before_fixture(self, item: pytest.Item) -> leaks.Baseline | None:
        if self.race_running:
            item.stash[RACES].extend(self.ledger.take())
        return leaks.ignore_current() if BASELINE in item.stash else leaks.Baseline()

    def _after_fixture(self, item: pytest.Item, before: leaks.Baseline) -> None:
        if BASELINE in item.stash:  # what the fixture started is the fixture's
            item.stash[BASELINE].add_new_since(before)
        if self.race_running:  # the fixture's races belong to no test
            self._outside_tests(self.ledger.take())

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo) -> Any:
        report = yield
        if SETTINGS in item.stash:
            self._guard("checking the test", self._judge, item, call.when, report)
        return report

    def _judge(self, item: pytest.Item, when: str, report: pytest.TestReport) -> None:
        settings = item.stash[SETTINGS]
        races = item.stash[RACES]
        if self.race_running:
            races.extend(self.ledger.take())
        if when == "setup":
            return  # setup's races wait for the call (or, if it never runs, the teardown)
        failures = []
        if races and settings.race:
            failures.append((f"labotel --race: race detected during {when} of the test "
                             f"({len(races)} report{'s' if len(races) != 1 else ''})",
                             describe(races)))
        races.clear()
        if when == "teardown":
            self.current = None
            self._check_race_detection_runs()
            baseline = item.stash.get(BASELINE, None)
            if baseline is not None:
                del item.stash[BASELINE]
                groups = leaks.find_leaks(baseline, grace=settings.grace,
                                          ignore=settings.ignore)
                if groups:
                    failures.append((
                        f"labotel --leaks: threads or tasks the test started are still alive "
                        f"{settings.grace:g} s after its teardown", leaks.format_leaks(groups)
                        + "\n\nNot a leak? --leaks-ignore=MODULE.FUNCTION (a group's "
                        "'created by' or 'top' function), or @pytest.mark.labotel(leaks=False)"))
        for title, text in failures:
            _fail(report, title, text)

    def _check_race_detection_runs(self) -> None:
        from labotel.detect import races

        if self.race_running and races.active() is None:
            self.race_running = False
            self._problem("race detection", RuntimeError(
                "it was stopped during the session (labotel.shutdown() in the test suite?); "
                "--race checked nothing after that"))

    # -- the session ---------------------------------------------------------------
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.race_running:
            self._guard("collecting races", lambda: self._outside_tests(self.ledger.take()))
        workeroutput = getattr(self.config, "workeroutput", None)
        if workeroutput is not None:  # a pytest-xdist worker: the controller reports them
            workeroutput["labotel_session_races"] = list(self.session_races)
            workeroutput["labotel_problems"] = list(self.problems)
        if self.session_races and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        output = getattr(node, "workeroutput", None) or {}
        worker = output.get("workerid", getattr(node, "gateway", None) and node.gateway.id)
        for text in output.get("labotel_session_races", ()):
            if text not in self.session_races:
                self.session_races.append(text)
        for text in output.get("labotel_problems", ()):
            self.problems.append(f"[{worker}] {text}")

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.session_races:
            terminalreporter.section("labotel --race: races outside of any test", sep="=",
                                     red=True, bold=True)
            terminalreporter.line("Found while importing, collecting or setting up "
                                  "class/module/session fixtures; the session fails.")
            for text in self.session_races:
                terminalreporter.line("")
                terminalreporter.line(text)
        if self.problems:
            terminalreporter.section("labotel plugin problems", sep="=", yellow=True)
            terminalreporter.line("labotel's pytest plugin failed here; test results stand, "
                                  "but these checks were skipped:")
            for text in self.problems:
                terminalreporter.line(text)

    # -- helpers -------------------------------------------------------------------
    def _settings(self, item: pytest.Item) -> TestSettings:
        marker = item.get_closest_marker("labotel")
        options = dict(marker.kwargs) if marker is not None else {}
        unknown = sorted(set(options) - set(MARKER_OPTIONS))
        if unknown or (marker is not None and marker.args):
            got = ", ".join(unknown) if unknown else repr(marker.args)  # type: ignore[union-attr]
            raise pytest.UsageError(
                f"@pytest.mark.labotel: takes only keyword arguments {', '.join(MARKER_OPTIONS)}"
                f"; got {got}")
        try:
            extra = options.get("leaks_ignore", ())
            ignore = self.ignore + check_names("labotel(leaks_ignore=...)", extra)
            grace = options.get("leaks_grace")
            grace = self.grace if grace is None else _grace("labotel(leaks_grace=...)", grace)
        except ValueError as error:
            raise pytest.UsageError(f"@pytest.mark.labotel: {error}") from None
        return TestSettings(leaks=bool(options.get("leaks", True)), ignore=ignore,
                            grace=grace, race=bool(options.get("race", True)))

    def _outside_tests(self, races: list[SeenRace]) -> None:
        for race in races:
            text = race.describe()
            if text not in self.session_races:
                self.session_races.append(text)

    def _guard(self, what: str, function: Callable[..., Any], *args: Any) -> Any:
        try:
            return function(*args)
        except Exception as error:
            self._problem(what, error)
            return None

    def _problem(self, what: str, error: BaseException) -> None:
        where = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        text = f"{what}: {type(error).__name__}: {error}"
        self.problems.append(text if len(self.problems) else f"{text}\n{where}")
        try:
            warnings.warn(LabotelPluginWarning(f"labotel: {text} (the check was skipped)"),
                          stacklevel=2)
        except Exception:  # -W error: the summary still says it
            pass


class _WithoutRaces(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "labotel_detection", None) != "race_condition"


def _fail(report: pytest.TestReport, title: str, text: str) -> None:
    """Turn ``report`` into a failure that shows ``text``; keep a failure it already has."""
    if report.failed:
        report.sections.append((title, text))
        return
    report.outcome = "failed"
    report.longrepr = f"{title}\n\n{text}"
    if hasattr(report, "wasxfail"):
        del report.wasxfail
