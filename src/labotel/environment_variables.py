"""Every ``LABOTEL_*`` variable, and the ``--labotel_*`` flags of ``opentelemetry-instrument``.

Both are derived from ``labotel.config.Settings``, so a new option appears here by itself:

- ``LABOTEL_<NAME>``: a constant whose value is the variable's name (``LABOTEL_RACE_DETECTION``).
- ``OTEL_labotel_<name>``: the launcher only turns module attributes that start with ``OTEL_``
  into flags (``OTEL_`` stripped, lower-cased), and sets the variable *named like the
  attribute*. The lower-case tail survives its ``OTEL_(PYTHON_)?`` substitution intact, so
  ``--labotel_race_detection=1`` sets ``OTEL_labotel_race_detection=1``, which
  ``labotel.auto`` copies to ``LABOTEL_RACE_DETECTION`` before starting (a flag overrides
  the environment, as the launcher documents for its own flags).

This module is imported by the launcher itself: it must stay cheap and never fail.
"""

from __future__ import annotations

import dataclasses
from collections.abc import MutableMapping

from labotel.config import Settings

#: launcher variable (``OTEL_labotel_<name>``) -> labotel variable (``LABOTEL_<NAME>``)
LAUNCHER_VARIABLES: dict[str, str] = {}
#: every ``LABOTEL_*`` variable, in the order of ``Settings``
VARIABLES: list[str] = []

for _field in dataclasses.fields(Settings):
    _variable = f"LABOTEL_{_field.name.upper()}"
    _launcher = f"OTEL_labotel_{_field.name}"
    globals()[_variable] = _variable
    globals()[_launcher] = _launcher
    VARIABLES.append(_variable)
    LAUNCHER_VARIABLES[_launcher] = _variable
del _field, _variable, _launcher


def apply_launcher_flags(environ: MutableMapping[str, str]) -> dict[str, str]:
    """Copy ``--labotel_*`` flag values (``OTEL_labotel_*``) to ``LABOTEL_*``; returns them."""
    applied = {}
    for launcher, variable in LAUNCHER_VARIABLES.items():
        if launcher in environ:
            environ[variable] = applied[variable] = environ[launcher]
    return applied


def launcher_table() -> str:
    """The README's Markdown table: variable, launcher flag, default."""
    lines = ["| environment variable | `opentelemetry-instrument` flag | default |",
             "|---|---|---|"]
    for field in dataclasses.fields(Settings):
        lines.append(f"| `LABOTEL_{field.name.upper()}` | `--labotel_{field.name}` | "
                     f"`{field.default!r}` |")
    return "\n".join(lines)


__all__ = ["LAUNCHER_VARIABLES", "VARIABLES", "apply_launcher_flags", "launcher_table",
           *VARIABLES, *LAUNCHER_VARIABLES]

if __name__ == "__main__":
    print(launcher_table())
