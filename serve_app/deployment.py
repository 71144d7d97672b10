"""Ray Serve deployment of the API (``serve_app.deployment:build``)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from ray import serve

from ingest.core.config import Settings
from serve_app.state import ApiState


# The app is bound late (``__serve_build_asgi_app__``) rather than passed to ``serve.ingress``:
# Serve would serve a pickled copy of it, on which this replica's state could not be set. It is
# imported inside the method so that the replica uses its own module's app, not a pickled one.
@serve.deployment(name="api", num_replicas=1, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=64)
@serve.ingress()
class ApiIngress:
    """One per replica: holds the replica's ``ApiState`` and hands Serve the app using it."""

    def __init__(self, settings: Settings) -> None:
        self.api = ApiState(settings)

    def __serve_build_asgi_app__(self) -> FastAPI:
        from serve_app.app import app

        app.state.api = self.api
        return app

    async def __del__(self) -> None:
        await self.api.close()


def build(settings: Settings) -> Any:
    return ApiIngress.bind(settings)  # type: ignore[attr-defined]
