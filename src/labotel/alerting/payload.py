"""Alertmanager's webhook payload (version 4), parsed strictly.

Alertmanager POSTs one JSON object per notification: group metadata plus a list of
alerts. Anything that does not have that shape is rejected with a ``ValueError`` whose
message says which field is wrong, so a misconfigured sender learns why from the 400.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from typing import Any

STATUSES = ("firing", "resolved")


@dataclasses.dataclass(frozen=True)
class Alert:
    status: str
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: str
    ends_at: str = ""
    generator_url: str = ""
    fingerprint: str = ""

    @property
    def name(self) -> str:
        return self.labels.get("alertname", "")

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "labels": dict(self.labels),
                "annotations": dict(self.annotations), "startsAt": self.starts_at,
                "endsAt": self.ends_at, "generatorURL": self.generator_url,
                "fingerprint": self.fingerprint}


@dataclasses.dataclass(frozen=True)
class Notification:
    receiver: str
    status: str
    alerts: tuple[Alert, ...]
    group_key: str = ""
    group_labels: dict[str, str] = dataclasses.field(default_factory=dict)
    common_labels: dict[str, str] = dataclasses.field(default_factory=dict)
    external_url: str = ""
    truncated_alerts: int = 0


def parse_notification(body: bytes) -> Notification:
    """The notification in ``body``; ``ValueError`` naming the first problem found."""
    try:
        data = json.loads(body)
    except RecursionError:
        raise ValueError("body is nested too deeply to be an Alertmanager payload") from None
    except ValueError as error:  # not JSON, not UTF-8, or an integer of thousands of digits
        raise ValueError(f"body is not JSON: {error}") from None
    if not isinstance(data, dict):
        raise ValueError("body must be a JSON object (Alertmanager webhook payload)")
    version = data.get("version")
    if version != "4":
        raise ValueError(f"unsupported payload version {version!r} (expected \"4\")")
    status = _status(data, "status")
    receiver = _string(data, "receiver", required=True)
    alerts = data.get("alerts")
    if not isinstance(alerts, list):
        raise ValueError("'alerts' must be a list")
    truncated = data.get("truncatedAlerts", 0)
    if not isinstance(truncated, int) or isinstance(truncated, bool) or truncated < 0:
        raise ValueError("'truncatedAlerts' must be a non-negative integer")
    return Notification(
        receiver=receiver, status=status,
        alerts=tuple(_alert(item, index) for index, item in enumerate(alerts)),
        group_key=_string(data, "groupKey"),
        group_labels=_labels(data, "groupLabels"),
        common_labels=_labels(data, "commonLabels"),
        external_url=_string(data, "externalURL"),
        truncated_alerts=truncated)


def _alert(item: Any, index: int) -> Alert:
    where = f"alerts[{index}]"
    if not isinstance(item, dict):
        raise ValueError(f"{where} must be an object")
    labels = _labels(item, "labels", where)
    if not labels.get("alertname"):
        raise ValueError(f"{where}.labels has no 'alertname'")
    starts_at = _string(item, "startsAt", where, required=True)
    _timestamp(starts_at, f"{where}.startsAt")
    ends_at = _string(item, "endsAt", where)
    if ends_at:
        _timestamp(ends_at, f"{where}.endsAt")
    return Alert(status=_status(item, "status", where), labels=labels,
                 annotations=_labels(item, "annotations", where), starts_at=starts_at,
                 ends_at=ends_at, generator_url=_string(item, "generatorURL", where),
                 fingerprint=_string(item, "fingerprint", where))


def _status(data: dict, key: str, where: str = "") -> str:
    value = data.get(key)
    if value not in STATUSES:
        raise ValueError(f"{_path(where, key)} must be 'firing' or 'resolved', got {value!r}")
    return value


def _string(data: dict, key: str, where: str = "", required: bool = False) -> str:
    value = data.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise ValueError(f"{_path(where, key)} must be a non-empty string" if required
                         else f"{_path(where, key)} must be a string")
    return value


def _labels(data: dict, key: str, where: str = "") -> dict[str, str]:
    value = data.get(key, {})
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError(f"{_path(where, key)} must be an object of string values")
    return dict(value)


def _timestamp(value: str, where: str) -> None:
    # Alertmanager writes RFC 3339 with nanoseconds ("...T10:00:00.123456789Z");
    # fromisoformat takes at most microseconds, so trim the fraction before checking.
    head, dot, rest = value.partition(".")
    if dot:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        value = head + "." + rest[:min(digits, 6)].ljust(1, "0") + rest[digits:]
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{where} is not an RFC 3339 timestamp: {value!r}") from None


def _path(where: str, key: str) -> str:
    return f"{where}.{key}" if where else f"'{key}'"
