"""What one debug-server client may cost: timeouts, connection and size caps.

The values come from ``Settings`` (``admin_*`` options, README "The debug server");
the webhook receiver and the tests build their own.
"""

from __future__ import annotations

import dataclasses

from labotel.config import Settings


@dataclasses.dataclass(frozen=True)
class ServerLimits:
    header_timeout: float
    body_timeout: float
    idle_timeout: float
    write_timeout: float
    max_connections: int
    max_concurrent_requests: int
    max_request_line: int
    max_header_bytes: int
    max_body_bytes: int

    @classmethod
    def from_settings(cls, settings: Settings | None = None, **overrides: float) -> ServerLimits:
        """The ``admin_*`` limits of ``settings`` (the defaults when None), ``overrides`` on top."""
        settings = settings or Settings()
        values = {field.name: getattr(settings, "admin_" + field.name)
                  for field in dataclasses.fields(cls)}
        unknown = set(overrides) - set(values)
        if unknown:
            raise ValueError(f"unknown server limit {sorted(unknown)[0]!r}")
        values.update(overrides)
        return cls(**values)
