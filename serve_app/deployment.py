"""Ray Serve deployment of the API (``serve_app.deployment:build``)."""

from __future__ import annotations

from typing import Any

from ray import serve

from ingest.core.config import Settings
from serve_app.app import app, configure


@serve.deployment(name="api", num_replicas=1, ray_actor_options={"num_cpus": 0},
                  max_ongoing_requests=64)
@serve.ingress(app)
class ApiIngress:
    def __init__(self, settings: Settings) -> None:
        configure(settings)


def build(settings: Settings) -> Any:
    return ApiIngress.bind(settings)  # type: ignore[attr-defined]
