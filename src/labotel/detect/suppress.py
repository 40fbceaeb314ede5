"""Race suppressions, like ThreadSanitizer's: ``race_suppressions`` patterns and the
``# labotel: ignore-race`` comment (``detect.rewrite`` marks the line's sites).

A pattern is a shell-style glob (``fnmatch``) matched against, for each of the two
accesses of a race: the resource (``Account.balance#1a2b``, ``myapp.cache.hits``), the
innermost application function (``Cache.__setitem__`` and with its module's file,
``cachetools/__init__.py``), and its ``file:line`` (the full path, or any path suffix:
``cachetools/__init__.py:92``). One match on either access suppresses the race.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

from labotel.detect.shadow import FRAMES
from labotel.profile.symbols import qualname

SITE = 7  # where instrumented code stores its site in an access record
IGNORED = 4  # the site's "ignored by comment" flag


def parse(text: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (text or "").split(",") if part.strip())


class Suppressions:
    def __init__(self, patterns: Iterable[str]):
        self.patterns = tuple(patterns)

    def suppressed(self, resource: str, *accesses: tuple) -> bool:
        for access in accesses:
            if len(access) > SITE and access[SITE] is not None and access[SITE][IGNORED]:
                return True
        if not self.patterns:
            return False
        candidates = [resource]
        for access in accesses:
            for code, line in access[FRAMES][:1]:
                path = code.co_filename.replace("\\", "/")
                candidates += [qualname(code), code.co_name, path, f"{path}:{line}"]
                parts = path.split("/")
                candidates += [f"{'/'.join(parts[i:])}:{line}" for i in range(1, len(parts))]
        return any(fnmatch.fnmatchcase(candidate, pattern)
                   for pattern in self.patterns for candidate in candidates)
