"""The node-loss helper of the failover tests finds the processes a parent started (from /proc)."""

from __future__ import annotations

import os
import subprocess
import sys

from ingest.simulators.node_loss import children


def test_children_lists_the_processes_a_parent_started_and_only_those() -> None:
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert p.pid in children(os.getpid())
        assert p.pid not in children(p.pid)
        assert children(p.pid) == []
    finally:
        p.kill()
        p.wait()
