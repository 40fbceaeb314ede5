import json

import pytest

from labotel.alerting.payload import parse_notification
from tests.unit.webhook_payloads import alert, notification


def encode(data) -> bytes:
    return json.dumps(data).encode()


def test_parses_a_real_alertmanager_notification():
    parsed = parse_notification(encode(notification()))
    assert parsed.receiver == "critical"
    assert parsed.status == "firing"
    assert parsed.group_labels == {"alertname": "LabotelRaceDetected"}
    [only] = parsed.alerts
    assert only.name == "LabotelRaceDetected"
    assert only.labels["severity"] == "critical"
    assert only.annotations["runbook_url"].endswith("#labotelracedetected")
    assert only.starts_at == "2026-11-25T12:00:00.123456789Z"


def test_resolved_alert_and_optional_fields_missing():
    minimal = alert(status="resolved", endsAt="2026-11-25T12:05:00Z", generatorURL=None,
                    fingerprint=None, annotations=None)
    parsed = parse_notification(encode(notification(status="resolved", alerts=[minimal],
                                                    groupKey=None, externalURL=None)))
    assert parsed.alerts[0].status == "resolved"
    assert parsed.alerts[0].annotations == {}
    assert parsed.alerts[0].fingerprint == ""


@pytest.mark.parametrize(("body", "message"), [
    (b"not json", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (encode([1, 2]), "JSON object"),
    (encode(notification(version="3")), "version '3'"),
    (encode(notification(version=None)), "version None"),
    (encode(notification(status="pending")), "'status' must be 'firing' or 'resolved'"),
    (encode(notification(receiver="")), "'receiver' must be a non-empty string"),
    (encode(notification(alerts={"a": 1})), "'alerts' must be a list"),
    (encode(notification(truncatedAlerts=-1)), "truncatedAlerts"),
    (encode(notification(alerts=["x"])), "alerts[0] must be an object"),
    (encode(notification(alerts=[alert(labels={"severity": "critical"})])),
     "alerts[0].labels has no 'alertname'"),
    (encode(notification(alerts=[alert(labels={"alertname": 3})])),
     "alerts[0].labels must be an object of string values"),
    (encode(notification(alerts=[alert(startsAt="yesterday")])),
     "alerts[0].startsAt is not an RFC 3339 timestamp"),
    (encode(notification(alerts=[alert(startsAt=None)])), "alerts[0].startsAt"),
    (encode(notification(alerts=[alert(), alert(status="gone")])),
     "alerts[1].status must be 'firing' or 'resolved'"),
])
def test_rejects_bad_payloads_naming_the_field(body, message):
    with pytest.raises(ValueError, match=None) as error:
        parse_notification(body)
    assert message in str(error.value)
