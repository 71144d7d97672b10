"""``ingest.core.ray_env``: Ray's workers start at niceness 10 (the API's and the writers'), and
the connection actors move every thread of theirs to 15 (no services; run in a child process,
since niceness raised cannot be lowered again without privilege)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from ingest.core.ray_env import BACKGROUND_NICENESS, RAY_ENV_DEFAULTS, WORKER_NICENESS

CHILD = textwrap.dedent(
    """
    import os, threading, json
    from ingest.core.ray_env import background_priority

    def nice(tid):
        with open(f"/proc/self/task/{tid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[16])

    started, stop = threading.Event(), threading.Event()
    def before():  # a thread that exists before the call, like Ray's own
        started.set(); stop.wait()
    t = threading.Thread(target=before); t.start(); started.wait()
    tids = [int(x) for x in os.listdir("/proc/self/task")]
    was = sorted({nice(x) for x in tids})
    moved = background_priority()
    now = sorted({nice(x) for x in os.listdir("/proc/self/task")})
    later = []
    made = threading.Thread(target=lambda: later.append(nice(threading.get_native_id())))
    made.start()
    made.join()
    again = background_priority()
    stop.set(); t.join()
    out = {"was": was, "now": now, "moved": len(moved), "threads": len(tids), "later": later, "again": again}
    print(json.dumps(out))
    """
)


def test_every_thread_moves_to_the_background_level_and_new_ones_inherit_it() -> None:
    assert RAY_ENV_DEFAULTS["RAY_worker_niceness"] == str(WORKER_NICENESS)
    assert WORKER_NICENESS < BACKGROUND_NICENESS
    # The child starts where a Ray worker would (or where this process is, if that is higher:
    # lowering needs privilege).
    start = max(os.getpriority(os.PRIO_PROCESS, 0), WORKER_NICENESS)
    if start >= BACKGROUND_NICENESS:
        pytest.skip(f"this process runs at niceness {start}: nothing below the background level to test")
    out = subprocess.run(
        [sys.executable, "-c", CHILD],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: os.setpriority(os.PRIO_PROCESS, 0, start),
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["was"] == [start]
    assert got["now"] == [BACKGROUND_NICENESS]
    assert got["moved"] == got["threads"] >= 2  # the main thread and the one started before
    assert got["later"] == [BACKGROUND_NICENESS]
    assert got["again"] == []  # nothing left to move: already there
