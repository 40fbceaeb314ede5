"""The seam for other people's internals: labotel asks here, the rest never guesses.

- ``python``: what differs between the CPython versions labotel supports;
- ``cpython``: interpreter internals (threading's tables, asyncio's task internals, ...);
- ``otel``: private names of the OpenTelemetry SDK, its exporters and prometheus_client.

Only this package touches a private name of another package
(``tests/unit/test_compat_seam.py`` scans the rest). ``probe()`` runs at ``start()``: each
borrowed capability is checked once; a missing one is logged in one line naming the
feature that is off and why, and listed under ``capabilities`` on ``/admin/monitoring/``.
"""

from __future__ import annotations

import logging

from labotel.compat.capability import Capability

log = logging.getLogger(__name__)
_probed: dict[str, Capability] = {}  # what this process's interpreter and SDK offer


def probe() -> dict[str, Capability]:
    """Every borrowed capability by name, checked on the first call in a process (they
    cannot change while it runs); the first call logs each missing one. Those of OTLP/gRPC
    are checked on the first call after its exporter is imported: importing gRPC only to
    check it would cost every process that exports over HTTP (or not at all) its imports."""
    from labotel.compat import cpython, otel

    if not _probed:
        fresh = cpython.probe() + otel.probe()
    elif any(not capability.checked for capability in _probed.values()):
        fresh = otel.probe_grpc()
    else:
        fresh = []
    for capability in fresh:
        _probed[capability.name] = capability
        if capability.checked and not capability.available:
            log.warning("labotel: %s is off: %s (%s)", capability.feature, capability.reason,
                        capability.name)
    return dict(_probed)
