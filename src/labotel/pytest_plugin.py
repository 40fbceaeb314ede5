"""The pytest plugin (entry point ``pytest11: labotel``): ``pytest --leaks``, ``pytest --race``.

Without its flags it only adds its options and the ``labotel`` marker: no patches, no
``labotel.start()``, nothing imported but this module (``labotel`` itself is lazy).
``-p no:labotel`` turns it off. The checks are in ``labotel.testing.plugin``; they load
when a flag asks for them, before the project's conftest files are imported, so race
detection sees the locks they create and leak checks know where every thread started.
"""

from __future__ import annotations

from typing import Any

import pytest

CHECKS = "labotel-checks"  # the name the checks' plugin object is registered under
MARKER = ("labotel(leaks=True, leaks_ignore=(), leaks_grace=None, race=True): per-test "
          "settings of pytest --leaks / --race; leaks=False skips the leak check, race=False "
          "lets races detected during the test pass")


class LabotelPluginWarning(pytest.PytestWarning):
    """Something failed inside labotel's pytest plugin; the test's own result stands."""


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("labotel", "labotel: fail tests that race or leave threads/tasks")
    group.addoption(
        "--leaks", action="store_true", dest="labotel_leaks", default=False,
        help="fail a test when threads or asyncio tasks it created are still alive after "
             "its teardown")
    group.addoption(
        "--leaks-grace", dest="labotel_leaks_grace", metavar="SECONDS", default=None,
        help="how long a leak check waits for threads/tasks that are finishing (default "
             "1.0; ini labotel_leaks_grace)")
    group.addoption(
        "--leaks-ignore", dest="labotel_leaks_ignore", action="append", default=[],
        metavar="MODULE.FUNCTION",
        help="not a leak: threads/tasks created by, or sitting in, this function (repeat "
             "or comma-separate; ini labotel_leaks_ignore)")
    group.addoption(
        "--race", action="store_true", dest="labotel_race", default=False,
        help="race detection on for the session; a test during which a race is detected "
             "fails")
    group.addoption(
        "--race-instrument", dest="labotel_race_instrument", metavar="PKG[,PKG]",
        default=None,
        help="packages whose reads and writes --race checks without annotations (default: "
             "the top-level packages in rootdir and rootdir/src, tests excluded; ini "
             "labotel_race_instrument)")
    parser.addini("labotel_leaks_grace", "seconds a --leaks check waits for threads/tasks "
                  "that are finishing (default 1.0)", default="")
    parser.addini("labotel_leaks_ignore", "MODULE.FUNCTION per line: not a leak when "
                  "created by or sitting in it", type="linelist", default=[])
    parser.addini("labotel_race_instrument", "packages --race instruments (comma or space "
                  "separated; default: discovered in rootdir and rootdir/src)", default=None)


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser,
                                  args: list[str]) -> None:
    _activate(early_config, early_config.known_args_namespace, early=True)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER)
    # loaded too late for the early hook (pytest_plugins in a conftest file)
    _activate(config, config.option, early=False)


def _activate(config: pytest.Config, options: Any, early: bool) -> None:
    if config.pluginmanager.has_plugin(CHECKS):
        return
    if not (getattr(options, "labotel_leaks", False) or getattr(options, "labotel_race", False)):
        return
    from labotel.testing.plugin import Checks

    config.pluginmanager.register(Checks(config, options, early), CHECKS)


