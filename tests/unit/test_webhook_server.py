import io
import json
import re
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from labotel.alerting.payload import parse_notification
from labotel.alerting.webhook import WebhookServer, format_alert
from tests.unit.webhook_payloads import alert, notification


@pytest.fixture
def server():
    out = io.StringIO()
    started = WebhookServer("127.0.0.1:0", keep=3, out=out).start()
    yield started
    started.stop()


def post(url: str, body: bytes) -> tuple[int, str]:
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def get_alerts(url: str, query: str = "") -> list[dict]:
    with urllib.request.urlopen(f"{url}/alerts{query}", timeout=5) as response:
        return json.loads(response.read())["alerts"]


def test_post_prints_and_keeps_the_alert(server):
    status, body = post(f"{server.url}/alerts", json.dumps(notification()).encode())
    assert (status, json.loads(body)) == (200, {"received": 1})
    printed = server.out.getvalue()
    assert "[FIRING] LabotelRaceDetected (severity critical) via critical" in printed
    assert "summary:     Data race detected in labend (app:8080)" in printed
    assert "runbook_url: docs/runbooks.md#labotelracedetected" in printed
    assert "labotel_detection_kind=race_condition" in printed
    [kept] = get_alerts(server.url)
    assert kept["labels"]["alertname"] == "LabotelRaceDetected"
    assert kept["receiver"] == "critical"
    assert kept["status"] == "firing"


def test_get_lists_newest_first_and_keeps_only_the_last(server):
    for number in range(5):
        item = alert(labels={"alertname": f"A{number}", "severity": "warning"})
        assert post(f"{server.url}/alerts",
                    json.dumps(notification(alerts=[item])).encode())[0] == 200
    names = [a["labels"]["alertname"] for a in get_alerts(server.url)]
    assert names == ["A4", "A3", "A2"]
    assert [a["labels"]["alertname"] for a in get_alerts(server.url, "?limit=1")] == ["A4"]


@pytest.mark.parametrize("body", [
    b"{",
    json.dumps(notification(version="2")).encode(),
    json.dumps(notification(alerts=[alert(), alert(labels={})])).encode(),
])
def test_bad_payload_is_400_and_changes_nothing(server, body):
    post(f"{server.url}/alerts", json.dumps(notification()).encode())
    before, printed = get_alerts(server.url), server.out.getvalue()
    status, message = post(f"{server.url}/alerts", body)
    assert status == 400
    assert message.startswith("bad Alertmanager payload: ")
    assert get_alerts(server.url) == before
    assert server.out.getvalue() == printed


def test_bad_limit_is_400(server):
    with pytest.raises(urllib.error.HTTPError) as error:
        get_alerts(server.url, "?limit=zero")
    assert error.value.code == 400


def test_resolved_alerts_say_when(server):
    resolved = alert(status="resolved", endsAt="2026-11-25T12:05:00Z")
    post(f"{server.url}/alerts",
         json.dumps(notification(status="resolved", alerts=[resolved])).encode())
    assert "[RESOLVED] LabotelRaceDetected" in server.out.getvalue()
    assert "resolved:    2026-11-25T12:05:00Z" in server.out.getvalue()


def test_format_alert_puts_summary_before_other_annotations():
    text = format_alert(parse_notification(json.dumps(notification(alerts=[alert(
        annotations={"zeta": "z", "description": "d", "summary": "s"})])).encode()).alerts[0])
    keys = [line.split(":")[0].strip() for line in text.splitlines()[2:5]]
    assert keys == ["summary", "description", "zeta"]


def test_cli_serves_until_terminated():
    process = subprocess.Popen(
        [sys.executable, "-m", "labotel.cli", "alerts-webhook", "--address", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        banner = process.stdout.readline()
        url = re.search(r"(http://127\.0\.0\.1:\d+)/alerts", banner).group(1)
        assert post(f"{url}/alerts", json.dumps(notification()).encode())[0] == 200
        assert "[FIRING] LabotelRaceDetected" in process.stdout.readline()
        assert get_alerts(url)[0]["labels"]["alertname"] == "LabotelRaceDetected"
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0


def test_cli_reports_an_address_it_cannot_use():
    result = subprocess.run(
        [sys.executable, "-m", "labotel.cli", "alerts-webhook", "--address", "nonsense"],
        capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "cannot listen on nonsense" in result.stderr


@pytest.mark.parametrize("body, words", [
    (b"[" * 10_000 + b"]" * 10_000, "nested too deeply"),
    (b'{"version": "4", "truncatedAlerts": ' + b"9" * 5000 + b"}", "not JSON"),
    (b"\xff\xfe{}", "not JSON"),
])
def test_hostile_json_is_400_never_500(server, body, words):
    status, message = post(f"{server.url}/alerts", body)
    assert status == 400 and words in message


def test_body_limit_a_clean_413_over_it_and_none_under_it():
    import socket

    out = io.StringIO()
    small = WebhookServer("127.0.0.1:0", out=out, max_body_bytes=100_000).start()
    try:
        padding = {"padding": "x" * 90_000}
        under = json.dumps({**notification(), **padding}).encode()
        assert len(under) < 100_000
        assert post(f"{small.url}/alerts", under)[0] == 200
        # urllib writes the whole 10 MB before it reads: it must see the 413, not EPIPE
        status, message = post(f"{small.url}/alerts", b"x" * 10_000_000)
        assert status == 413 and "over the limit of 100000 bytes" in message
        host, port = small._server.address
        with socket.create_connection((host, port), timeout=5) as sock:  # and it stays up
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.1 200")
    finally:
        small.stop()
