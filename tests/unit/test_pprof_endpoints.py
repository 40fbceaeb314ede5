"""/debug/pprof/* over real loopback HTTP: paths, parameters, headers and errors as Go's."""

import re
import sys
import threading
import time

import pytest

import labotel
from tests.unit.test_pprof_support import (
    BACKENDS,
    decode,
    get,
    location_functions,
    py_spy_children,
    start,
    wait_for_profile,
)


@pytest.fixture
def url():
    monitor = start(profile_max_seconds=5, profile_rate_hz=100)
    yield monitor.admin_url + "/debug/pprof/"
    labotel.shutdown()


@pytest.fixture(params=BACKENDS)
def sampled_url(request):
    monitor = start(profile_max_seconds=5, profile_rate_hz=100, profile_backend=request.param)
    yield monitor.admin_url + "/debug/pprof/"
    labotel.shutdown()


def no_sampler_left() -> bool:
    names = {t.name for t in threading.enumerate()}
    return not names & {"labotel-cpu-profiler", "labotel-wall-profiler"} and \
        not py_spy_children()


def assert_go_error(reply, status, message):
    assert reply.status == status, reply
    assert reply.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert reply.headers["X-Go-Pprof"] == "1"
    assert "Content-Disposition" not in reply.headers
    assert message in reply.text, reply.text


def test_index_lists_every_profile_like_go(url):
    reply = get(url)
    assert reply.status == 200 and reply.headers["Content-Type"] == "text/html; charset=utf-8"
    assert reply.headers["X-Content-Type-Options"] == "nosniff"
    page = reply.text
    assert page.startswith("<html>") and "<title>/debug/pprof/</title>" in page
    for name in ("cmdline", "goroutine", "heap", "profile", "threadcreate", "wall"):
        assert f"<a href='{name}?debug=1'>{name}</a>" in page
        assert f"<div class=profile-name>{name}: </div>" in page
    assert '<a href="goroutine?debug=2">full goroutine stack dump</a>' in page
    goroutines = int(re.search(r"<tr><td>(\d+)</td><td><a href='goroutine\?debug=1'>",
                               page).group(1))
    assert goroutines >= threading.active_count()


def test_bare_prefix_redirects_like_gos_mux(url):
    reply = get(url.rstrip("/"))  # urllib follows the 301
    assert reply.status == 200 and "Types of profiles available" in reply.text


@pytest.mark.parametrize("name, hint", [
    ("nonesuch", "Unknown profile"),
    ("allocs", "tracemalloc records live allocations only"),
    ("trace", "there is no Go execution tracer in Python"),
])
def test_unknown_profiles_are_404(url, name, hint):
    assert_go_error(get(url + name), 404, hint)


@pytest.mark.parametrize("name", ["mutex", "block"])
def test_contention_profiles_while_off_say_how_to_turn_them_on(url, name):
    assert_go_error(get(url + name), 400, f"{name} profiling is off")
    assert "LABOTEL_CONTENTION_PROFILING=1" in get(url + name + "?debug=1").text


@pytest.mark.parametrize("path", ["profile", "wall", "heap", "goroutine", "threadcreate",
                                  "mutex", "block"])
@pytest.mark.parametrize("value, message", [
    ("abc", 'invalid value for "seconds" - must be a positive integer'),
    ("-3", 'invalid value for "seconds" - must be a positive integer'),
    ("0", 'invalid value for "seconds" - must be a positive integer'),
    ("1.5", 'invalid value for "seconds" - must be a positive integer'),
    ("6", 'invalid value for "seconds" - must be at most 5 (profile_max_seconds)'),
])
def test_bad_seconds_are_400(url, path, value, message):
    started = time.monotonic()
    assert_go_error(get(f"{url}{path}?seconds={value}"), 400, message)
    assert time.monotonic() - started < 2  # refused before any profiling starts


@pytest.mark.parametrize("query, message", [
    ("goroutine?debug=x", 'invalid value for "debug" - must be an integer'),
    ("heap?seconds=1&debug=1", "seconds and debug params are incompatible"),
    ("goroutine?seconds=1&debug=2", "seconds and debug params are incompatible"),
    ("mutex?seconds=1&debug=1", "seconds and debug params are incompatible"),
    ("block?debug=x", 'invalid value for "debug" - must be an integer'),
    ("heap?gc=yes&seconds=1", 'invalid value for "gc" - must be an integer'),
])
def test_other_bad_parameters_are_400(url, query, message):
    assert_go_error(get(url + query), 400, message)


def test_binary_profiles_are_attachments_named_like_go(url):
    for path, filename in [("goroutine", "goroutine"), ("threadcreate", "threadcreate"),
                           ("profile?seconds=1", "profile"), ("wall?seconds=1", "wall"),
                           ("goroutine?seconds=1", "goroutine-delta")]:
        reply = get(url + path)
        assert reply.status == 200, (path, reply)
        assert reply.headers["Content-Type"] == "application/octet-stream"
        assert reply.headers["Content-Disposition"] == f'attachment; filename="{filename}"'
        assert reply.headers["X-Content-Type-Options"] == "nosniff"
        decode(reply.body)


