"""Ray Serve deployment of the API (``serve_app.deployment:build``)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from ray import serve

from ingest.core.config import Settings
from ingest.core.heap import settle_heap
from serve_app.state import ApiState


# The app is bound late (``__serve_build_asgi_app__``) rather than passed to ``serve.ingress``:
# Serve would serve a pickled copy of it, on which this replica's state could not be set. It is
# imported inside the method so that the replica uses its own module's app, not a pickled one.
# A live connection (SSE or WebSocket) holds one of the replica's ongoing requests for as long as
# it is open, so the bound counts dashboards too: 200 live subscribers plus the ordinary routes.
#
# The app runs on the replica's own event loop (RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0), not
# on a thread of its own: every ASGI message a live stream sends then stays on one loop instead
# of crossing threads (and the GIL) to Serve's, which cut the replica's CPU by a quarter and the
# live bench's commit-to-client p50 from about 150 to 113 ms. The routes never block the loop
# (blocking work goes to threads), which that mode needs: Serve's health checks share the loop.
@serve.deployment(
    name="api",
    num_replicas=1,
    ray_actor_options={
        "num_cpus": 0,
        "runtime_env": {"env_vars": {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}},
    },
    max_ongoing_requests=1024,
)
@serve.ingress()
class ApiIngress:
    """One per replica: holds the replica's ``ApiState`` and hands Serve the app using it."""

    def __init__(self, settings: Settings) -> None:
        self.api = ApiState(settings)

    def __serve_build_asgi_app__(self) -> FastAPI:
        from serve_app.app import app

        app.state.api = self.api
        settle_heap()  # full collections skip what the replica holds from here on
        return app

    async def __del__(self) -> None:
        await self.api.close()


def build(settings: Settings) -> Any:
    return ApiIngress.options(num_replicas=settings.api_replicas).bind(settings)  # type: ignore[attr-defined]


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
        from actors.deploy import ensure_coordinator
        from ingest.store.master import migrate_all

        asyncio.run(migrate_all(settings))
        ensure_coordinator(settings)
    return build(settings)
