"""Which components a monitor runs, in start order (stopped in reverse)."""

from __future__ import annotations

import logging

from labotel.component import Component
from labotel.config import Settings


def default_components(settings: Settings) -> list[Component]:
    from labotel.profile.component import ProfilingComponent
    from labotel.runtime.aio import AsyncioCollector
    from labotel.runtime.gc import GCCollector
    from labotel.runtime.heap import HeapCollector
    from labotel.runtime.process import ProcessCollector
    from labotel.runtime.threads import ThreadCollector

    components: list[Component] = []
    if settings.runtime_metrics:
        components += [ProcessCollector(), HeapCollector(), GCCollector(), ThreadCollector(),
                       AsyncioCollector()]
    components.append(ProfilingComponent())
    if settings.leak_detection:
        from labotel.detect.memory import MemoryLeakDetector
        from labotel.detect.threads import ConcurrencyLeakDetector

        components += [MemoryLeakDetector(), ConcurrencyLeakDetector()]
    if settings.loop_block_detection:
        from labotel.detect.loop_blocked import BlockedLoopDetector

        components.append(BlockedLoopDetector())
    # last: the other components' own locks stay plain
    if settings.contention_profiling:
        from labotel.profile.contention import ContentionProfiling

        components.append(ContentionProfiling())
    if settings.race_detection:
        from labotel.detect.race_component import RaceDetection

        components.append(RaceDetection())
    elif settings.race_instrument:
        logging.getLogger(__name__).warning(
            "labotel: race_instrument=%r is ignored because race_detection is off "
            "(set race_detection=True / LABOTEL_RACE_DETECTION=1)", settings.race_instrument)
    return components
