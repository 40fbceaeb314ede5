"""Who listens right now: read on every hooked call, written only by ``layer``.

``edges`` is the happens-before subscriber (or None), ``waits`` the wait subscriber (or
None); ``primitives`` keeps a copy of both as module globals for its lock methods.
``generation`` changes in a forked child, where marks left by the parent's threads
(``waiting`` lists on locks) describe threads that do not exist.
"""

from __future__ import annotations

import threading
import time
from typing import Any

edges: Any = None
waits: Any = None
generation = 0
clock = time.perf_counter_ns
# Per thread: ``inside`` is set while a hooked call that blocks (Condition.wait, join) is
# waiting, so the lock it takes again inside is not counted as a second block; ``busy``
# while a subscriber runs, so its own work is never recorded.
local = threading.local()
