"""Every module logs under labotel.; one detector's reports can be tuned alone."""

from __future__ import annotations

import ast
import logging
import pathlib
from importlib import metadata

import labotel
from labotel.detect.detection import Detection
from tests.unit.test_reporter import make_reporter

SOURCE = pathlib.Path(labotel.__file__).parent


def test_race_reports_can_be_silenced_alone(caplog):
    reporter, _, _ = make_reporter()
    races = logging.getLogger("labotel.detect.races")
    try:
        races.setLevel(logging.ERROR)
        with caplog.at_level(logging.WARNING, logger="labotel"):
            reporter.report(Detection(kind="race_condition", summary="race on cache"))
            reporter.report(Detection(kind="memory_leak", summary="heap grows 1 MB/s"))
    finally:
        races.setLevel(logging.NOTSET)
    assert [(r.name, r.getMessage()) for r in caplog.records] == [
        ("labotel.detect.memory", "heap grows 1 MB/s")]
    assert len(reporter.detections()) == 2  # silenced in the log only


def test_every_labotel_logger_is_its_module():
    names = []
    for path in SOURCE.rglob("*.py"):
        if "demo" in path.parts:  # the demo service logs as the application it plays
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "getLogger" and node.args
                    and isinstance(node.args[0], ast.Constant)
                    and not str(node.args[0].value).startswith("labotel.detect.")):
                names.append((path.name, node.args[0].value))
    assert names == []


def test_the_version_is_the_package_metadata():
    assert labotel.__version__ == metadata.version("labotel")
