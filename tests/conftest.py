import pytest

import labotel

pytest_plugins = ["pytester"]  # tests/unit/test_pytest_plugin.py runs sample projects


@pytest.fixture
def monitor():
    """A started labotel on an ephemeral debug port, shut down after the test."""
    labotel.shutdown()
    started = labotel.start(admin_address="127.0.0.1:0", service_name="labotel-test")
    yield started
    labotel.shutdown()


@pytest.fixture(autouse=True)
def _no_leftover_monitor():
    yield
    labotel.shutdown()
