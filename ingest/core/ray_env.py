"""Environment a process sets before it first imports ray (Ray reads these once, at import or at
the start of the processes it spawns, which inherit them).

- ``RAY_AUTH_MODE=token``: token authentication for every cluster we start or join. Ray only turns
  it on by itself for clusters ``ray.init()`` starts, not for ``ray start``.
- ``RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S=30``: Serve replaces a proxy not ready within 5 s (Ray
  2.60's default), which a loaded machine misses; a controller started from here inherits 30 s.

Defaults only: a value already in the environment wins. Imports nothing but ``os``.
"""

from __future__ import annotations

import os

RAY_ENV_DEFAULTS = {
    "RAY_AUTH_MODE": "token",
    "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "30",
}


def ray_env_defaults() -> None:
    for name, value in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)
