"""The race detector as a labotel component: patches, detector and ``/admin/monitoring/races``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from labotel.component import Component
from labotel.detect import import_hook, race_runtime, races, sync, vectorclock
from labotel.detect.suppress import Suppressions, parse
from labotel.server.http import Request, Response, json_response

if TYPE_CHECKING:
    from labotel.monitor import Monitor


class RaceDetection(Component):
    name = "detect.races"

    def __init__(self) -> None:
        self.detector: races.Detector | None = None
        self.adopted_locks = 0
        self.finder: import_hook.InstrumentingFinder | None = None

    def start(self, monitor: Monitor) -> None:
        settings = monitor.settings
        reporter = monitor.reporter

        def failed() -> None:
            reporter.component_failed(self.name)

        vectorclock.configure(settings.race_max_threads)
        prefixes = import_hook.parse_prefixes(settings.race_instrument)
        self.detector = races.Detector(reporter, failed,
                                       max_resources=settings.race_max_resources,
                                       stack_depth=settings.race_stack_depth,
                                       max_bytes=settings.race_max_bytes,
                                       instrumented=bool(prefixes),
                                       suppressions=Suppressions(
                                           parse(settings.race_suppressions)))
        try:
            self.adopted_locks = sync.install(failed, settings.race_adopt_locks)
        except BaseException:
            self.stop()  # a half-done start must not leave patches behind
            raise
        races.activate(self.detector)
        if prefixes:
            race_runtime.enable(self.detector)
            self.finder = import_hook.install(prefixes, failed)
        self.monitor = monitor
        monitor.footprint.add("race_detector", self.detector.bytes)
        monitor.router.add("/admin/monitoring/races", self._view(monitor))

    def _view(self, monitor: Monitor):
        def races_view(request: Request) -> Response:
            limit = request.int_arg("limit", 100, minimum=1, maximum=10_000)
            reports = monitor.reporter.detections("race_condition")[:limit]
            detector = self.detector
            return json_response({
                "enabled": detector is not None,
                "instrumented_modules": list(self.finder.instrumented)
                if self.finder is not None else [],
                "stats": {**detector.stats(), "adopted_module_locks": self.adopted_locks,
                          "reporter": monitor.reporter.stats()}
                if detector is not None else {},
                "count": len(reports),
                "races": [report.to_dict() for report in reports],
            })

        return races_view

    def stop(self) -> None:
        monitor = getattr(self, "monitor", None)
        if monitor is not None:
            monitor.footprint.remove("race_detector")
        races.activate(None)
        race_runtime.disable()
        import_hook.uninstall()
        self.finder = None
        sync.uninstall()
        self.detector = None

    def after_fork_in_child(self) -> None:
        vectorclock.reinit_after_fork()
        if self.detector is not None:
            self.detector.reinit_after_fork()

