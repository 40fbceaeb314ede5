"""collector/otel-collector.yaml checked the way the Collector itself would check it.

No otelcol-contrib binary can run here (it ships as a container image), so this test
applies the Collector's own config rules: every component a pipeline names is defined,
every component type exists in the contrib distribution under its current name (not a
deprecated alias or a removed component), connectors are used on both sides with a
supported signal pair, memory_limiter runs first, and OTLP listens on all interfaces.
With Docker: docker run --rm -v "$PWD/collector:/cfg" \
    otel/opentelemetry-collector-contrib:0.159.0 validate --config=/cfg/otel-collector.yaml
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIG_PATH = ROOT / "collector" / "otel-collector.yaml"
KINDS = ("receivers", "processors", "exporters", "connectors", "extensions")

# Current component types of the otelcol-contrib distribution (v0.159.0 manifest), limited
# to the ones whose current name was checked against the component's metadata.yaml. Names
# follow the snake_case convention adopted from v0.144 on; the old spellings are
# deprecated aliases (DEPRECATED below).
CONTRIB = {
    "receivers": {"otlp", "prometheus", "jaeger", "zipkin", "nop"},
    "processors": {"memory_limiter", "batch", "resource_detection", "k8s_attributes",
                   "metrics_transform"},
    "exporters": {"otlp_grpc", "otlp_http", "prometheus", "prometheus_remote_write",
                  "load_balancing", "debug", "nop"},
    "connectors": {"span_metrics", "forward"},
    "extensions": {"health_check", "pprof", "zpages"},
}
DEPRECATED = {  # old type -> what to write instead
    ("exporters", "otlp"): "otlp_grpc", ("exporters", "otlphttp"): "otlp_http",
    ("exporters", "prometheusremotewrite"): "prometheus_remote_write",
    ("exporters", "loadbalancing"): "load_balancing",
    ("exporters", "logging"): "debug (logging was removed)",
    ("exporters", "jaeger"): "otlp_grpc to Jaeger's OTLP port (jaeger was removed)",
    ("processors", "resourcedetection"): "resource_detection",
    ("processors", "k8sattributes"): "k8s_attributes",
    ("processors", "metricstransform"): "metrics_transform",
    ("processors", "spanmetrics"): "the span_metrics connector (processor removed)",
    ("connectors", "spanmetrics"): "span_metrics",
    ("connectors", "servicegraph"): "service_graph",
}
# Signal pairs (exporter side -> receiver side) each connector supports.
CONNECTOR_SIGNALS = {"span_metrics": {("traces", "metrics")},
                     "forward": {(s, s) for s in ("traces", "metrics", "logs")}}


def component_type(component_id: str) -> str:
    return component_id.split("/", 1)[0]


def pipeline_signal(pipeline_id: str) -> str:
    return pipeline_id.split("/", 1)[0]


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CONFIG_PATH.read_text())


def test_every_component_named_in_a_pipeline_is_defined(config):
    service = config["service"]
    for extension in service.get("extensions", []):
        assert extension in (config.get("extensions") or {}), f"extension {extension} undefined"
    for name, pipeline in service["pipelines"].items():
        assert pipeline_signal(name) in ("traces", "metrics", "logs"), name
        assert pipeline.get("receivers") and pipeline.get("exporters"), name
        for role, kinds in (("receivers", ("receivers", "connectors")),
                            ("processors", ("processors",)),
                            ("exporters", ("exporters", "connectors"))):
            for component in pipeline.get(role, []):
                assert any(component in (config.get(kind) or {}) for kind in kinds), \
                    f"pipeline {name}: {role[:-1]} {component} is not defined"


def test_every_defined_component_is_used(config):
    service = config["service"]
    used = set(service.get("extensions", []))
    for pipeline in service["pipelines"].values():
        for role in ("receivers", "processors", "exporters"):
            used.update(pipeline.get(role, []))
    for kind in KINDS:
        for component in config.get(kind) or {}:
            assert component in used, f"{kind[:-1]} {component} is defined but never used"


def test_component_types_are_current_contrib_names(config):
    for kind in KINDS:
        for component in config.get(kind) or {}:
            kind_type = (kind, component_type(component))
            assert kind_type not in DEPRECATED, \
                f"{kind[:-1]} {component}: deprecated, use {DEPRECATED[kind_type]}"
            assert component_type(component) in CONTRIB[kind], \
                f"{kind[:-1]} {component}: not a component of otelcol-contrib"


def test_connectors_are_used_on_both_sides_with_supported_signals(config):
    pipelines = config["service"]["pipelines"]
    for connector in config.get("connectors") or {}:
        fed = {pipeline_signal(n) for n, p in pipelines.items() if connector in p["exporters"]}
        feeding = {pipeline_signal(n) for n, p in pipelines.items()
                   if connector in p["receivers"]}
        assert fed, f"connector {connector} is not an exporter of any pipeline"
        assert feeding, f"connector {connector} is not a receiver of any pipeline"
        supported = CONNECTOR_SIGNALS[component_type(connector)]
        for pair in ((a, b) for a in fed for b in feeding):
            assert pair in supported, f"connector {connector} cannot connect {pair}"


def test_memory_limiter_runs_first_and_batch_last(config):
    for name, pipeline in config["service"]["pipelines"].items():
        processors = pipeline.get("processors", [])
        assert processors and component_type(processors[0]) == "memory_limiter", name
        assert component_type(processors[-1]) == "batch", name


def test_otlp_listens_on_all_interfaces_on_the_standard_ports(config):
    protocols = config["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"] == "0.0.0.0:4317"
    assert protocols["http"]["endpoint"] == "0.0.0.0:4318"


def test_traces_reach_jaeger_and_metrics_reach_prometheus(config):
    pipelines = config["service"]["pipelines"]
    traces = pipelines["traces"]["exporters"]
    jaeger = [e for e in traces if component_type(e) == "otlp_grpc"]
    assert jaeger and config["exporters"][jaeger[0]]["endpoint"] == "jaeger:4317"
    assert "span_metrics" in traces
    assert "prometheus" in pipelines["metrics"]["exporters"]
    assert "span_metrics" in pipelines["metrics"]["receivers"]


def test_ports_agree_with_prometheus_and_compose(config):
    """The ports the collector serves are the ones Prometheus scrapes and Compose opens."""
    prometheus = yaml.safe_load((ROOT / "compose" / "prometheus" / "prometheus.yml").read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"][0]
               for job in prometheus["scrape_configs"]}
    exporter_port = config["exporters"]["prometheus"]["endpoint"].rsplit(":", 1)[1]
    assert targets["otel-collector"] == f"otel-collector:{exporter_port}"
    telemetry = config["service"]["telemetry"]["metrics"]["readers"][0]["pull"]["exporter"]
    assert targets["otel-collector-internal"] == \
        f"otel-collector:{telemetry['prometheus']['port']}"
    assert telemetry["prometheus"]["host"] == "0.0.0.0"
    compose = yaml.safe_load((ROOT / "compose" / "docker-compose.yml").read_text())
    collector = compose["services"]["otel-collector"]
    mounted = [v for v in collector["volumes"] if "otel-collector.yaml" in v]
    assert mounted, "compose does not mount collector/otel-collector.yaml"
    health = config["extensions"]["health_check"]["endpoint"].rsplit(":", 1)[1]
    assert health == "13133"


def mutated(config: dict, change) -> dict:
    copy = yaml.safe_load(yaml.safe_dump(config))
    change(copy)
    return copy


def rename_exporter(config: dict, old: str, new: str) -> None:
    config["exporters"][new] = config["exporters"].pop(old)
    for pipeline in config["service"]["pipelines"].values():
        pipeline["exporters"] = [new if e == old else e for e in pipeline["exporters"]]


@pytest.mark.parametrize(("check", "change"), [
    (test_every_component_named_in_a_pipeline_is_defined,
     lambda c: c["service"]["pipelines"]["traces"]["processors"].append("tail_sampling")),
    (test_every_defined_component_is_used, lambda c: c["exporters"].update({"debug/x": {}})),
    (test_component_types_are_current_contrib_names,
     lambda c: rename_exporter(c, "otlp_grpc/jaeger", "otlp/jaeger")),
    (test_component_types_are_current_contrib_names,
     lambda c: rename_exporter(c, "debug", "logging")),
    (test_connectors_are_used_on_both_sides_with_supported_signals,
     lambda c: c["service"]["pipelines"]["metrics"]["receivers"].remove("span_metrics")),
    (test_memory_limiter_runs_first_and_batch_last,
     lambda c: c["service"]["pipelines"]["logs"]["processors"].reverse()),
    (test_otlp_listens_on_all_interfaces_on_the_standard_ports,
     lambda c: c["receivers"]["otlp"]["protocols"]["grpc"].update(endpoint="localhost:4317")),
], ids=["undefined", "unused", "deprecated-otlp", "removed-logging", "one-sided-connector",
        "limiter-not-first", "loopback-otlp"])
def test_the_checks_catch_broken_configs(config, check, change):
    check(config)  # the real config passes...
    with pytest.raises(AssertionError):
        check(mutated(config, change))  # ...and each typical mistake is caught
