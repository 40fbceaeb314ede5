"""``/debug/pprof/*``: paths, parameters, content types and errors as Go's net/http/pprof.

Differences from Go, all on the strict side: a malformed, non-positive or too large
``seconds`` is a 400 (Go silently falls back to 30 s on ``/profile``), and a malformed
``debug``/``gc`` is a 400 (Go reads it as 0). Errors are plain text with
``X-Go-Pprof: 1`` so ``go tool pprof`` prints the message instead of a parse failure.
"""

from __future__ import annotations

import functools
import html
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from labotel.digits import ascii_digits
from labotel.profile import contention, cpu, heap, stacks, symbols
from labotel.profile.pprof import ProfileBuilder
from labotel.runtime import aio
from labotel.server.http import HTTPError, Request, Response

if TYPE_CHECKING:
    from labotel.profile.component import ProfilingComponent

PREFIX = "/debug/pprof/"
DESCRIPTIONS = {
    "block": "Stack traces that led to blocking on synchronization primitives (locks, "
             "conditions, events, queues, joins, futures, asyncio waits). Needs "
             "contention_profiling on",
    "cmdline": "The command line invocation of the current program",
    "goroutine": "Stack traces of all current threads and asyncio tasks",
    "heap": "Live Python allocations by allocation stack (tracemalloc). Needs heap_profiling "
            "on, or the seconds GET parameter to trace for that long. You can specify the gc "
            "GET parameter to run GC before taking the heap sample.",
    "mutex": "Stack traces of holders of contended locks. Needs contention_profiling on",
    "profile": "CPU profile. You can specify the duration in the seconds GET parameter. After "
               "you get the profile file, use the go tool pprof command to investigate the "
               "profile.",
    "threadcreate": "Stack traces that led to the creation of the live threads",
    "wall": "Wall-clock profile: every thread, blocked or running, sampled alike. You can "
            "specify the duration in the seconds GET parameter.",
}
NOT_IN_PYTHON = {
    "allocs": "tracemalloc records live allocations only; use heap",
    "trace": "there is no Go execution tracer in Python",
}
MAX_SYMBOL_ADDRESSES = 100_000  # per /symbol request (a 1 MiB body holds about 80,000)
MAX_ADDRESS_CHARS = 24
Handler = Callable[[Request], Response]


def _count_cell(count: int | None) -> str:
    return "-" if count is None else str(count)  # None: not counted (see heap.stack_count)


def pprof_error(status: int, message: str) -> HTTPError:
    return HTTPError(status, message, {"X-Go-Pprof": "1", "X-Content-Type-Options": "nosniff"})


def binary(name: str, data: bytes) -> Response:
    return Response(200, data, "application/octet-stream", {
        "Content-Disposition": f'attachment; filename="{name}"',
        "X-Content-Type-Options": "nosniff"})


def plain(text: str) -> Response:
    return Response(200, text.encode(), "text/plain; charset=utf-8",
                    {"X-Content-Type-Options": "nosniff"})


def integer(request: Request, name: str) -> int:
    raw = request.arg(name, "") or ""
    try:
        return int(raw) if raw else 0
    except ValueError:
        raise pprof_error(400, f'invalid value for "{name}" - must be an integer') from None


def seconds(request: Request, maximum: int, default: int | None) -> int | None:
    raw = request.arg("seconds")
    if raw is None or raw == "":
        return None if default is None else min(default, maximum)
    # as the server's write deadline reads it (int() also takes "１" or " 1")
    value = int(raw) if ascii_digits(raw) else 0
    if value <= 0:
        raise pprof_error(400, 'invalid value for "seconds" - must be a positive integer')
    if value > maximum:
        raise pprof_error(400, f'invalid value for "seconds" - must be at most {maximum} '
                               "(profile_max_seconds)")
    return value


