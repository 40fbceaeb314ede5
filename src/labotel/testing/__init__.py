"""Leak checks for test suites: threads and asyncio tasks a test left running.

    from labotel.testing import no_leaks, verify_no_leaks, ignore_current

    @no_leaks()
    def test_worker(): ...

    before = ignore_current()
    run_my_tests()
    verify_no_leaks(before, ignore_created_by=["mylib.pool.start"])

``pytest --leaks`` (the plugin in ``labotel.pytest_plugin``) runs the same check after
every test.
"""

from labotel.testing.leaks import (
    DEFAULT_GRACE,
    Baseline,
    LeakGroup,
    find_leaks,
    format_leaks,
    ignore_current,
    install,
    no_leaks,
    uninstall,
    verify_no_leaks,
)

__all__ = ["DEFAULT_GRACE", "Baseline", "LeakGroup", "find_leaks", "format_leaks",
           "ignore_current", "install", "no_leaks", "uninstall", "verify_no_leaks"]
