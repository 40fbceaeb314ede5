"""The real alerting path on loopback: labotel processes -> Prometheus -> Alertmanager ->
webhook receiver and SMTP server, using the project's own rule files and Alertmanager
routing (rendered by compose/alertmanager/render-config.sh).

Only what a laptop-sized test needs differs from compose/: 1 s scrape and evaluation
intervals, loopback ephemeral ports, and Alertmanager group waits of a second. The stack
is started once per test session (``shared``) and torn down at the end of it.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import yaml

from labotel.alerting.webhook import WebhookServer

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose"
PROMETHEUS_BIN = shutil.which("prometheus")
ALERTMANAGER_BIN = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
MISSING = ", ".join(name for name, found in (("prometheus", PROMETHEUS_BIN),
                                            ("prometheus-alertmanager", ALERTMANAGER_BIN))
                    if not found)
EMAIL_TO = "oncall@labend.test"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http_json(url: str, data: Any = None, timeout: float = 5.0) -> Any:
    body = None if data is None else json.dumps(data).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        raw = response.read()
    return json.loads(raw) if raw else None


def wait_for(check, timeout: float, what: str, interval: float = 0.5):
    """Poll ``check()`` until it returns something truthy; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except (OSError, ValueError, KeyError) as error:
            last_error = error
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}"
                         + (f" (last error: {last_error})" if last_error else ""))


