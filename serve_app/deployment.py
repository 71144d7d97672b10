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


def app_builder(args: dict[str, str]) -> Any:
    """Serve application builder for ``serve deploy`` and KubeRay's ``serveConfigV2``
    (``import_path: serve_app.deployment:app_builder``).

    Settings come from the ``SCADA_*`` environment of the cluster's nodes (secrets included,
    never from the config file); ``args`` may override non-secret fields such as
    ``namespace``. Unless ``args`` holds ``ensure_coordinator: "false"``, it also applies the
    migrations and creates the coordinator if absent, so a fresh cluster (a KubeRay upgrade
    replaces the whole RayCluster) is fully running after the config is applied.
    """
    import asyncio

    from ingest.core.config import load_settings

    args = dict(args)
    ensure = str(args.pop("ensure_coordinator", "true")).lower() != "false"
    base = load_settings()
    settings = type(base)(**{**base.model_dump(), **args})
    if ensure:
        from ingest.cli import migrate_all

        from actors.deploy import ensure_coordinator

        asyncio.run(migrate_all(settings))
        ensure_coordinator(settings)
    return build(settings)
