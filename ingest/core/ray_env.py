"""Environment a process sets before it first imports ray (Ray reads these once, at import or at
the start of the processes it spawns, which inherit them).

- ``RAY_AUTH_MODE=token``: token authentication for every cluster we start or join. Ray only turns
  it on by itself for clusters ``ray.init()`` starts, not for ``ray start``.
- ``RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S=30``: Serve replaces a proxy not ready within 5 s (Ray
  2.60's default), which a loaded machine misses; a controller started from here inherits 30 s.

- ``RAY_worker_niceness=10``: Ray starts its worker processes at niceness 15 by default (its own
  daemons at 0 come first). Ours start at 10, and the actors that collect (``background_priority``:
  connection actors) move themselves back to 15, which needs no privilege; Serve's proxy, the API
  replicas, the coordinator and the writers stay at 10. A dashboard's request then waits less for
  a core behind collection on a saturated node, and collection still gets a share (niceness is a
  weight, about 3 to 1 between 10 and 15, not a strict order); what does not fit the cores waits
  in the writers' queues and the durable spool as before. The writers stay with the API because
  a pushed batch's answer waits on its writer's flush: at 15, a push's ack p99 at 80,000
  readings/s was 189-232 ms against 123-152 at 10 (alternated 30 s phases); the live bench's
  p99 was 13.6 ms with them at 15, 17.4 and 22.5 at 10 (its limit: 250). Read by ``ray start``
  (the raylet): set before the cluster starts.
- ``RAY_SERVE_ENABLE_DIRECT_INGRESS=1``: each API replica also serves the whole app on a port of
  its own (``RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT`` to ``_MAX_HTTP_PORT``, on the host Serve's
  HTTP options name), beside Serve's proxy. A live stream opened there skips the proxy's hop, which
  through the proxy carried every event of every stream through one more process (the proxy took
  0.41 of this machine's two cores at 200 subscribers, and p50 went from 33 to 245 ms). A ticket's
  answer names that address (``live_url``, serve_app.live_url); everything else keeps working
  through the proxy. Serve holds a stopping replica open ``_MIN_DRAINING_PERIOD_S`` (30 s by
  default, for load balancers to notice); our clients reconnect and resume by themselves, so 2 s.
  Read by Serve's controller and replicas, which inherit the node's environment: set before the
  cluster starts.

Defaults only: a value already in the environment wins. Imports nothing but ``os``.
"""

from __future__ import annotations

import os

WORKER_NICENESS = 10
BACKGROUND_NICENESS = 15  # Ray's own default for its workers

RAY_ENV_DEFAULTS = {
    "RAY_AUTH_MODE": "token",
    "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "30",
    "RAY_worker_niceness": str(WORKER_NICENESS),
    "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
    "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": "28700",
    "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": "28799",
    "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": "28800",
    "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": "28899",
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
}


# What every node's ``ray start`` must have in its environment (cluster.yaml and the RayService
# set these; token authentication they set their own way).
NODE_ENV = {k: v for k, v in RAY_ENV_DEFAULTS.items() if k == "RAY_worker_niceness" or "DIRECT_INGRESS" in k}


def ray_env_defaults() -> None:
    for name, value in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)


def background_priority() -> list[int]:
    """Every thread of this process at ``BACKGROUND_NICENESS`` at least (Linux keeps niceness per
    thread, and Ray's threads exist before an actor's ``__init__`` runs; threads made later
    inherit it from their maker). Raising one's own niceness needs no privilege; a thread
    already at or above it is left alone. Returns the thread ids moved."""
    moved = []
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:  # not Linux: the process as a whole
        tids = [0]
    for tid in tids:
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) < BACKGROUND_NICENESS:
                os.setpriority(os.PRIO_PROCESS, tid, BACKGROUND_NICENESS)
                moved.append(tid)
        except OSError:  # the thread ended meanwhile
            continue
    return moved
