"""One ``Settings`` dataclass: keyword options override ``LABOTEL_*`` variables,
which override the standard ``OTEL_*`` variables, which override the defaults.

Every option ``name`` is read from ``LABOTEL_<NAME>``; an unknown option or a value
that does not parse raises ``ValueError`` naming the option.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from labotel.digits import ascii_digits

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
EXPORTERS = ("prometheus", "otlp", "console", "none")
PROFILE_BACKENDS = ("auto", "py-spy", "in-process")


def _option(default: Any, doc: str, *, otel_env: str | None = None, minimum: float | None = None):
    return dataclasses.field(
        default=default, metadata={"doc": doc, "otel_env": otel_env, "minimum": minimum}
    )


@dataclasses.dataclass(frozen=True)
class Settings:
    # --- identity and export ---------------------------------------------------------
    service_name: str | None = _option(
        None, "service.name resource attribute (default: OTEL_SERVICE_NAME, else the script name)",
        otel_env="OTEL_SERVICE_NAME")
    admin_address: str | None = _option(
        "127.0.0.1:6060", "host:port of the debug server; empty disables it")
    admin_token: str | None = _option(
        None, "bearer token required by the debug server (required off loopback)")
    admin_allow_insecure: bool = _option(
        False, "allow binding the debug server off loopback without a token")
    admin_header_timeout: float = _option(
        10.0, "seconds a debug-server client has to send a request line and headers, from "
        "their first byte (then 408, connection closed)", minimum=0.01)
    admin_body_timeout: float = _option(
        30.0, "seconds a debug-server client has to send a request body once its headers are "
        "in (then 408, connection closed)", minimum=0.01)
    admin_idle_timeout: float = _option(
        120.0, "seconds a debug-server connection may wait for its first or next request "
        "before it is closed", minimum=0.01)
    admin_write_timeout: float = _option(
        30.0, "seconds from reading a request to having written its response (a profile's "
        "?seconds= comes on top, as in Go); a client that reads slower is disconnected",
        minimum=0.01)
    admin_max_connections: int = _option(
        128, "open debug-server connections at most; at the cap a new one replaces an idle "
        "one (the oldest that never sent a request first), or is answered 503 with "
        "Retry-After", minimum=1)
    admin_max_concurrent_requests: int = _option(
        16, "requests the debug server works on at once (one thread each); more are answered "
        "503 with Retry-After", minimum=1)
    admin_max_request_line: int = _option(
        8192, "bytes in a request line (method, target, version); longer is answered 414",
        minimum=64)
    admin_max_header_bytes: int = _option(
        16384, "bytes in a request line plus headers; more is answered 431", minimum=256)
    admin_max_body_bytes: int = _option(
        1 << 20, "bytes in a request body (Content-Length); more is answered 413 (chunked "
        "bodies get 411)", minimum=0)
    metrics_exporter: str | None = _option(
        None, "comma list of prometheus, otlp, console, none "
        "(default: prometheus, plus otlp when OTEL_EXPORTER_OTLP_ENDPOINT is set)",
        otel_env="OTEL_METRICS_EXPORTER")
    traces_exporter: str | None = _option(
        None, "comma list of otlp, console, none "
        "(default: otlp when OTEL_EXPORTER_OTLP_ENDPOINT is set, else none)",
        otel_env="OTEL_TRACES_EXPORTER")
    otlp_endpoint: str | None = _option(
        None, "OTLP endpoint (default: OTEL_EXPORTER_OTLP_ENDPOINT)",
        otel_env="OTEL_EXPORTER_OTLP_ENDPOINT")
    otlp_protocol: str | None = _option(
        None, "grpc or http/protobuf (default: OTEL_EXPORTER_OTLP_PROTOCOL, else grpc)",
        otel_env="OTEL_EXPORTER_OTLP_PROTOCOL")
    metric_export_interval: float = _option(
        10.0, "seconds between OTLP/console metric pushes", minimum=0.1)
    shutdown_timeout: float = _option(
        5.0, "seconds labotel.shutdown() waits for the final span and metric exports; what "
        "is still unsent then is dropped", minimum=0)
    detection_buffer_size: int = _option(
        256, "detections kept for /admin/monitoring/detections", minimum=1)
    # --- runtime collectors ----------------------------------------------------------
    runtime_metrics: bool = _option(True, "register the runtime collectors")
    loop_lag_interval: float = _option(
        0.5, "seconds between event-loop lag probes on each running loop", minimum=0.01)
    loop_block_detection: bool = _option(
        True, "report an asyncio loop that one callback or task step keeps busy for "
        "loop_block_threshold or longer (detection kind loop_blocked)")
    loop_block_threshold: float = _option(
        0.1, "seconds one callback may hold an event loop before it is reported as blocked "
        "(asyncio debug mode's slow_callback_duration)", minimum=0.01)
    # --- profiling -------------------------------------------------------------------
    heap_profiling: bool = _option(
        False, "start tracemalloc at start() so /debug/pprof/heap works without ?seconds")
    heap_profile_frames: int = _option(
        16, "frames tracemalloc keeps per allocation when heap profiling is on", minimum=1)
    profile_max_seconds: int = _option(
        300, "largest ?seconds= accepted by the profiling endpoints", minimum=1)
    profile_rate_hz: int = _option(100, "CPU/wall sampler frequency", minimum=1)
    profile_backend: str = _option(
        "auto", "who takes CPU/wall profiles: auto (py-spy when installed, `labotel[pyspy]`, "
        "and allowed to trace this process, else the in-process sampler), py-spy (only "
        "py-spy; a profile it cannot take fails with its reason) or in-process")
    profile_cpu_budget: float = _option(
        0.01, "share of one core the CPU and wall profiles' sampling may use, the in-process "
        "sampler's thread or the py-spy process; above it, they sample less often (the "
        "profile's period and comment say the rate used), and py-spy, where even 1 Hz would "
        "pass it, is not used", minimum=0.0001)
    contention_profiling: bool = _option(
        False, "record lock and wait contention for /debug/pprof/mutex and /debug/pprof/block")
    contention_profile_rate: int = _option(
        1_000_000, "like Go's SetBlockProfileRate, in ns: every wait this long or longer is "
        "kept, a shorter one with probability wait/rate (counts scaled to stay unbiased); "
        "1 keeps every wait", minimum=1)
    contention_profile_max_bytes: int = _option(
        8 * 1024 * 1024, "memory for the mutex/block profiles' frames and stacks; past it, "
        "new stacks are merged into one overflow stack", minimum=4096)
    # --- race detection --------------------------------------------------------------
    race_detection: bool = _option(False, "enable the happens-before race detector")
    race_max_resources: int = _option(
        100_000, "resources whose shadow state is kept (least recently used forgotten)",
        minimum=1)
    race_max_bytes: int = _option(
        12 * 1024 * 1024, "bytes of shadow state and annotation tokens kept (least recently "
        "used forgotten first)", minimum=65536)
    race_max_threads: int = _option(
        1024, "exited threads whose accesses are still checked (oldest exit forgotten first)",
        minimum=1)
    race_stack_depth: int = _option(
        8, "frames kept per recorded access for the race report's stack traces", minimum=1)
    race_adopt_locks: bool = _option(
        True, "at start, wrap plain module-level locks of the application's own modules "
        "(created before start) so the race detector and the contention profiler see them")
    race_instrument: str | None = _option(
        None, "comma list of module/package name prefixes (myapp,cachetools) whose code is "
        "instrumented at import for race detection without annotations (needs "
        "race_detection; only modules imported after start())")
    race_sample_floor: float = _option(
        0.01, "share of a hot instrumented function's calls whose accesses are recorded "
        "(every call while it is cold: its first 1000; then 10%, down to this); 1 records "
        "every call", minimum=0.0001)
    race_suppressions: str | None = _option(
        None, "comma list of glob patterns; a race whose resource, function or file:line "
        "matches one is counted, not reported")
    # --- leak detection --------------------------------------------------------------
    leak_detection: bool = _option(True, "run the memory/thread/task leak detectors")
    leak_sample_interval: float = _option(
        5.0, "seconds between leak-detector samples", minimum=0.05)
    leak_window: float = _option(
        60.0, "seconds of samples a trend is judged over", minimum=0.5)
    memory_limit_bytes: int = _option(
        500 * 1024 * 1024, "absolute heap/RSS size that is reported as a leak", minimum=1)
    memory_leak_min_rate: float = _option(
        64 * 1024.0, "bytes/s of sustained growth below which no leak is suspected", minimum=0)
    leak_attribution_seconds: float = _option(
        20.0, "seconds tracemalloc runs to name the growing allocation sites", minimum=0.1)
    thread_limit: int = _option(1000, "live threads reported as a leak", minimum=1)
    task_limit: int = _option(1000, "live asyncio tasks reported as a leak", minimum=1)
    leak_min_growth: int = _option(
        10, "members a thread/task group (same creation line) must gain within leak_window "
        "before it can be reported as a leak", minimum=1)
    # --- pre-fork servers (gunicorn, multiprocessing) -----------------------------------
    admin_worker_ports: int = _option(
        64, "a forked worker serves the debug server on the first free port of the next N "
        "after admin_address's port (the parent keeps that port); 0: none in workers",
        minimum=0)

    @classmethod
    def load(cls, options: Mapping[str, Any] | None = None,
             environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from ``options`` over ``LABOTEL_*`` over ``OTEL_*`` over defaults."""
        options = dict(options or {})
        env = os.environ if environ is None else environ
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(
                f"unknown labotel option {unknown[0]!r}; known options: {', '.join(sorted(known))}")
        values: dict[str, Any] = {}
        for name, field in known.items():
            if name in options:
                raw, source = options[name], name
            elif f"LABOTEL_{name.upper()}" in env:
                raw, source = env[f"LABOTEL_{name.upper()}"], f"LABOTEL_{name.upper()}"
            elif field.metadata["otel_env"] and field.metadata["otel_env"] in env:
                raw, source = env[field.metadata["otel_env"]], field.metadata["otel_env"]
            else:
                continue
            values[name] = _convert(name, source, raw, field)
        settings: Settings = cls(**values)
        settings._check()
        return settings

    def _check(self) -> None:
        for name in ("metrics_exporter", "traces_exporter"):
            for item in exporter_list(getattr(self, name)):
                if item not in EXPORTERS:
                    raise ValueError(f"{name}: unknown exporter {item!r} "
                                     f"(expected one of {', '.join(EXPORTERS)})")
        if self.admin_address:
            parse_address(self.admin_address)
        if self.profile_backend not in PROFILE_BACKENDS:
            raise ValueError(f"profile_backend: expected one of {', '.join(PROFILE_BACKENDS)}, "
                             f"got {self.profile_backend!r}")
        if self.race_instrument:
            from labotel.detect.import_hook import parse_prefixes

            parse_prefixes(self.race_instrument)
        if not self.race_sample_floor <= 1:
            raise ValueError("race_sample_floor: expected a share between 0.0001 and 1, "
                             f"got {self.race_sample_floor!r}")
        if self.otlp_protocol not in (None, "grpc", "http/protobuf"):
            raise ValueError("otlp_protocol: expected 'grpc' or 'http/protobuf', "
                             f"got {self.otlp_protocol!r}")

    def metrics_exporters(self) -> list[str]:
        if self.metrics_exporter is not None:
            return [e for e in exporter_list(self.metrics_exporter) if e != "none"]
        return ["prometheus", "otlp"] if self.otlp_endpoint else ["prometheus"]

    def traces_exporters(self) -> list[str]:
        if self.traces_exporter is not None:
            return [e for e in exporter_list(self.traces_exporter) if e != "none"]
        return ["otlp"] if self.otlp_endpoint else []


