"""One layer of hooks on the threading, queue and asyncio primitives, shared by every
feature that needs to see synchronisation: the race detector (happens-before edges) and
the contention profiler (who waited, and who made them wait).

Each primitive is patched once (``patches.py``), whatever the number of subscribers, and
the patches undo themselves when the last subscriber leaves. Two kinds of subscriber:

- *edges* (the race detector) hear about every release and every acquire, so they must
  be cheap;
- *waits* (the contention profiler) hear only about acquires that could not take the lock
  at once, releases of a lock others wait for, and calls that blocked
  (``Condition.wait``, ``Thread.join``, a blocking ``SimpleQueue.get``, asyncio waits). An
  uncontended acquire costs them nothing but one failed-or-not ``acquire(False)``. A
  waits subscriber has a ``rate_ns``: releases are sampled by it before it is called.

Either can be on alone. A subscriber that raises is told (``failed()``) and the primitive
goes ahead: the application never sees the hook's error.
"""

from labotel.hooks.layer import adopted_locks, subscribe, unsubscribe

__all__ = ["adopted_locks", "subscribe", "unsubscribe"]
