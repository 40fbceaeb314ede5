"""Go's mutex and block profiles: the component that subscribes ``WaitRecorder`` to the
shared primitive hooks, and the two profiles' pprof and ``?debug=1`` forms.

- ``/debug/pprof/mutex``: time threads spent waiting for a ``threading.Lock``/``RLock``,
  charged to the stack that *released* it (Go's ``sync.Mutex`` semantics);
- ``/debug/pprof/block``: time each thread (or asyncio task) spent blocked, charged to the
  waiting stack.

Both are cumulative since ``start()``, with sample types ``contentions/count`` and
``delay/nanoseconds``; ``?seconds=N`` answers the difference over N seconds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from labotel import hooks
from labotel.component import Component
from labotel.profile import text
from labotel.profile.pprof import ProfileBuilder
from labotel.profile.waits import Samples, WaitRecorder, delta

if TYPE_CHECKING:
    from labotel.context import Context

PROFILES = ("block", "mutex")
__all__ = ["PROFILES", "ContentionProfiling", "debug_text", "delta"]


class ContentionProfiling(Component):
    name = "profile.contention"

    def start(self, context: Context) -> None:
        settings = context.settings
        self.recorder = WaitRecorder(
            settings.contention_profile_rate, settings.contention_profile_max_bytes,
            lambda: context.failed(self.name))
        self.adopted_locks = hooks.subscribe(self.name, waits=self.recorder,
                                             adopt=settings.race_adopt_locks)

    def stop(self) -> None:
        hooks.unsubscribe(self.name)

    def after_fork_in_child(self) -> None:
        self.recorder.reset_after_fork()

    def profile(self, name: str, samples: Samples | None = None) -> ProfileBuilder:
        """The ``block`` or ``mutex`` profile: everything so far, or ``samples``."""
        if samples is None:
            samples = self.recorder.snapshot(name)
        return self.recorder.profile(samples)


def debug_text(name: str, builder: ProfileBuilder) -> str:
    """Go's legacy text (``?debug=1``): ``delay count @ addresses``, longest delay first.

    Delays are nanoseconds, so ``cycles/second`` is 1e9; counts and delays are already
    scaled for sampling, so the mutex ``sampling period`` is 1.
    """
    lines = [f"--- {'mutex' if name == 'mutex' else 'contention'}:",
             "cycles/second=1000000000"]
    if name == "mutex":
        lines.append("sampling period=1")
    for (stack, _), (count, delay) in sorted(builder.samples.items(),
                                             key=lambda item: -item[1][1]):
        locations = [builder.locations[i - 1] for i in stack]
        lines.append(f"{delay} {count} {text.stack_key(locations)}")
        lines.extend(text.stack_record(locations))
    return text.tabwrite(lines) + "\n"
