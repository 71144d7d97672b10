"""Deploy the whole application: the coordinator (actors/) and the Serve HTTP API. Idempotent."""

from __future__ import annotations

from typing import Any

from ray import serve

from actors.common import COORDINATOR_NAME
from actors.deploy import ensure_coordinator
from actors.deploy import undeploy as undeploy_actors
from ingest.core.config import Settings
from serve_app.deployment import build

APP_NAME = "scada"
# Serve replicas log JSON lines too (Ray's encoding), with the access log on.
SERVE_LOGGING: dict[str, Any] = {"encoding": "JSON", "log_level": "INFO", "enable_access_log": True}


def deploy(settings: Settings) -> dict[str, Any]:
    """Create (or find) the coordinator, start its loop, deploy the Serve app."""
    ensure_coordinator(settings)
    serve.start(
        http_options={"host": settings.http_host, "port": settings.http_port}, logging_config=SERVE_LOGGING
    )
    serve.run(build(settings), name=APP_NAME, route_prefix="/", blocking=False, logging_config=SERVE_LOGGING)
    return {"coordinator": COORDINATOR_NAME, "api": f"http://{settings.http_host}:{settings.http_port}"}


def undeploy(settings: Settings) -> None:
    try:
        serve.shutdown()  # type: ignore[no-untyped-call]  # Ray leaves it unannotated
    except Exception:
        pass
    undeploy_actors(settings)
