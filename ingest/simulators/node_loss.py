"""A node of a ``ray.cluster_utils.Cluster`` that dies the way a machine does: all at once.

``Cluster.remove_node(node, allow_graceful=False)`` kills the node's raylet and its other daemons,
but not the worker processes the raylet started (our actors). Those notice only at their next
check of the raylet (measured: 0.3 s on a quiet machine, 0.8 s under load) and go on meanwhile:
they still reach Redis, the writers and the devices, so a connection actor "lost with its node"
could acknowledge messages or commit batches after its successor has started. That is a network
partition, not a node loss, so the tests and the failover scenario use ``kill_node``: it SIGKILLs
the raylet's child processes first, then removes the node. (The failure it was first written for
turned out to have another cause, a move at the test's start; it is kept for what it models.)
"""

from __future__ import annotations

import os
import signal
from typing import Any

from ingest.core.procfs import parents


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    return [c for c, p in parents().items() if p == pid]


def kill_node(cluster: Any, node: Any) -> list[int]:
    """SIGKILL every process the node's raylet started, then remove the node; the pids killed."""
    raylet = node.all_processes["raylet"][0].process.pid
    killed = []
    for pid in children(raylet):
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except ProcessLookupError:
            pass
    cluster.remove_node(node, allow_graceful=False)
    return killed