def exporter_list(value: str | None) -> list[str]:
    return [part.strip().lower() for part in (value or "").split(",") if part.strip()]


def parse_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:port`` for IPv6) -> (host, port); ValueError naming the option."""
    host, sep, port = address.rpartition(":")
    if not sep or not ascii_digits(port) or not 0 <= int(port) <= 65535:
        raise ValueError(f"admin_address: expected host:port, got {address!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _convert(name: str, source: str, raw: Any, field: dataclasses.Field) -> Any:
    kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", "")
    value: Any
    try:
        if kind.startswith("bool"):
            value = _to_bool(raw)
        elif kind.startswith("int"):
            if isinstance(raw, bool):
                raise TypeError
            value = int(raw) if not isinstance(raw, float) or raw.is_integer() else None
            if value is None:
                raise TypeError
        elif kind.startswith("float"):
            if isinstance(raw, bool):
                raise TypeError
            value = float(raw)
            if value != value or value in (float("inf"), float("-inf")):
                raise TypeError
        else:  # optional string
            value = None if raw is None else str(raw).strip()
            if value == "" and name in ("admin_address", "admin_token", "service_name"):
                value = None
            return value
    except (TypeError, ValueError):
        raise ValueError(f"{source}: invalid value {raw!r} for option {name!r} ({kind})") from None
    minimum = field.metadata["minimum"]
    if minimum is not None and value < minimum:
        raise ValueError(f"{source}: option {name!r} must be >= {minimum}, got {raw!r}")
    return value


def _to_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(raw)


def describe() -> list[tuple[str, str, str]]:
    """(env var, default, meaning) for every option: the README's configuration table."""
    return [(f"LABOTEL_{f.name.upper()}", repr(f.default), f.metadata["doc"])
            for f in dataclasses.fields(Settings)]


def markdown_table() -> str:
    """The configuration table as Markdown (``labotel config --markdown``)."""
    lines = ["| option / environment variable | default | meaning |", "|---|---|---|"]
    for field in dataclasses.fields(Settings):
        doc = field.metadata["doc"]
        otel = field.metadata["otel_env"]
        if otel:
            doc += f" (also `{otel}`)"
        lines.append(f"| `{field.name}` / `LABOTEL_{field.name.upper()}` | "
                     f"`{field.default!r}` | {doc} |")
    return "\n".join(lines)
