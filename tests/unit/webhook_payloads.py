"""Alertmanager webhook payloads shaped exactly like the ones Alertmanager 0.25+ sends."""

from __future__ import annotations

import copy
from typing import Any

RACE_ALERT: dict[str, Any] = {
    "status": "firing",
    "labels": {"alertname": "LabotelRaceDetected", "severity": "critical",
               "job": "labend", "instance": "app:8080",
               "labotel_detection_kind": "race_condition"},
    "annotations": {
        "summary": "Data race detected in labend (app:8080)",
        "description": "labotel saw 1 new race(s) in the last 10 minutes.",
        "runbook_url": "docs/runbooks.md#labotelracedetected",
    },
    "startsAt": "2026-11-25T12:00:00.123456789Z",
    "endsAt": "0001-01-01T00:00:00Z",
    "generatorURL": "http://prometheus:9090/graph?g0.expr=...",
    "fingerprint": "a1b2c3d4e5f60718",
}

NOTIFICATION: dict[str, Any] = {
    "version": "4",
    "groupKey": '{}/{severity="critical"}:{alertname="LabotelRaceDetected"}',
    "truncatedAlerts": 0,
    "status": "firing",
    "receiver": "critical",
    "groupLabels": {"alertname": "LabotelRaceDetected"},
    "commonLabels": {"alertname": "LabotelRaceDetected", "severity": "critical"},
    "commonAnnotations": {},
    "externalURL": "http://alertmanager:9093",
    "alerts": [RACE_ALERT],
}


def _changed(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of ``base`` with top-level keys replaced (None deletes a key)."""
    data = copy.deepcopy(base)
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def notification(**changes: Any) -> dict[str, Any]:
    return _changed(NOTIFICATION, changes)


def alert(**changes: Any) -> dict[str, Any]:
    return _changed(RACE_ALERT, changes)
