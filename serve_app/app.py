"""HTTP API: tenants, credentials, connections and tags, queries. OpenAPI at /docs.

Every tenant route checks that the caller's key belongs to that tenant (or is the cluster admin
key) and carries the scope the route needs; another tenant's resources answer 403. The routes
live in serve_app.routes, one module per resource; the state they share is built by the Serve
ingress (serve_app.deployment) and put on ``app.state.api``.
"""

from __future__ import annotations

from fastapi import FastAPI

from serve_app import errors
from serve_app.routes import ROUTERS

app = FastAPI(
    title="scada-ingest",
    version="0.1.0",
    description="Multi-tenant SCADA ingestion: register OPC UA / Modbus devices and tags, query "
    "their readings. Authenticate with `Authorization: Bearer <api key>`. Every error has the "
    'body `{"error": "<snake_case code>", "message": "...", "details": [{"field": ..., '
    '"error": ...}]}`.',
)
errors.install(app)

from serve_app.routes_read import router as read_router  # noqa: E402

# The read routes first: Serve names every request's route (for its metrics) by trying the
# app's routes in order, and a dashboard's reads are most of the requests.
app.include_router(read_router)
for router in ROUTERS:
    app.include_router(router)

from serve_app.routes_push import push_router  # noqa: E402  (push ingest, audit: its own module)

app.include_router(push_router)

from fastapi.staticfiles import StaticFiles  # noqa: E402

from serve_app.routes_live import UI_DIR  # noqa: E402
from serve_app.routes_live import router as live_router  # noqa: E402  (SSE, WebSocket, tickets)

app.include_router(live_router)
# The live page: static HTML and JavaScript, no build step (a Mount, not a route of the API).
app.mount("/ui", StaticFiles(directory=UI_DIR, html=True), name="ui")

from serve_app.hot_reads import HotReads  # noqa: E402  (latest and readings before routing)

app.add_middleware(HotReads)
