"""Which packages ``pytest --race`` instruments: named by the user, or the project's own."""

from __future__ import annotations

import pathlib
import re
from collections.abc import Iterable

# top-level directories that hold tests, not the code under test
TEST_DIRS = frozenset({"test", "tests", "testing"})


def split_names(values: Iterable[str]) -> list[str]:
    """Values that each hold names separated by commas or spaces, as one list."""
    names: list[str] = []
    for value in values:
        for name in re.split(r"[,\s]+", value.strip()):
            if name and name not in names:
                names.append(name)
    return names


def parse_packages(option: str, values: Iterable[str]) -> list[str]:
    """``PKG[,PKG]`` values (commas or spaces) as a list; ValueError naming ``option``."""
    names = split_names(values)
    for name in names:
        if not all(part.isidentifier() for part in name.split(".")):
            raise ValueError(f"{option}: {name!r} is not a package name")
    return names


def discover_packages(rootdir: pathlib.Path, testpaths: Iterable[str] = ()) -> list[str]:
    """The top-level packages in ``rootdir`` and ``rootdir/src``: directories with an
    ``__init__.py`` whose name is an identifier, without test directories (``tests``,
    ``test``, ``testing``, ``test_*`` and the ini's ``testpaths``)."""
    excluded = {(rootdir / path).resolve() for path in testpaths}
    found: set[str] = set()
    for base in (rootdir, rootdir / "src"):
        if not base.is_dir():
            continue
        for child in base.iterdir():
            name = child.name
            if (name.isidentifier() and name not in TEST_DIRS and not name.startswith("test_")
                    and (child / "__init__.py").is_file()
                    and child.resolve() not in excluded):
                found.add(name)
    return sorted(found)
