"""A node of a ``ray.cluster_utils.Cluster`` that dies the way a machine does: all at once.

``Cluster.remove_node(node, allow_graceful=False)`` kills the node's raylet and its other daemons,
but not the worker processes the raylet started (our actors). Those notice only at their next
check of the raylet (about once a second, later on a loaded machine) and go on meanwhile: they
still reach Redis, the writers and the devices, so a connection actor "lost with its node" may
acknowledge messages or commit batches after its successor has started. That is a network
partition, not a node loss. ``kill_node`` SIGKILLs the raylet's child processes first, then
removes the node.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc; Linux)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # exited meanwhile
        # pid (comm) state ppid ...: comm may contain spaces and parentheses; split after the last ')'.
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


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
