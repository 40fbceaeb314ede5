"""The Prometheus and Alertmanager configs, checked by the real promtool and amtool."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose"
PROMETHEUS = COMPOSE / "prometheus"
RULES = PROMETHEUS / "rules" / "labotel-alerts.yml"
RULE_TESTS = PROMETHEUS / "tests" / "labotel-alerts.test.yml"
ALERTMANAGER = COMPOSE / "alertmanager"
RUNBOOKS = ROOT / "docs" / "runbooks.md"

promtool = shutil.which("promtool")
amtool = shutil.which("amtool")
needs_promtool = pytest.mark.skipif(
    promtool is None, reason="promtool not installed (Debian package 'prometheus')")
needs_amtool = pytest.mark.skipif(
    amtool is None, reason="amtool not installed (Debian package 'prometheus-alertmanager')")


def run(*args: str | Path, cwd: Path | None = None, env: dict | None = None):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=60)


def alerting_rules() -> list[dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


# --- Prometheus ------------------------------------------------------------------------

@needs_promtool
def test_prometheus_config_and_its_rule_files_are_valid():
    result = run(promtool, "check", "config", PROMETHEUS / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout + result.stderr


@needs_promtool
def test_rules_are_valid():
    result = run(promtool, "check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerting_rules())} rules found" in result.stdout


@needs_promtool
def test_rule_unit_tests_pass():
    result = run(promtool, "test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_a_broken_rule_makes_the_unit_tests_fail(tmp_path):
    """The unit tests can fail: raise the race alert's bar and they must say so."""
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    broken = RULES.read_text().replace(
        'labotel_detection_kind="race_condition"}[10m]) > 0',
        'labotel_detection_kind="race_condition"}[10m]) > 5', 1)
    broken = broken.replace(
        '(labotel_detections_total{labotel_detection_kind="race_condition"}\n',
        '(labotel_detections_total{labotel_detection_kind="race_condition"} > 5\n', 1)
    assert broken != RULES.read_text()
    (tmp_path / "rules" / RULES.name).write_text(broken)
    (tmp_path / "tests" / RULE_TESTS.name).write_text(RULE_TESTS.read_text())
    result = run(promtool, "test", "rules", RULE_TESTS.name, cwd=tmp_path / "tests")
    assert result.returncode != 0
    assert "LabotelRaceDetected" in result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_silent():
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    cases = [case for test in tests for case in test.get("alert_rule_test", [])]
    for rule in alerting_rules():
        name, severity = rule["alert"], rule["labels"]["severity"]
        fired = [alert for case in cases if case["alertname"] == name
                 for alert in case.get("exp_alerts") or []]
        silent = [case for case in cases if case["alertname"] == name
                  and not case.get("exp_alerts")]
        assert any(a["exp_labels"]["severity"] == severity for a in fired), \
            f"no test shows {name} ({severity}) firing"
        assert silent, f"no test shows {name} staying silent"


def test_every_alert_has_severity_summary_description_and_a_runbook_section():
    anchors = {github_anchor(line.lstrip("#").strip())
               for line in RUNBOOKS.read_text().splitlines() if line.startswith("## ")}
    for rule in alerting_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], name
        path, _, anchor = annotations["runbook_url"].partition("#")
        assert path == "docs/runbooks.md", name
        assert anchor in anchors, f"{name}: docs/runbooks.md has no section #{anchor}"


