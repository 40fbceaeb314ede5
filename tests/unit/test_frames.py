"""One answer to "whose frame is this", and the demo's lines are the application's."""

from __future__ import annotations

import os
import threading
import time

import labotel
from labotel import frames
from labotel.demo import faults as demo_faults
from labotel.detect import race_report

FAULTS_FILE = demo_faults.__file__


def test_the_demo_is_application_code_and_labotel_is_not():
    assert frames.is_application(FAULTS_FILE)
    assert not frames.is_labotel(FAULTS_FILE)
    assert frames.is_labotel(race_report.__file__)
    assert frames.is_library(threading.__file__) and frames.is_stdlib(threading.__file__)
    assert frames.is_application(__file__)
    stack = [(race_report.__file__, 1, "wrapper"), (threading.__file__, 2, "run"),
             (FAULTS_FILE, 3, "update_prices")]
    assert frames.application_frame(stack) == 2


def test_the_demo_race_report_names_demo_lines():
    labotel.start(race_detection=True, admin_address="", leak_detection=False,
                  runtime_metrics=False)
    broken = demo_faults.Faults(lambda: None)
    try:
        broken.enable("race")
        deadline = time.monotonic() + 20
        while not labotel.detections("race_condition") and time.monotonic() < deadline:
            time.sleep(0.05)
        broken.disable("race")
        races = labotel.detections("race_condition")
        assert races, "the demo's race fault was not detected"
        race = races[0]
        for stack in race.stacks:
            files = [os.path.basename(filename) for filename, _, _ in stack.frames]
            assert "faults.py" in files, (stack.name, stack.frames)
        assert race.attributes["code.filepath"] == FAULTS_FILE
        assert "faults.py" in race.message.split("Current", 1)[1]
    finally:
        broken.disable_all()
        labotel.shutdown()


def test_a_race_fingerprint_names_the_sites_its_report_names():
    """The fingerprint takes a cheaper path (no function names): it must agree with the
    report on every kind of access, labotel's own frames skipped."""
    def access(frames, location=None):
        return (1, 1, None, True, location, frames, 0.0)

    mine, labotel_code = access.__code__, race_report.fingerprint.__code__
    cases = [access(((labotel_code, 5), (mine, 7))), access(((labotel_code, 5),)),
             access(()), access(((mine, 7),)), access(((mine, 7),), "/srv/a.py:0012"),
             access((), "no line"), access((), "C:\\srv\\a.py:3"), access((), "a.py:")]
    for case in cases:
        assert race_report._site_of(case) == race_report._site(race_report._where(case)), case
    assert race_report._site_of(cases[0]) == f"{__file__}:7"
