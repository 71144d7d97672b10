"""Deploy the whole application: the coordinator (actors/) and the Serve HTTP API. Idempotent."""

from __future__ import annotations

from typing import Any

from ray import serve

from actors.common import COORDINATOR_NAME
from actors.deploy import deploy_coordinator
from actors.deploy import undeploy as undeploy_actors
from ingest.core.config import Settings
from serve_app.deployment import build

APP_NAME = "scada"


def deploy(settings: Settings) -> dict[str, Any]:
    """Create (or find) the coordinator, start its loop, deploy the Serve app."""
    deploy_coordinator(settings)
    serve.start(http_options={"host": settings.http_host, "port": settings.http_port})
    serve.run(build(settings), name=APP_NAME, route_prefix="/", blocking=False)
    return {"coordinator": COORDINATOR_NAME,
            "api": f"http://{settings.http_host}:{settings.http_port}"}


def undeploy(settings: Settings) -> None:
    try:
        serve.shutdown()
    except Exception:
        pass
    undeploy_actors(settings)
