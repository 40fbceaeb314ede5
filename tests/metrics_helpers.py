"""Read a live /metrics page over HTTP (real loopback) into comparable numbers."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

IGNORED_LABELS = {"otel_scope_name", "otel_scope_version", "otel_scope_schema_url"}


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), error.read()


def scrape(base_url: str) -> dict[tuple[str, frozenset], float]:
    """{(sample name, labels without scope labels): value} from ``base_url/metrics``."""
    status, _, body = fetch(base_url + "/metrics")
    assert status == 200, body
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            labels = frozenset((k, v) for k, v in sample.labels.items()
                               if k not in IGNORED_LABELS)
            samples[(sample.name, labels)] = sample.value
    return samples


def value(samples: dict, name: str, default: float | None = None, **labels: str) -> float:
    """The one sample called ``name`` whose labels include ``labels`` (or ``default``)."""
    wanted = set(labels.items())
    matches = [v for (n, ls), v in samples.items() if n == name and wanted <= set(ls)]
    if not matches and default is not None:
        return default
    assert len(matches) == 1, f"{name}{labels}: {len(matches)} matches"
    return matches[0]
