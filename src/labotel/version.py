"""labotel's version: the installed package's metadata, written once in pyproject.toml."""

from __future__ import annotations

from importlib import metadata

try:
    VERSION = metadata.version("labotel")
except metadata.PackageNotFoundError:  # run from a source tree that was never installed
    VERSION = "0+unknown"