class PprofRoutes:
    def __init__(self, component: ProfilingComponent):
        self.component = component
        self.settings = component.context.settings
        self.handlers: dict[str, Handler] = {
            "": self.index, "cmdline": self.cmdline, "profile": self.profile,
            "wall": self.wall, "symbol": self.symbol, "heap": self.heap,
            "goroutine": self.goroutine, "threadcreate": self.threadcreate,
            "block": self.block, "mutex": self.mutex,
        }

    def register(self) -> None:
        add = self.component.context.add_route
        add("/debug/pprof", self.redirect)
        for name, handler in self.handlers.items():
            methods = ("GET", "HEAD", "POST") if name == "symbol" else ("GET", "HEAD")
            add(PREFIX + name, self.guarded(name, handler), methods=methods)
        add(PREFIX, self.unknown, prefix=True)

    def guarded(self, name: str, handler: Handler) -> Handler:
        @functools.wraps(handler)
        def run(request: Request) -> Response:
            try:
                return handler(request)
            except HTTPError:
                raise
            except Exception as error:
                self.component.context.failed(f"profile.{name or 'index'}")
                raise pprof_error(500, f"Could not write the {name} profile: {error}") from None
        return run

    # -- Go's Index and its fallbacks ------------------------------------------------
    def redirect(self, _: Request) -> Response:
        return Response(301, b"", "text/html; charset=utf-8", {"Location": PREFIX})

    def unknown(self, request: Request) -> Response:
        name = request.path[len(PREFIX):]
        if name in NOT_IN_PYTHON:
            raise pprof_error(404, f"Unknown profile: {name} ({NOT_IN_PYTHON[name]})")
        raise pprof_error(404, "Unknown profile")

    def index(self, _: Request) -> Response:
        counts = self._counts()
        rows = "".join(f"<tr><td>{_count_cell(counts.get(name, 0))}</td><td><a "
                       f"href='{name}?debug=1'>{html.escape(name)}</a></td></tr>\n"
                       for name in sorted(DESCRIPTIONS))
        items = "".join(f"<li><div class=profile-name>{html.escape(name)}: </div> "
                        f"{html.escape(text)}</li>\n"
                        for name, text in sorted(DESCRIPTIONS.items()))
        page = ("<html>\n<head>\n<title>/debug/pprof/</title>\n<style>\n.profile-name{\n"
                "\tdisplay:inline-block;\n\twidth:6rem;\n}\n</style>\n</head>\n<body>\n"
                "/debug/pprof/<br>\n<br>\nTypes of profiles available:\n<table>\n"
                "<thead><td>Count</td><td>Profile</td></thead>\n" + rows +
                "</table>\n<a href=\"goroutine?debug=2\">full goroutine stack dump</a>\n<br>\n"
                "<p>\nProfile Descriptions:\n<ul>\n" + items + "</ul>\n</p>\n" +
                self._backend_note() + "</body>\n</html>")
        return Response(200, page.encode(), "text/html; charset=utf-8",
                        {"X-Content-Type-Options": "nosniff"})

    def _backend_note(self) -> str:
        """Which sampler takes profile and wall (py-spy or in-process), and took the last."""
        text = html.escape(self.component.backends.describe())
        return f"<p>\nCPU and wall profiles are taken by: <span id=backend>{text}</span>\n</p>\n"

    def _counts(self) -> dict[str, int | None]:
        threads = threading.active_count()
        tasks = sum(len(t) for t in aio.all_tasks_by_loop().values())
        counts: dict[str, int | None] = {"goroutine": threads + tasks, "threadcreate": threads}
        if tracemalloc.is_tracing():
            counts["heap"] = heap.stack_count()
        profiler = self._contention()
        if profiler is not None:
            for name in contention.PROFILES:
                counts[name] = profiler.recorder.records(name)
        return counts

    def cmdline(self, _: Request) -> Response:
        return plain("\x00".join(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv]))

    def symbol(self, request: Request) -> Response:
        # pprof only checks num_symbols > 0; addresses are the pseudo PCs our profiles use.
        if request.method == "POST":
            words = request.body.decode("latin-1").split("+")
        else:
            words = [w for key in request.query for w in key.replace("+", " ").split()]
        if len(words) > MAX_SYMBOL_ADDRESSES:
            raise pprof_error(413, f"too many addresses: {len(words)} (at most "
                                   f"{MAX_SYMBOL_ADDRESSES} per request)")
        resolve = symbols.resolver()  # one sorted table for the whole request
        lines = ["num_symbols: 1"]
        for word in words:
            word = word.strip()
            if len(word) > MAX_ADDRESS_CHARS:  # no address is this long; int() of a huge
                continue  # decimal string would cost quadratic time
            try:
                address = int(word, 0)
            except ValueError:
                continue
            name = resolve(address) if address > 0 else None
            if name is not None:
                lines.append(f"{address:#x} {name}")
        return plain("\n".join(lines) + "\n")

    # -- sampled profiles --------------------------------------------------------------
    def profile(self, request: Request) -> Response:
        return self._sampled(request, self.component.cpu, "profile", "CPU profiling")

    def wall(self, request: Request) -> Response:
        return self._sampled(request, self.component.wall, "wall", "wall-clock profiling")

    def _sampled(self, request: Request, slot: cpu.ProfileSlot, name: str,
                 what: str) -> Response:
        duration = cast(int, seconds(request, self.settings.profile_max_seconds, 30))
        component_name = f"profile.{slot.mode}"
        try:
            sampler = slot.begin(
                self.settings.profile_rate_hz,
                lambda: self.component.context.failed(component_name),
                duration)
        except cpu.Busy as busy:
            raise pprof_error(500, f"Could not enable {what}: {busy}") from None
        except cpu.Unavailable as refused:  # profile_backend=py-spy, and py-spy cannot
            raise pprof_error(500, f"{what} failed: {refused}") from None
        try:
            # ends early when the client hangs up or labotel shuts down, so an abandoned
            # profile frees the slot at once (Go's handler stops with its request context)
            self.component.wait(request, duration)
        finally:
            builder = slot.end(sampler)
        if sampler.error is not None:
            raise pprof_error(500, f"{what} failed: the {slot.mode} sampler failed: "
                                   f"{sampler.error!r}")
        return binary(name, builder.encode())

    # -- snapshot profiles -----------------------------------------------------------
    def heap(self, request: Request) -> Response:
        window = seconds(request, self.settings.profile_max_seconds, None)
        collect = integer(request, "gc") > 0
        debug = integer(request, "debug")
        if window is not None:
            if debug:
                raise pprof_error(400, "seconds and debug params are incompatible")
            started = time.monotonic_ns()
            with heap.leased(self.settings.heap_profile_frames):
                before = heap.snapshot(collect)
                self.component.wait(request, window)
                after = self._heap_snapshot(collect)
            builder = heap.heap_profile(heap.new_builder(), after, before)
            return binary("heap-delta", builder.encode(time.monotonic_ns() - started))
        if not tracemalloc.is_tracing():
            raise pprof_error(
                400, "heap profiling is off: tracemalloc is not tracing. Start the process "
                "with LABOTEL_HEAP_PROFILING=1 (or labotel.start(heap_profiling=True)), or "
                "trace a window now with /debug/pprof/heap?seconds=30")
        builder = heap.heap_profile(heap.new_builder(), self._heap_snapshot(collect))
        if debug:
            return plain(heap.debug_text(builder))
        return binary("heap", builder.encode(0))

    @staticmethod
    def _heap_snapshot(collect: bool) -> tracemalloc.Snapshot:
        try:
            return heap.snapshot(collect)
        except RuntimeError:  # the application stopped tracemalloc under us
            raise pprof_error(409, "tracemalloc was stopped by the application during the "
                                   "heap profile") from None

    def block(self, request: Request) -> Response:
        return self._contention_profile(request, "block")

    def mutex(self, request: Request) -> Response:
        return self._contention_profile(request, "mutex")

    def _contention(self) -> contention.ContentionProfiling | None:
        peer = self.component.context.peer(contention.ContentionProfiling.name)
        return peer if isinstance(peer, contention.ContentionProfiling) else None

    def _contention_profile(self, request: Request, name: str) -> Response:
        window = seconds(request, self.settings.profile_max_seconds, None)
        debug = integer(request, "debug")
        if window is not None and debug:
            raise pprof_error(400, "seconds and debug params are incompatible")
        profiler = self._contention()
        if profiler is None:
            raise pprof_error(
                400, f"{name} profiling is off: contention profiling is not enabled. Start "
                "the process with LABOTEL_CONTENTION_PROFILING=1 (or "
                "labotel.start(contention_profiling=True)); it records from then on")
        if window is not None:
            started = time.monotonic_ns()
            before = profiler.recorder.snapshot(name)
            self.component.stopping.wait(window)
            after = profiler.recorder.snapshot(name)
            builder = profiler.profile(name, contention.delta(after, before))
            return binary(f"{name}-delta", builder.encode(time.monotonic_ns() - started))
        builder = profiler.profile(name)
        if debug:
            return plain(contention.debug_text(name, builder))
        return binary(name, builder.encode(0))

    def goroutine(self, request: Request) -> Response:
        return self._count_profile(request, "goroutine", self._goroutines)

    def threadcreate(self, request: Request) -> Response:
        return self._count_profile(request, "threadcreate", stacks.threadcreate)

    @staticmethod
    def _goroutines(builder: ProfileBuilder) -> list[stacks.Goroutine]:
        goroutines = stacks.collect(builder)
        stacks.add_samples(builder, goroutines)
        return goroutines

    def _count_profile(self, request: Request, name: str,
                       fill: Callable[..., object]) -> Response:
        window = seconds(request, self.settings.profile_max_seconds, None)
        debug = integer(request, "debug")
        builder = stacks.new_builder(name)
        if window is not None:
            if debug:
                raise pprof_error(400, "seconds and debug params are incompatible")
            started = time.monotonic_ns()
            fill(builder)
            before, builder.samples = builder.samples, {}
            self.component.wait(request, window)
            fill(builder)
            builder.subtract(before)
            return binary(f"{name}-delta", builder.encode(time.monotonic_ns() - started))
        goroutines = fill(builder)
        if debug >= 2 and isinstance(goroutines, list):  # only goroutine has a full dump
            return plain(stacks.dump_text(builder, goroutines))
        if debug:
            return plain(stacks.count_text(name, builder, ("kind",) if name == "goroutine"
                                           else ()))
        return binary(name, builder.encode(0))
