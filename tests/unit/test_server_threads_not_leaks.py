"""labotel's own threads (the debug server's pool, exporters) are never reported as the
application's thread leak, while the application's own growing threads still are."""

import socket
import threading
import time

import labotel
from labotel.runtime import origins
from tests.unit.raw_http import request
from tests.unit.test_leaks_memory import source_line


def park(release: threading.Event) -> None:
    release.wait()


def test_a_growing_debug_server_pool_is_not_a_leak_but_the_apps_threads_are():
    monitor = labotel.start(admin_address="127.0.0.1:0", leak_sample_interval=0.25,
                            leak_window=4.0, leak_min_growth=8, profile_max_seconds=60)
    release = threading.Event()
    held = []
    try:
        # the pool and the app's threads grow alike: one more every 0.2 s, all left waiting
        for _ in range(monitor.settings.admin_max_concurrent_requests):
            sock = socket.create_connection(monitor.server.address, timeout=5)
            sock.sendall(request("GET", "/debug/pprof/goroutine?seconds=30"))
            held.append(sock)
            threading.Thread(target=park, args=(release,), daemon=True).start()  # APP SPAWN
            time.sleep(0.2)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not labotel.detections("thread_leak"):
            time.sleep(0.1)
        time.sleep(1.0)  # another second for a report on the server's threads, if any
        workers = [t for t in threading.enumerate() if t.name == "labotel-debug-server-worker"]
        assert len(workers) == monitor.settings.admin_max_concurrent_requests
        assert all(origins.is_labotel_thread(t) for t in workers)
        sites = [d.attributes["labotel.leak.site"] for d in labotel.detections("thread_leak")]
        assert sites == [source_line("# APP SPAWN", __file__)]
    finally:
        release.set()
        for sock in held:
            sock.close()
        labotel.shutdown()