def test_text_profiles_with_debug(url):
    for path in ("goroutine?debug=1", "goroutine?debug=2", "threadcreate?debug=1"):
        reply = get(url + path)
        assert reply.status == 200 and reply.headers["Content-Type"] == \
            "text/plain; charset=utf-8", path
        assert "Content-Disposition" not in reply.headers


def test_cmdline_is_nul_separated_argv(url):
    reply = get(url + "cmdline")
    assert reply.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert reply.body.decode().split("\x00") == sys.orig_argv


def test_symbol_answers_num_symbols_and_resolves_profile_addresses(url):
    reply = get(url + "symbol")
    assert reply.status == 200 and reply.text == "num_symbols: 1\n"
    profile = decode(get(url + "goroutine").body)
    functions = location_functions(profile)
    by_address = {loc.address: functions[loc.id] for loc in profile.location}
    wanted = [a for a, n in by_address.items() if n.startswith("labotel.profile.")][:2]
    assert wanted
    query = "+".join(hex(a) for a in wanted)
    for reply in (get(url + "symbol?" + query), get(url + "symbol", "POST", query.encode())):
        lines = reply.text.splitlines()
        assert lines[0] == "num_symbols: 1"
        assert sorted(lines[1:]) == sorted(f"{a:#x} {by_address[a]}" for a in wanted)


def test_symbol_resolves_10000_addresses_with_one_sort(url):
    import gc

    from labotel.profile import symbols

    codes = [obj for obj in gc.get_objects() if type(obj).__name__ == "function"][:20_000]
    known = {symbols.code_address(f.__code__) + 2: symbols.code_name(f.__code__)
             for f in codes}
    wanted = list(known)[:9_000] + [1, 2, 3] * 333 + [0] * 3  # and some that resolve to nothing
    started = time.process_time()
    reply = get(url + "symbol", "POST", "+".join(f"{a:#x}" for a in wanted).encode())
    assert reply.status == 200 and time.process_time() - started < 5  # 12.4 s before
    lines = reply.text.splitlines()
    assert lines[0] == "num_symbols: 1"
    assert dict(line.split(" ", 1) for line in lines[1:]) == {
        f"{a:#x}": known[a] for a in wanted if a in known}
    too_many = get(url + "symbol", "POST", b"+".join([b"0x1"] * 100_001))
    assert_go_error(too_many, 413, "too many addresses")


def test_second_concurrent_cpu_profile_gets_gos_error_and_nothing_deadlocks(sampled_url):
    url = sampled_url
    first: list = []
    worker = threading.Thread(target=lambda: first.append(get(url + "profile?seconds=2")))
    worker.start()
    wait_for_profile()
    second = get(url + "profile?seconds=1")
    assert_go_error(second, 500, "Could not enable CPU profiling: cpu profiling already in use")
    wall = get(url + "wall?seconds=1")  # another kind may run alongside
    assert wall.status == 200
    worker.join(10)
    assert first[0].status == 200 and decode(first[0].body).sample_type
    third = get(url + "profile?seconds=1")  # the slot is free again
    assert third.status == 200


def test_samplers_stop_when_the_profile_ends(sampled_url):
    url = sampled_url
    assert get(url + "profile?seconds=1").status == 200
    assert get(url + "wall?seconds=1").status == 200
    assert no_sampler_left()


@pytest.mark.parametrize("backend", BACKENDS)
def test_shutdown_ends_a_running_profile_and_its_sampler(backend):
    monitor = start(profile_max_seconds=60, profile_backend=backend)
    replies: list = []
    request = threading.Thread(target=lambda: replies.append(
        get(monitor.admin_url + "/debug/pprof/profile?seconds=60")))
    started = time.monotonic()
    request.start()
    assert wait_for_profile().backend == backend
    labotel.shutdown()
    request.join(10)
    assert not request.is_alive() and time.monotonic() - started < 15
    assert replies and replies[0].status == 200  # what was sampled until shutdown
    assert no_sampler_left()


def test_a_failing_sampler_is_counted_and_answered_with_500(monkeypatch):
    from labotel.profile.pprof import ProfileBuilder

    def broken(self, *args):
        raise RuntimeError("injected sampler fault")

    monitor = start(profile_backend="in-process")
    try:
        url = monitor.admin_url + "/debug/pprof/"
        monkeypatch.setattr(ProfileBuilder, "code_location", broken)
        reply = get(url + "wall?seconds=1")  # wall mode walks every thread on the first tick
        assert_go_error(reply, 500, "wall-clock profiling failed")
        assert "injected sampler fault" in reply.text
        metrics = get(monitor.admin_url + "/metrics").text
        assert 'labotel_internal_errors_total{labotel_component="profile.wall"' in metrics
        assert not any(t.name == "labotel-wall-profiler" for t in threading.enumerate())
    finally:
        labotel.shutdown()
