"""Deploy the whole application: the coordinator (actors/) and the Serve HTTP API. Idempotent."""

from __future__ import annotations

import logging
from typing import Any

from ray import serve
from ray.exceptions import ActorDiedError

from actors.common import COORDINATOR_NAME
from actors.deploy import ensure_coordinator
from actors.deploy import undeploy as undeploy_actors
from ingest.core.config import Settings
from serve_app.deployment import build

log = logging.getLogger(__name__)

APP_NAME = "scada"
# Serve replicas log JSON lines too (Ray's encoding), with the access log on.
SERVE_LOGGING: dict[str, Any] = {"encoding": "JSON", "log_level": "INFO", "enable_access_log": True}


def deploy(settings: Settings) -> dict[str, Any]:
    """Create (or find) the coordinator, start its loop, deploy the Serve app."""
    ensure_coordinator(settings)
    for attempt in range(1, 4):
        try:
            serve.start(
                http_options={"host": settings.http_host, "port": settings.http_port}, logging_config=SERVE_LOGGING
            )
            break
        except ActorDiedError as e:
            # Serve's controller replaces a proxy that is not ready within its ready-check
            # timeout (a loaded machine), and `serve.start` fails waiting for the one it
            # replaced: the controller has started another by now, so ask again.
            if attempt == 3:
                raise
            log.warning(
                "Serve's proxy was replaced while starting (%s); starting Serve again",
                str(e).splitlines()[0][:200],
            )
    serve.run(build(settings), name=APP_NAME, route_prefix="/", blocking=False, logging_config=SERVE_LOGGING)
    return {"coordinator": COORDINATOR_NAME, "api": f"http://{settings.http_host}:{settings.http_port}"}


def undeploy(settings: Settings) -> None:
    try:
        serve.shutdown()  # type: ignore[no-untyped-call]  # Ray leaves it unannotated
    except Exception:
        pass
    undeploy_actors(settings)
