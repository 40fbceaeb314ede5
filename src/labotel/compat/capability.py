"""One borrowed capability, as the probe at ``start()`` found it."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Capability:
    name: str  # e.g. "otel.add_metric_reader"
    feature: str  # what labotel does with it, i.e. what is off without it
    available: bool
    reason: str = ""  # why it is missing ("" when available)
    checked: bool = True  # False: the part it belongs to is not in use (yet) in this process

    @classmethod
    def check(cls, name: str, feature: str, available: bool, reason: str) -> Capability:
        return cls(name, feature, bool(available), "" if available else reason)

    @classmethod
    def unchecked(cls, name: str, feature: str, why: str) -> Capability:
        return cls(name, feature, False, f"not checked: {why}", checked=False)

    def as_dict(self) -> dict[str, object]:
        return {"available": self.available if self.checked else None, "feature": self.feature,
                **({"reason": self.reason} if self.reason else {})}
