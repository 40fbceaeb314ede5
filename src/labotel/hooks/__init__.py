"""One layer of hooks on the threading, queue and asyncio primitives, shared by every
feature that needs to see synchronisation: the race detector (happens-before edges) and
the contention profiler (who waited, and who made them wait).

Each primitive is patched once (``patches.py``), whatever the number of subscribers, and
the patches undo themselves when the last subscriber leaves. Two kinds of subscriber:

- *edges* (the race detector) hear about every release and every acquire, so they must
  be cheap;
- *waits* (the contention profiler) hear only about acquires that could not take the lock
  at once and about calls that blocked (``Condition.wait``, ``Thread.join``, a blocking
  ``SimpleQueue.get``, an awaited asyncio future). An uncontended acquire costs them
  nothing but one failed-or-not ``acquire(False)``.

Either can be on alone. A subscriber that raises is told (``failed()``) and the primitive
goes ahead: the application never sees the hook's error.
"""

from labotel.hooks.layer import adopted_locks, subscribe, unsubscribe

__all__ = ["adopted_locks", "subscribe", "unsubscribe"]
