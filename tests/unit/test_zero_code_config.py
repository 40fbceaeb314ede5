"""The zero-code configuration surface: LABOTEL_* constants, launcher flags, README table."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import subprocess
import sys

from labotel import environment_variables
from labotel.auto import LabotelInstrumentor
from labotel.config import Settings

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"
LAUNCHER = pathlib.Path(sys.executable).parent / "opentelemetry-instrument"


def test_every_option_has_a_constant_and_a_launcher_variable():
    names = [field.name for field in dataclasses.fields(Settings)]
    assert environment_variables.VARIABLES == [f"LABOTEL_{n.upper()}" for n in names]
    for name in names:
        variable = f"LABOTEL_{name.upper()}"
        assert getattr(environment_variables, variable) == variable
        assert environment_variables.LAUNCHER_VARIABLES[f"OTEL_labotel_{name}"] == variable


def test_launcher_flags_override_the_environment():
    environ = {"LABOTEL_RACE_DETECTION": "0", "OTEL_labotel_race_detection": "1",
               "LABOTEL_LEAK_WINDOW": "30"}
    applied = environment_variables.apply_launcher_flags(environ)
    assert applied == {"LABOTEL_RACE_DETECTION": "1"}
    assert environ["LABOTEL_RACE_DETECTION"] == "1" and environ["LABOTEL_LEAK_WINDOW"] == "30"
    assert Settings.load(environ=environ).race_detection is True


def test_the_real_launcher_offers_every_flag():
    result = subprocess.run([str(LAUNCHER), "--help"], capture_output=True, text=True,
                            timeout=60, env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    offered = set(re.findall(r"--(labotel_\w+)", result.stdout))
    assert offered == {f"labotel_{f.name}" for f in dataclasses.fields(Settings)}


def test_instrumentor_is_the_entry_point_and_needs_no_library():
    from importlib.metadata import entry_points

    (entry,) = [e for e in entry_points(group="opentelemetry_instrumentor")
                if e.name == "labotel"]
    assert entry.load() is LabotelInstrumentor
    assert list(LabotelInstrumentor().instrumentation_dependencies()) == []


def test_instrument_starts_and_uninstrument_stops_labotel():
    import labotel

    instrumentor = LabotelInstrumentor()
    instrumentor.instrument(admin_address="")
    try:
        assert labotel.monitor.current() is not None and labotel.monitor.current().running
    finally:
        instrumentor.uninstrument()
    assert labotel.monitor.current() is None


def test_readme_flag_table_matches_settings():
    text = README.read_text()
    match = re.search(r"<!-- zero-code-flags:start -->\n(.*?)\n<!-- zero-code-flags:end -->",
                      text, re.S)
    assert match, "README lost its zero-code flag table markers"
    assert match.group(1).strip() == environment_variables.launcher_table().strip(), (
        "README zero-code flag table is stale: regenerate with "
        "`uv run python -m labotel.environment_variables`")


def test_pre_instrument_hook_starts_labotel_unless_disabled(monkeypatch):
    import labotel
    from labotel import auto

    monkeypatch.setenv("LABOTEL_ADMIN_ADDRESS", "")
    monkeypatch.setenv("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "flask, labotel")
    auto.pre_instrument()
    assert labotel.monitor.current() is None
    monkeypatch.setenv("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "flask")
    auto.pre_instrument()
    monitor = labotel.monitor.current()
    assert monitor is not None and monitor.running
    auto.LabotelInstrumentor().instrument()  # the entry point later: same monitor
    assert labotel.monitor.current() is monitor
    auto.LabotelInstrumentor().uninstrument()
    assert labotel.monitor.current() is None
