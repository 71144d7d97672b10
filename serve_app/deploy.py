"""Deploy the whole application: the coordinator (actors/) and the Serve HTTP API. Idempotent."""

from __future__ import annotations

import logging
from typing import Any

from ray import serve
from ray.exceptions import ActorDiedError

from actors.common import COORDINATOR_NAME
from actors.deploy import ensure_coordinator, require_leadership
from actors.deploy import undeploy as undeploy_actors
from ingest.core.config import Settings
from serve_app.deployment import build

log = logging.getLogger(__name__)

APP_NAME = "scada"
# Serve replicas log JSON lines too (Ray's encoding), with the access log on.
SERVE_LOGGING: dict[str, Any] = {"encoding": "JSON", "log_level": "INFO", "enable_access_log": True}


def deploy(settings: Settings) -> dict[str, Any]:
    """Create (or find) the coordinator, start its loop, deploy the Serve app. ``StandingBy``
    (before Serve is touched) when another cluster's coordinator holds the master database."""
    require_leadership(ensure_coordinator(settings))
    for attempt in range(1, 4):
        try:
            serve.start(
                http_options={"host": settings.http_host, "port": settings.http_port}, logging_config=SERVE_LOGGING
            )
            break
        except (ActorDiedError, TimeoutError) as e:
            # On a loaded machine `serve.start` can fail while Serve itself carries on: the
            # controller replaced a proxy not ready within its ready-check timeout (ActorDiedError:
            # it waited for the one replaced), or no proxy was ready within Serve's 60 s
            # (TimeoutError). The controller keeps starting proxies either way; asking again
            # finds the running Serve at once, and callers wait for the HTTP port themselves.
            if attempt == 3:
                raise
            log.warning(
                "Serve did not start cleanly (%s: %s); asking again",
                type(e).__name__,
                str(e).splitlines()[0][:200] if str(e) else "",
            )
    serve.run(build(settings), name=APP_NAME, route_prefix="/", blocking=False, logging_config=SERVE_LOGGING)
    return {"coordinator": COORDINATOR_NAME, "api": f"http://{settings.http_host}:{settings.http_port}"}


def undeploy(settings: Settings) -> None:
    try:
        serve.shutdown()  # type: ignore[no-untyped-call]  # Ray leaves it unannotated
    except Exception:
        pass
    undeploy_actors(settings)
