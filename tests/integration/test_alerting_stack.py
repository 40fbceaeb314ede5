"""Alerts end to end, nothing mocked: a labotel process with a race and leaks is scraped
by the real Prometheus running the project's rules; the real Alertmanager routes the
alerts with the project's routing to the webhook receiver and to a real SMTP server."""

from __future__ import annotations

import re
import urllib.request

import pytest
import yaml

from tests.integration import alerting_stack
from tests.integration.alerting_stack import EMAIL_TO, http_json, wait_for

pytestmark = pytest.mark.skipif(
    bool(alerting_stack.MISSING),
    reason=f"not installed: {alerting_stack.MISSING} (Debian packages; .ci/run installs them)")

ALERT_TIMEOUT = 90  # seconds; typically 5-20


@pytest.fixture(scope="module")
def stack(request):
    return alerting_stack.shared(request.config)


def delivered(stack, alertname: str, **labels: str) -> dict:
    """The first webhook delivery of ``alertname`` firing for the provoker."""
    def check():
        return [a for a in stack.received(alertname, job="provoker", **labels)
                if a["status"] == "firing"]
    try:
        return wait_for(check, ALERT_TIMEOUT, f"{alertname} at the webhook")[0]
    except AssertionError as error:
        firing = sorted({a["labels"]["alertname"] for a in stack.prometheus_alerts()})
        raise AssertionError(f"{error}; firing in Prometheus: {firing}; provoker log:\n"
                             f"{stack.log('provoker')}") from None


def test_race_alert_fires_and_reaches_the_critical_receiver(stack):
    alert = delivered(stack, "LabotelRaceDetected")
    assert alert["labels"]["severity"] == "critical"
    assert alert["labels"]["labotel_detection_kind"] == "race_condition"
    assert alert["receiver"] == "team-critical"
    assert alert["annotations"]["summary"].startswith("Data race detected in provoker")
    assert alert["annotations"]["runbook_url"] == "docs/runbooks.md#labotelracedetected"
    firing = [a for a in stack.prometheus_alerts() if a["labels"]["alertname"] ==
              "LabotelRaceDetected" and a["labels"]["job"] == "provoker"]
    assert firing and firing[0]["state"] == "firing"
    in_alertmanager = stack.alertmanager_alerts(alertname="LabotelRaceDetected", job="provoker")
    assert [r["name"] for r in in_alertmanager[0]["receivers"]] == ["team-critical"]
    printed = stack.webhook.out.getvalue()
    assert "[FIRING] LabotelRaceDetected (severity critical) via team-critical" in printed


def test_thread_leak_alert_takes_the_warning_route(stack):
    alert = delivered(stack, "LabotelThreadLeakDetected")
    assert alert["labels"]["severity"] == "warning"
    assert alert["receiver"] == "team-warning"
    detections = http_json(f"{stack.provoker_url}/admin/monitoring/detections?kind=thread_leak")
    assert "stuck_consumer" in str(detections) or "leak_threads" in str(detections)


def test_memory_leak_alert_fires(stack):
    alert = delivered(stack, "LabotelMemoryLeakDetected")
    assert alert["labels"]["severity"] == "critical"
    assert alert["receiver"] == "team-critical"


def test_internal_errors_alert_names_the_component(stack):
    alert = delivered(stack, "LabotelInternalErrors")
    assert alert["labels"]["labotel_component"] == "provoker.simulated"


def test_critical_alerts_are_emailed_with_the_runbook(stack):
    delivered(stack, "LabotelRaceDetected")

    def race_mail():
        return [m for m in stack.mail.messages if "LabotelRaceDetected" in m["Subject"]]
    message = wait_for(race_mail, ALERT_TIMEOUT, "the race alert e-mail")[0]
    assert message["To"] == EMAIL_TO
    assert message["Subject"].startswith("[FIRING:")
    bodies = [part.get_payload(decode=True).decode() for part in message.walk()
              if part.get_content_type() in ("text/plain", "text/html")]
    assert any("docs/runbooks.md#labotelracedetected" in body for body in bodies)
    assert any("Data race detected in provoker" in body for body in bodies)


def test_critical_inhibits_the_warning_of_the_same_alert(stack):
    probe = {"alertname": "InhibitionProbe", "job": "probe", "instance": "probe:1"}
    http_json(f"{stack.alertmanager_url}/api/v2/alerts", [
        {"labels": {**probe, "severity": "critical"}, "annotations": {"summary": "critical"}},
        {"labels": {**probe, "severity": "warning"}, "annotations": {"summary": "warning"}},
        {"labels": {**probe, "alertname": "OtherProbe", "severity": "warning"}},
    ])

    def states():
        alerts = stack.alertmanager_alerts(job="probe")
        return {(a["labels"]["alertname"], a["labels"]["severity"]): a["status"]
                for a in alerts} if len(alerts) == 3 else None
    status = wait_for(states, 30, "the probe alerts in Alertmanager")
    wait_for(lambda: states()[("InhibitionProbe", "warning")]["state"] == "suppressed", 30,
             "the warning to be inhibited")
    status = states()
    assert status[("InhibitionProbe", "warning")]["inhibitedBy"]
    assert status[("InhibitionProbe", "critical")]["state"] == "active"
    assert status[("OtherProbe", "warning")]["state"] == "active"  # a different alert
    wait_for(lambda: stack.received("InhibitionProbe", severity="critical"), 30,
             "the critical probe at the webhook")
    wait_for(lambda: stack.received("OtherProbe"), 30, "the other probe at the webhook")
    assert stack.received("InhibitionProbe", severity="warning") == []


def test_every_series_the_rules_use_is_scraped(stack):
    """Rule expressions name only series that really exist on a labotel /metrics."""
    rules = yaml.safe_load((alerting_stack.COMPOSE / "prometheus" / "rules" /
                            "labotel-alerts.yml").read_text())
    exprs = " ".join(r["expr"] for g in rules["groups"] for r in g["rules"])
    exprs = re.sub(r"\b(by|without)\s*\([^)]*\)", " ", exprs)  # label lists, not series
    names = set(re.findall(r"\b([a-z_][a-z0-9_]*)\s*(?=\{|\[|\)|>|==| offset)", exprs))
    assert {"labotel_detections_total", "process_thread_count", "outbox_pending_events",
            "labotel_gc_pause_duration_seconds_bucket", "up"} <= names
    delivered(stack, "LabotelInternalErrors")  # by then every series has been scraped

    def missing():
        return sorted(n for n in names if not stack.query(f"count({n})"))
    try:
        wait_for(lambda: not missing(), 30, "every rule series")
    except AssertionError:
        pytest.fail(f"series used by the rules but absent from Prometheus: {missing()}")


def test_runbook_endpoints_answer_on_a_labotel_process(stack):
    """Every `$APP/...` URL docs/runbooks.md tells an on-call person to open works."""
    runbooks = (alerting_stack.ROOT / "docs" / "runbooks.md").read_text()
    paths = sorted(set(re.findall(r"\$APP(/[^\s\"'`)]+)", runbooks)))
    assert len(paths) >= 10
    for path in paths:
        path = re.sub(r"seconds=\d+", "seconds=1", path)  # same endpoint, shorter capture
        with urllib.request.urlopen(f"{stack.provoker_url}{path}", timeout=30) as response:
            assert response.status == 200, path
            assert response.read(), path
