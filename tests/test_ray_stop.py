"""``scada-ingest down`` stops its own Ray cluster only (actors.deploy.stop_local_ray): the
processes of another cluster on the same machine (a test run, a bench) keep running."""

from __future__ import annotations

import subprocess
import sys
import time

from actors.deploy import own_ray_pids, stop_local_ray
from ingest.core.procfs import alive

# A stand-in for a Ray daemon started with a GCS address, which forks a worker (whose title,
# like a Ray worker's, no longer names the address) and then waits.
PARENT = (
    "import subprocess, sys, time; "
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
    "time.sleep(120)"
)


def _daemon(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", PARENT, *args])


def _children(pid: int) -> list[int]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
        kids = [int(x) for x in out.split()]
        if kids:
            return kids
        time.sleep(0.1)
    raise AssertionError(f"no child of {pid}")


def test_stops_the_clusters_own_processes_and_no_other() -> None:
    gcs = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "--gcs_server_port=61871"])
    raylet = _daemon("--gcs-address=127.0.0.1:61871")
    other = _daemon("--gcs-address=127.0.0.1:61872")  # another cluster's raylet
    unrelated = _daemon("--port=61871")  # names the port, but not as a GCS address
    try:
        worker = _children(raylet.pid)[0]
        other_worker = _children(other.pid)[0]
        found = own_ray_pids(61871)
        assert {gcs.pid, raylet.pid, worker} <= set(found)
        assert not {other.pid, other_worker, unrelated.pid} & set(found)

        stopped = stop_local_ray(61871, grace_s=5)
        assert set(stopped) == set(found)
        for p in (gcs, raylet):
            p.wait(10)
        deadline = time.monotonic() + 10
        while alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(worker)
        assert other.poll() is None and alive(other_worker) and unrelated.poll() is None
    finally:
        for p in (gcs, raylet, other, unrelated):
            p.kill()
        stop_local_ray(61872, grace_s=1)
        subprocess.run(["pkill", "-f", "time.sleep\\(120\\)"], check=False)
