"""Where a client should open a live stream: the API replica's own HTTP port (Serve's direct
ingress, switched on by ingest.core.ray_env), so every event skips the hop through Serve's proxy.

Serve gives each ingress replica a port from ``RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT`` to
``_MAX_HTTP_PORT`` and tells the user code nothing about it; the replica finds the one its process
listens on. A restarted replica may get another port (Serve holds a released one back a while), so
the address is looked up again until found, then kept for the replica's life. ``Settings.live_url``
overrides it (a load balancer in front of the replicas' ports). None when direct ingress is off or
the port is not up yet: the client stays on the address it used.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ingest.core import procfs

if TYPE_CHECKING:
    from serve_app.state import ApiState

ANY_ADDRESS = ("0.0.0.0", "::", "")


class LiveUrl:
    def __init__(self, api: ApiState) -> None:  # one per replica: api.part(LiveUrl)
        self.settings = api.settings
        self._found: str | None = None

    def get(self) -> str | None:
        if self.settings.live_url:
            return self.settings.live_url.rstrip("/")
        if self._found is None:
            self._found = self._look_up()
        return self._found

    def _look_up(self) -> str | None:
        if os.environ.get("RAY_SERVE_ENABLE_DIRECT_INGRESS") != "1":
            return None
        try:
            lo = int(os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"])
            hi = int(os.environ["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"])
        except (KeyError, ValueError):
            return None
        ports = procfs.listening_ports(lo, hi)
        if not ports:
            return None
        host = self.settings.http_host
        if host in ANY_ADDRESS:  # bound to every interface: the node's own address
            import ray

            host = str(ray.util.get_node_ip_address())  # type: ignore[no-untyped-call]
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{ports[0]}"
