"""``labotel alerts-webhook``: receive Alertmanager notifications, print them, keep the last.

``POST /alerts`` takes an Alertmanager webhook payload (version 4): each alert is printed
as a short readable block and kept in a bounded buffer; a payload that does not parse is
answered 400 and changes nothing. ``GET /alerts`` returns the kept alerts, newest first.
"""

from __future__ import annotations

import collections
import signal
import sys
import threading
import time
from typing import Any, TextIO

from labotel.alerting.payload import Alert, Notification, parse_notification
from labotel.server.debug_server import DebugServer
from labotel.server.http import HTTPError, Request, Response, Router, json_response, text_response
from labotel.server.limits import ServerLimits

DEFAULT_KEEP = 200
# Alertmanager sends every alert of a group in one POST: room for thousands of alerts.
MAX_BODY_BYTES = 4 << 20
# Annotations printed in this order; the rest follow alphabetically.
ANNOTATION_ORDER = ("summary", "description", "runbook_url")
QUIET_LABELS = {"alertname", "severity"}


def format_alert(alert: Alert, receiver: str = "") -> str:
    """One alert as a few readable lines (what an on-call person wants to see first)."""
    severity = alert.labels.get("severity", "none")
    where = " ".join(f"{k}={v}" for k, v in sorted(alert.labels.items())
                     if k not in QUIET_LABELS)
    lines = [f"[{alert.status.upper()}] {alert.name} (severity {severity})"
             + (f" via {receiver}" if receiver else "")]
    if where:
        lines.append(f"  labels:      {where}")
    keys = [k for k in ANNOTATION_ORDER if k in alert.annotations]
    keys += sorted(k for k in alert.annotations if k not in ANNOTATION_ORDER)
    for key in keys:
        text = alert.annotations[key].strip().replace("\n", "\n               ")
        lines.append(f"  {key + ':':<12} {text}")
    lines.append(f"  since:       {alert.starts_at}")
    if alert.status == "resolved" and alert.ends_at:
        lines.append(f"  resolved:    {alert.ends_at}")
    return "\n".join(lines)


class AlertStore:
    """The last ``keep`` alerts received, thread-safe (the server handles requests in threads)."""

    def __init__(self, keep: int = DEFAULT_KEEP):
        if keep < 1:
            raise ValueError(f"keep: must be >= 1, got {keep}")
        self._items: collections.deque[dict[str, Any]] = collections.deque(maxlen=keep)
        self._lock = threading.Lock()
        self.notifications = 0

    def add(self, notification: Notification) -> None:
        received = time.time()
        with self._lock:
            self.notifications += 1
            for alert in notification.alerts:
                self._items.append({**alert.to_dict(), "receiver": notification.receiver,
                                    "groupKey": notification.group_key,
                                    "receivedAt": received})

    def latest(self, limit: int | None = None) -> list[dict[str, Any]]:
        with self._lock:
            items = list(reversed(self._items))
        return items[:limit] if limit is not None else items


class WebhookServer:
    """The receiver as an object: ``start()`` serves on a thread, ``url`` says where.

    Tests bind it to ``127.0.0.1:0`` and read ``store``; ``out`` is where alerts are printed.
    """

    def __init__(self, address: str = "127.0.0.1:5001", keep: int = DEFAULT_KEEP,
                 out: TextIO | None = None, max_body_bytes: int = MAX_BODY_BYTES):
        self.store = AlertStore(keep)
        self.out = out  # where alerts are printed (None: stdout)
        self._print_lock = threading.Lock()
        router = Router(max_body_bytes=max_body_bytes)
        router.add("/alerts", self._alerts, methods=("GET", "HEAD", "POST"))
        router.add("/healthz", lambda _: text_response("ok\n"))
        # the debug server's timeouts and caps, with room for a large notification
        limits = ServerLimits.from_settings(max_body_bytes=max_body_bytes)
        self._server = DebugServer(address, router, thread_name="alerts-webhook",
                                   limits=limits)

    @property
    def url(self) -> str:
        return self._server.url

    def start(self) -> WebhookServer:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def _alerts(self, request: Request) -> Response:
        if request.method != "POST":
            limit = request.int_arg("limit", DEFAULT_KEEP, minimum=1)
            return json_response({"alerts": self.store.latest(limit)})
        try:
            notification = parse_notification(request.body)
        except ValueError as error:
            raise HTTPError(400, f"bad Alertmanager payload: {error}") from None
        self.store.add(notification)
        self._print(notification)
        return json_response({"received": len(notification.alerts)})

    def _print(self, notification: Notification) -> None:
        out = self.out or sys.stdout
        blocks = [format_alert(alert, notification.receiver) for alert in notification.alerts]
        if notification.truncated_alerts:
            blocks.append(f"(+{notification.truncated_alerts} alerts truncated by Alertmanager)")
        with self._print_lock:
            print("\n\n".join(blocks) + "\n", file=out, flush=True)


def run(address: str) -> int:
    """Serve until Ctrl-C or SIGTERM; the ``labotel alerts-webhook`` command."""
    try:
        server = WebhookServer(address).start()
    except (OSError, ValueError) as error:
        print(f"labotel alerts-webhook: cannot listen on {address}: {error}", file=sys.stderr)
        return 1
    print(f"labotel alerts-webhook: POST Alertmanager notifications to {server.url}/alerts; "
          f"GET {server.url}/alerts lists the last {DEFAULT_KEEP}", flush=True)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        while not stopped.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    server.stop()
    return 0
