"""The race detector as a labotel component: patches, detector and ``/admin/monitoring/races``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from labotel.compat import python
from labotel.component import Component, Unavailable
from labotel.detect import import_hook, race_runtime, races, sync, vectorclock
from labotel.detect.suppress import Suppressions, parse
from labotel.server.http import Handler, Request, Response, json_response

if TYPE_CHECKING:
    from labotel.context import Context


class RaceDetection(Component):
    name = "detect.races"

    def __init__(self) -> None:
        self.detector: races.Detector | None = None
        self.adopted_locks = 0
        self.context: Context | None = None
        self.finder: import_hook.InstrumentingFinder | None = None

    def start(self, context: Context) -> None:
        if not python.gil_enabled():
            # Never run without the GIL (no free-threaded build was at hand to verify it),
            # and its one detector lock would serialise every recorded access of threads
            # the app runs in parallel: refuse rather than risk the app in an untested mode.
            raise Unavailable("the GIL is disabled (free-threaded build) and the race "
                              "detector is only verified with it on; run Python with "
                              "PYTHON_GIL=1 (or -X gil=1) to use it")
        settings = context.settings
        reporter = context.reporter

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
            race_runtime.enable(self.detector, prefixes, settings.race_sample_floor)
            self.finder = import_hook.install(prefixes, failed)
        self.context = context
        context.footprint.add("race_detector", self.detector.bytes)
        context.add_route("/admin/monitoring/races", self._view(context))

    def _view(self, context: Context) -> Handler:
        def races_view(request: Request) -> Response:
            limit = request.int_arg("limit", 100, minimum=1, maximum=10_000)
            reports = context.reporter.detections("race_condition")[:limit]
            detector = self.detector
            return json_response({
                "enabled": detector is not None,
                "instrumented_modules": list(self.finder.instrumented)
                if self.finder is not None else [],
                "stats": {**detector.stats(), "adopted_module_locks": self.adopted_locks,
                          "reporter": context.reporter.stats()}
                if detector is not None else {},
                "count": len(reports),
                "races": [report.to_dict() for report in reports],
            })

        return races_view

    def stop(self) -> None:
        if self.context is not None:
            self.context.footprint.remove("race_detector")
        races.activate(None)
        race_runtime.disable()
        import_hook.uninstall()
        self.finder = None
        sync.uninstall()
        self.detector = None

