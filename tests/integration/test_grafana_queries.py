"""Every Grafana panel query, evaluated by the real Prometheus scraping real labotel
processes (a provoker with detections, and the LabEnd demo with its outbox), returns data."""

from __future__ import annotations

import json
import math
import re

import pytest

from tests.integration import alerting_stack
from tests.integration.alerting_stack import wait_for

pytestmark = pytest.mark.skipif(
    bool(alerting_stack.MISSING),
    reason=f"not installed: {alerting_stack.MISSING} (Debian packages; .ci/run installs them)")

DASHBOARD = alerting_stack.COMPOSE / "grafana" / "dashboards" / "labotel.json"
# What Grafana puts in place of its variables: every job and instance, and a rate window
# of four scrape intervals (the stack scrapes every second).
VARIABLES = {"$job": ".+", "$instance": ".+", "$__rate_interval": "4s"}


def panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(f"{panel['title']} [{target['refId']}]", target["expr"])
            for panel in dashboard["panels"] if panel["type"] != "row"
            for target in panel["targets"]]


def substitute(expr: str) -> str:
    for name, value in sorted(VARIABLES.items(), key=lambda item: -len(item[0])):
        expr = expr.replace(name, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr}"
    return expr


@pytest.fixture(scope="module")
def stack(request):
    return alerting_stack.shared(request.config)


@pytest.mark.parametrize(("title", "expr"), panel_queries(), ids=[t for t, _ in panel_queries()])
def test_panel_query_returns_series(stack, title, expr):
    promql = substitute(expr)

    def finite_series():
        return [series for series in stack.query_range(promql, seconds=60)
                if any(math.isfinite(float(value)) for _, value in series["values"])]
    series = wait_for(finite_series, 60, f"data for panel {title!r}: {promql}")
    assert series


def test_every_panel_has_a_legend_built_from_labels_it_returns(stack):
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            wanted = set(re.findall(r"\{\{(\w+)\}\}", target["legendFormat"]))
            series = wait_for(lambda t=target: stack.query(substitute(t["expr"])), 60,
                              f"data for {panel['title']}")
            labels = set().union(*(s["metric"] for s in series))
            assert wanted <= labels, f"{panel['title']}: legend uses {wanted - labels}"


def test_template_variables_list_both_processes(stack):
    jobs = wait_for(lambda: {s["metric"]["job"] for s in stack.query("process_thread_count")}
                    >= {"provoker", "labend"} and
                    {s["metric"]["job"] for s in stack.query("process_thread_count")},
                    30, "both jobs in process_thread_count")
    assert jobs == {"provoker", "labend"}
    dashboard = json.loads(DASHBOARD.read_text())
    queries = {v["name"]: v["definition"] for v in dashboard["templating"]["list"]}
    assert queries["job"] == "label_values(process_thread_count, job)"
