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
    cannot change while it runs); the first call logs each missing one."""
    if _probed:
        return dict(_probed)
    from labotel.compat import cpython, otel

    found = {capability.name: capability for capability in cpython.probe() + otel.probe()}
    _probed.update(found)
    for capability in found.values():
        if not capability.available:
            log.warning("labotel: %s is off: %s (%s)", capability.feature, capability.reason,
                        capability.name)
    return found
