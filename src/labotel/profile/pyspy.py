"""CPU and wall profiles taken by py-spy from outside the process (the py-spy backend).

py-spy (``pip install 'labotel[pyspy]'``) is a separate program that reads the
interpreter's memory from another process: the application runs no sampler thread and
hands over no GIL, so a profile costs it close to nothing, and samples land on the line
each thread is at, not where it next releases the GIL. It needs permission to trace this
process (the kernel's ptrace check: same user and no Yama restriction, or
CAP_SYS_PTRACE); where it is refused, py-spy says so within a fraction of a second and the
caller falls back to the in-process sampler.

py-spy runs ``--nonblocking`` (it never stops the process to read a stack) and writes its
"raw" format, one line per distinct stack and thread with a count, which this module turns
into the same profile the in-process sampler makes: ``module.qualname`` function names,
a ``thread`` label, ``samples/count`` and ``cpu/nanoseconds`` (or ``wall/nanoseconds``)
values, one sample worth one period. CPU mode leaves out the threads py-spy finds idle
(blocked in a system call or waiting for the GIL), wall mode (``--idle``) keeps them.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable

import psutil

from labotel.digits import ascii_digits
from labotel.profile import pyspy_rate, symbols
from labotel.profile.cpu import WALL, Unavailable, new_builder
from labotel.profile.pprof import ProfileBuilder

READY = "py-spy> Sampling process"  # printed once py-spy has attached
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
LOG_READ = 65536  # bytes of py-spy's log read from its start, and as many from its end
NAMES_INTERVAL = 0.1  # seconds between looks at thread names while py-spy runs ...
NAMES_CPU_SHARE = 0.001  # ... at most, spaced more where they would pass this of a core
NAMES_THREAD = "labotel-py-spy-names"
NICENESS = 10  # py-spy yields the CPU to the application when both want it
_THREAD = re.compile(r"thread \((0x[0-9a-fA-F]+|\d+)\)")
_FRAME = re.compile(r"(?P<name>.*?) \((?P<file>.*):(?P<line>\d+)\)$")
_ERRORS = re.compile(r"Samples: (\d+) Errors: (\d+)")


def find_binary() -> str | None:
    """The py-spy next to this interpreter (the ``pyspy`` extra), else one on PATH."""
    for scripts in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
        candidate = os.path.join(scripts or "", "py-spy")
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("py-spy")


@functools.lru_cache(maxsize=4)
def version(binary: str) -> str:
    """``py-spy 0.4.3``, or just ``py-spy`` if it will not say."""
    try:
        output = subprocess.run([binary, "--version"], capture_output=True, text=True,
                                timeout=10, stdin=subprocess.DEVNULL).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        output = ""
    return output or "py-spy"


def _environment() -> dict[str, str]:
    # A refusal should read as one sentence, not a Rust backtrace.
    return dict(os.environ, RUST_BACKTRACE="0", RUST_LIB_BACKTRACE="0")


def names_interval(cost: float) -> float:
    """Seconds until the next look at thread names, after one that cost ``cost`` seconds
    of CPU: ``NAMES_INTERVAL``, or longer where that would pass ``NAMES_CPU_SHARE`` (a look
    at 1 000 threads costs ~0.3 ms: every 0.1 s, 0.3% of a core on top of py-spy's own
    budget; a thread living less than the interval may then go unnamed)."""
    return max(NAMES_INTERVAL, cost / NAMES_CPU_SHARE)


def _thread_names() -> dict[int, str]:
    return {thread.native_id: thread.name for thread in threading.enumerate()
            if thread.native_id}


class PySpyProfile:
    """One profile taken by a py-spy process attached to this one."""

    backend = "py-spy"

    def __init__(self, binary: str, mode: str, rate_hz: int, seconds: float | None = None,
                 on_failure: Callable[[], None] = lambda: None,
                 rates: pyspy_rate.PySpyRate | None = None, threads: int = 0):
        self.binary = binary
        self._on_failure = on_failure
        self.mode = mode
        # the budget may lower the rate asked for (py-spy's cost grows with ``threads``), or
        # refuse py-spy (Unavailable); what py-spy used teaches the next choice
        self._rates = rates
        self.choice = rates.choose(mode, rate_hz, threads) if rates else None
        if self.choice is not None:
            rate_hz = self.choice.rate_hz
        self.rate_hz = rate_hz
        self.period_ns = max(1, 1_000_000_000 // rate_hz)
        self.seconds = seconds
        self.error: BaseException | None = None
        self.own_cpu_seconds = 0.0
        self._directory = ""
        self._process: subprocess.Popen | None = None
        self._started = 0.0
        self._attached = (0.0, 0.0)  # (monotonic time, py-spy's CPU seconds) once attached
        self._names: dict[int, str] = {}
        self._names_done = threading.Event()
        self._names_thread_samples = 0  # wall mode: the ticks py-spy took (see _learn)
        self._lock = threading.Lock()
        self._builder: ProfileBuilder | None = None

    @property
    def _output(self) -> str:
        return os.path.join(self._directory, "profile.txt")

    @property
    def _log(self) -> str:
        return os.path.join(self._directory, "py-spy.log")

    def start(self) -> None:
        """Attach py-spy; raises Unavailable (with py-spy's reason) if it cannot, and
        whatever else raises leaves no py-spy running and no files behind."""
        try:
            self._directory = tempfile.mkdtemp(prefix="labotel-py-spy-")
        except OSError as error:
            raise Unavailable(f"no room for py-spy's output: {error}") from None
        try:
            self._attach()
        except BaseException:
            # Whatever ends the start (py-spy's refusal, a names thread that cannot start in
            # a process at its thread limit, KeyboardInterrupt), py-spy must not sample on
            # for seconds + 60 s, nor its directory stay.
            self._names_done.set()
            self._kill()
            self._clean_up()
            raise

    def _attach(self) -> None:
        """Start py-spy and wait until it samples (start() cleans up when this raises)."""
        command = [self.binary, "record", "--pid", str(os.getpid()),
                   "--rate", str(self.rate_hz), "--format", "raw", "--output", self._output,
                   "--threads", "--full-filenames", "--nonblocking"]
        # CPU: the thread holding the GIL at each sample, i.e. running Python code. py-spy's
        # default, "the kernel has it running or ready to run", also counts threads waiting
        # for the GIL or for a core, measured here at 15-30% more CPU than was used, put on
        # the lines where they wait. Wall: every thread, idle or not.
        command.append("--idle" if self.mode == WALL else "--gil")
        if self.seconds:  # a bound in case nobody stops it (we send SIGINT at the end)
            command += ["--duration", str(int(self.seconds) + 60)]
        self._names = _thread_names()
        # The profile's time span is py-spy's whole life, so that it covers every sample
        # (py-spy starts sampling before it says so, and stops only once it has the signal).
        self._builder = new_builder(self.mode, self.period_ns)
        self._started = time.monotonic()
        try:
            with open(self._log, "wb") as log:
                self._process = subprocess.Popen(
                    command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    env=_environment(), start_new_session=True)  # no terminal's Ctrl-C
        except OSError as error:
            raise Unavailable(f"py-spy could not be started: {error}") from None
        try:  # where cores are scarce, the application comes first
            os.setpriority(os.PRIO_PROCESS, self._process.pid, NICENESS)
        except OSError:
            pass
        deadline = time.monotonic() + START_TIMEOUT
        while READY not in self._read_log():
            if self._process.poll() is not None:
                raise Unavailable(f"py-spy cannot profile this process: {self._reason()}")
            if time.monotonic() > deadline:
                raise Unavailable(f"py-spy did not start sampling within {START_TIMEOUT:g} s")
            time.sleep(0.005)
        # its attach (reading the interpreter's symbols) is not a cost per sample
        self._attached = (time.monotonic(), _cpu_seconds(self._process.pid))
        threading.Thread(target=self._note_names, name=NAMES_THREAD, daemon=True).start()

    def _note_names(self) -> None:
        """Remember the names of threads that start and end while py-spy runs: py-spy
        reads a thread's name once, when it first sees it, and may find none yet."""
        interval = NAMES_INTERVAL
        spent = time.thread_time()
        while not self._names_done.wait(interval):
            self._names.update(_thread_names())
            # the look and the wake-up before it (~0.1 ms here: 0.1% of a core alone)
            now = time.thread_time()
            interval = names_interval(now - spent)
            spent = now

    def stop(self) -> ProfileBuilder:
        """Stop py-spy (SIGINT makes it write what it has) and convert its output."""
        with self._lock:
            builder = self._builder
            assert builder is not None, "stop() before start()"
            if self._process is None:  # stopped already
                return builder
            process, self._process = self._process, None
            self._names_done.set()
            self.own_cpu_seconds = _cpu_seconds(process.pid)
            try:
                if process.poll() is None:
                    process.send_signal(signal.SIGINT)
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                self.error = RuntimeError(f"py-spy did not stop within {STOP_TIMEOUT:g} s")
            stopped = time.monotonic()
            seconds = stopped - self._started
            builder.duration_ns = time.time_ns() - builder.start_ns
            try:
                if self.error is None:
                    self._names.update(_thread_names())
                    self._convert(builder)
                    log = self._read_log()  # complete now that py-spy has exited
                    builder.comments.append(self._describe(seconds, log))
                    self._learn(stopped, log)
            except OSError as error:  # no output: py-spy failed after it started
                self.error = RuntimeError(f"py-spy wrote no profile ({error.strerror}): "
                                          f"{self._reason()}")
            finally:
                self._clean_up()
            if self.error is not None:
                self._on_failure()
        return builder

    # -- conversion ----------------------------------------------------------------------
    def _convert(self, builder: ProfileBuilder) -> None:
        period = self.period_ns
        with open(self._output, encoding="utf-8", errors="replace") as lines:
            for line in lines:
                stack_text, _, count_text = line.rstrip("\n").rpartition(" ")
                if not ascii_digits(count_text):
                    continue
                thread, frames = self._split_thread(stack_text)
                count = int(count_text)
                # Our own machinery (the in-process sampler leaves itself out too), and a
                # thread with no Python frame yet (starting up, or ending).
                if thread == NAMES_THREAD:
                    self._names_thread_samples += count
                    continue
                if not frames:
                    continue
                stack = tuple(self._location(builder, frame) for frame in reversed(frames))
                builder.add(stack, [count, count * period], (("thread", thread),))

    def _split_thread(self, text: str) -> tuple[str, list[str]]:
        """(thread name, frames outermost first) of ``thread (TID): name;frame;...``."""
        match = _THREAD.match(text)
        if match is None:
            return "unknown", text.split(";") if text else []
        tid = int(match.group(1), 0)
        rest = text[match.end():]
        known = self._names.get(tid)
        # The name may contain ';': when this thread's name is known, cut exactly there.
        if known is not None and (rest == f": {known}" or rest.startswith(f": {known};")):
            name, rest = known, rest[len(known) + 3:]
        elif rest.startswith(": "):
            name, _, rest = rest[2:].partition(";")
        else:  # py-spy found no name: ours, from while it ran
            name, rest = known or f"thread-{tid}", rest[1:]
        return name, rest.split(";") if rest else []

    @staticmethod
    def _location(builder: ProfileBuilder, frame: str) -> int:
        match = _FRAME.match(frame)
        if match is None:
            return builder.named_line_location("", 0, frame)
        filename = match.group("file")
        return builder.named_line_location(filename, int(match.group("line")),
                                           symbols.qualify(filename, match.group("name")))

    def _learn(self, stopped: float, log: str) -> None:
        """Tell the rate chooser what py-spy's sampling cost (attach left out) per tick it
        took: ticks, not recorded samples, count, since CPU mode records none while every
        thread idles."""
        if self._rates is None or self.choice is None:
            return
        attached_at, cpu_at_attach = self._attached
        sampling = stopped - attached_at
        if self.mode == WALL:
            # --idle records every thread at every tick, our names thread too, which lives
            # through the sampling: its count is the ticks py-spy took
            ticks = self._names_thread_samples
        else:  # --gil records only the thread holding the GIL: the ticks asked stand in
            ticks = int(self.rate_hz * sampling)
        # a py-spy stopped or starved for over a second says so, and its ticks mislead
        fell_behind = "behind in sampling" in log
        self._rates.learn(self.mode, self.choice, self.own_cpu_seconds - cpu_at_attach,
                          ticks, sampling, fell_behind)

    def _describe(self, seconds: float, log: str) -> str:
        text = (f"labotel {self.mode} profile: taken by {version(self.binary)} from outside "
                f"the process at {self.rate_hz} Hz (--nonblocking, "
                f"{'--idle' if self.mode == WALL else '--gil'}); py-spy's own CPU "
                f"{100 * self.own_cpu_seconds / max(seconds, 1e-9):.2f}% of one core")
        if self._rates is not None and self.choice is not None:
            text += pyspy_rate.describe(self.choice, self._rates.cpu_budget)
        errors = _ERRORS.findall(log)
        if errors and int(errors[-1][1]):
            text += f"; {errors[-1][1]} of {errors[-1][0]} samples could not be read"
        if "behind in sampling" in log:
            text += "; py-spy fell behind the sampling rate at times"
        return text

    # -- the py-spy process -------------------------------------------------------------
    def _read_log(self) -> str:
        """The log's first and last ``LOG_READ`` bytes: its start says why py-spy would not
        attach, its end has the samples-and-errors line py-spy writes as it stops (a long
        log of read errors pushed that line out of a read of the start only)."""
        try:
            with open(self._log, "rb") as log:
                head = log.read(LOG_READ)
                size = log.seek(0, os.SEEK_END)
                tail = b""
                if size > LOG_READ:
                    log.seek(max(LOG_READ, size - LOG_READ))
                    tail = log.read(LOG_READ)
        except OSError:
            return ""
        return (head + b"\n" + tail if tail else head).decode("utf-8", errors="replace")

    def _reason(self) -> str:
        lines = [line.strip() for line in self._read_log().splitlines()
                 if line.strip() and not line.startswith("py-spy>")]
        text = " ".join(lines).removeprefix("Error: ") or "py-spy exited without a reason"
        return text[:400]

    def _kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def _clean_up(self) -> None:
        shutil.rmtree(self._directory, ignore_errors=True)


def _cpu_seconds(pid: int) -> float:
    try:
        times = psutil.Process(pid).cpu_times()
        return times.user + times.system
    except psutil.Error:
        return 0.0