def github_anchor(heading: str) -> str:
    """The fragment GitHub gives a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.lower())
    return text.replace(" ", "-")


def test_race_alert_fires_at_once():
    race = next(r for r in alerting_rules() if r["alert"] == "LabotelRaceDetected")
    assert race.get("for", "0s") in ("0s", "0m")
    assert race["labels"]["severity"] == "critical"


# --- Alertmanager ----------------------------------------------------------------------

def render(tmp_path: Path, **variables: str) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "ALERTMANAGER_TEMPLATES": str(ALERTMANAGER / "templates"),
           **variables}
    return run("sh", ALERTMANAGER / "render-config.sh", ALERTMANAGER / "alertmanager.yml.in",
               tmp_path / "alertmanager.yml", env=env)


FULL = {"SMTP_SMARTHOST": "smtp.example.com:587", "ALERT_EMAIL_TO": "dev-team@labend.com",
        "SMTP_USERNAME": "alerts", "SMTP_PASSWORD": 's3cr"et\\pw',
        "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T000/B000/XXXX"}


@needs_amtool
@pytest.mark.parametrize("variables", [{}, FULL], ids=["defaults", "email-and-slack"])
def test_rendered_alertmanager_config_passes_amtool(tmp_path, variables):
    result = render(tmp_path, **variables)
    assert result.returncode == 0, result.stderr
    check = run(amtool, "check-config", tmp_path / "alertmanager.yml")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "1 inhibit rules" in check.stdout and "1 templates" in check.stdout


def test_email_and_slack_are_off_unless_configured(tmp_path):
    assert render(tmp_path).returncode == 0
    config = yaml.safe_load((tmp_path / "alertmanager.yml").read_text())
    receivers = {r["name"]: r for r in config["receivers"]}
    assert not any("email_configs" in r or "slack_configs" in r for r in receivers.values())
    assert "smtp_smarthost" not in config["global"]
    assert receivers["team-critical"]["webhook_configs"][0]["url"] == \
        "http://alerts-webhook:5001/alerts"


def test_environment_fills_email_and_slack_and_stays_private(tmp_path):
    assert render(tmp_path, **FULL).returncode == 0
    rendered = tmp_path / "alertmanager.yml"
    config = yaml.safe_load(rendered.read_text())
    assert config["global"]["smtp_smarthost"] == "smtp.example.com:587"
    assert config["global"]["smtp_auth_password"] == 's3cr"et\\pw'  # quoting survived
    assert config["global"]["smtp_require_tls"] is True
    receivers = {r["name"]: r for r in config["receivers"]}
    assert receivers["team-critical"]["email_configs"][0]["to"] == "dev-team@labend.com"
    assert receivers["team-critical"]["slack_configs"][0]["api_url"] == FULL["SLACK_WEBHOOK_URL"]
    assert receivers["team-warning"]["slack_configs"][0]["channel"] == "#alerts"
    assert "email_configs" not in receivers["team-warning"]  # warnings do not send mail
    assert stat.S_IMODE(rendered.stat().st_mode) == 0o600  # it holds the SMTP password


@pytest.mark.parametrize(("variables", "message"), [
    ({"SMTP_SMARTHOST": "smtp.example.com:587"}, "ALERT_EMAIL_TO is empty"),
    ({"SMTP_REQUIRE_TLS": "maybe"}, "SMTP_REQUIRE_TLS must be true or false"),
    ({"SLACK_CHANNEL": "#a\nmalicious: yes"}, "SLACK_CHANNEL contains a line break"),
])
def test_render_refuses_bad_environment(tmp_path, variables, message):
    result = render(tmp_path, **{"SLACK_WEBHOOK_URL": "https://hooks.slack.com/x", **variables})
    assert result.returncode != 0
    assert message in result.stderr
    assert not (tmp_path / "alertmanager.yml").exists()


def test_render_refuses_unknown_variables(tmp_path):
    template = tmp_path / "in.yml"
    template.write_text('route:\n  receiver: "${NOT_ALLOWED}"\n')
    result = run("sh", ALERTMANAGER / "render-config.sh", template, tmp_path / "out.yml",
                 env={"PATH": os.environ["PATH"], "NOT_ALLOWED": "x"})
    assert result.returncode != 0
    assert "unknown variable ${NOT_ALLOWED}" in result.stderr


@needs_amtool
@pytest.mark.parametrize(("labels", "receiver"), [
    (["alertname=LabotelRaceDetected", "severity=critical"], "team-critical"),
    (["alertname=LabotelThreadLeakDetected", "severity=warning"], "team-warning"),
    (["alertname=SomethingElse"], "team-webhook"),
])
def test_routing_by_severity(tmp_path, labels, receiver):
    assert render(tmp_path, **FULL).returncode == 0
    result = run(amtool, "config", "routes", "test",
                 f"--config.file={tmp_path / 'alertmanager.yml'}", *labels)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == receiver


@needs_amtool
@pytest.mark.parametrize("template", [
    "labotel.text", "labotel.email.subject", "labotel.email.html", "labotel.slack.title",
    "labotel.slack.color"])
def test_notification_templates_render(template):
    result = run(amtool, "template", "render",
                 f"--template.glob={ALERTMANAGER / 'templates' / '*.tmpl'}",
                 f"--template.text={{{{ template \"{template}\" . }}}}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