class MailSink:
    """A real SMTP server on loopback (aiosmtpd) that keeps every message it accepts."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.messages: list[Message] = []
        sink = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):  # noqa: N802
                sink.messages.append(message_from_bytes(envelope.content))
                return "250 Message accepted for delivery"

        self.port = free_port()
        self._controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()


@dataclasses.dataclass
class Stack:
    workdir: Path
    webhook: WebhookServer
    mail: MailSink
    provoker_url: str = ""
    demo_url: str = ""
    prometheus_url: str = ""
    alertmanager_url: str = ""
    processes: list[subprocess.Popen] = dataclasses.field(default_factory=list)
    logs: list[Any] = dataclasses.field(default_factory=list)

    # -- Prometheus and Alertmanager APIs ----------------------------------------------
    def query(self, promql: str) -> list[dict]:
        url = f"{self.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        return http_json(url)["data"]["result"]

    def query_range(self, promql: str, seconds: int = 60, step: str = "1s") -> list[dict]:
        end = time.time()
        params = {"query": promql, "start": end - seconds, "end": end, "step": step}
        url = f"{self.prometheus_url}/api/v1/query_range?" + urllib.parse.urlencode(params)
        return http_json(url)["data"]["result"]

    def prometheus_alerts(self) -> list[dict]:
        return http_json(f"{self.prometheus_url}/api/v1/alerts")["data"]["alerts"]

    def alertmanager_alerts(self, **matchers: str) -> list[dict]:
        query = urllib.parse.urlencode(
            [("filter", f'{k}="{v}"') for k, v in matchers.items()])
        return http_json(f"{self.alertmanager_url}/api/v2/alerts?{query}")

    def received(self, alertname: str, **labels: str) -> list[dict]:
        return [a for a in self.webhook.store.latest() if a["labels"]["alertname"] == alertname
                and all(a["labels"].get(k) == v for k, v in labels.items())]

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for log in self.logs:
            log.close()
        self.webhook.stop()
        self.mail.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    # -- start-up ------------------------------------------------------------------------
    def spawn(self, name: str, args: list[str], env: dict | None = None) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "wb")  # closed by stop()
        self.logs.append(log)
        process = subprocess.Popen(args, stdout=subprocess.PIPE if name == "provoker" else log,
                                   stderr=log, env={**os.environ, **(env or {})},
                                   cwd=self.workdir)
        self.processes.append(process)
        return process

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""


def start() -> Stack:
    workdir = Path(tempfile.mkdtemp(prefix="labotel-alerting-"))
    stack = Stack(workdir, WebhookServer("127.0.0.1:0", out=io.StringIO()).start(), MailSink())
    try:
        _start_apps(stack)
        _start_alertmanager(stack)
        _start_prometheus(stack)
    except BaseException:
        stack.stop()
        raise
    return stack


def _start_apps(stack: Stack) -> None:
    provoker = stack.spawn("provoker", [sys.executable, str(Path(__file__).with_name(
        "alerting_provoker.py"))], {"PYTHONPATH": str(ROOT / "src")})
    line = provoker.stdout.readline().decode().strip()
    if not line.startswith("http://"):
        raise RuntimeError(f"provoker did not start: {line!r}\n{stack.log('provoker')}")
    stack.provoker_url = line
    demo_port = free_port()
    stack.spawn("demo", [sys.executable, "-m", "labotel.cli", "demo",
                         "--address", f"127.0.0.1:{demo_port}"])
    stack.demo_url = f"http://127.0.0.1:{demo_port}"
    wait_for(lambda: urllib.request.urlopen(f"{stack.demo_url}/healthz", timeout=2).status == 200,
             30, "the demo to answer /healthz")


def _start_alertmanager(stack: Stack) -> None:
    config = stack.workdir / "alertmanager.yml"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "ALERT_WEBHOOK_URL": f"{stack.webhook.url}/alerts",
           "SMTP_SMARTHOST": f"127.0.0.1:{stack.mail.port}", "SMTP_REQUIRE_TLS": "false",
           "ALERT_EMAIL_TO": EMAIL_TO,
           "ALERTMANAGER_TEMPLATES": str(COMPOSE / "alertmanager" / "templates")}
    subprocess.run(["sh", str(COMPOSE / "alertmanager" / "render-config.sh"),
                    str(COMPOSE / "alertmanager" / "alertmanager.yml.in"), str(config)],
                   env=env, check=True, timeout=30)
    rendered = yaml.safe_load(config.read_text())
    for route in [rendered["route"], *rendered["route"].get("routes", [])]:
        route.update(group_wait="1s", group_interval="2s")  # seconds, not minutes, in tests
    config.write_text(yaml.safe_dump(rendered, sort_keys=False))
    port = free_port()
    stack.spawn("alertmanager", [
        ALERTMANAGER_BIN, f"--config.file={config}", f"--storage.path={stack.workdir / 'am'}",
        f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="])
    stack.alertmanager_url = f"http://127.0.0.1:{port}"
    wait_for(lambda: urllib.request.urlopen(f"{stack.alertmanager_url}/-/ready",
                                            timeout=2).status == 200,
             30, "Alertmanager to be ready")


def _start_prometheus(stack: Stack) -> None:
    config = yaml.safe_load((COMPOSE / "prometheus" / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(COMPOSE / "prometheus" / pattern)
                            for pattern in config["rule_files"]]
    am_host = urllib.parse.urlsplit(stack.alertmanager_url).netloc
    config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] = [am_host]
    config["scrape_configs"] = [
        {"job_name": "provoker", "static_configs": [
            {"targets": [urllib.parse.urlsplit(stack.provoker_url).netloc]}]},
        {"job_name": "labend", "static_configs": [
            {"targets": [urllib.parse.urlsplit(stack.demo_url).netloc]}]},
    ]
    path = stack.workdir / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    stack.spawn("prometheus", [
        PROMETHEUS_BIN, f"--config.file={path}", f"--storage.tsdb.path={stack.workdir / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}"])
    stack.prometheus_url = f"http://127.0.0.1:{port}"
    wait_for(lambda: urllib.request.urlopen(f"{stack.prometheus_url}/-/ready",
                                            timeout=2).status == 200,
             30, "Prometheus to be ready")
    wait_for(lambda: len(stack.query("up == 1")) == 2, 30, "both targets to be scraped")


_shared: Stack | None = None


def shared(config) -> Stack:
    """The session's stack: started by the first test that needs it, stopped at the end."""
    global _shared
    if _shared is None:
        _shared = start()
        config.add_cleanup(_stop_shared)
    return _shared


def _stop_shared() -> None:
    global _shared
    if _shared is not None:
        _shared.stop()
        _shared = None
