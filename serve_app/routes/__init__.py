"""The API's routers, one module per resource. ``serve_app.app`` includes them all.

A route here stays thin: its parameters parse (serve_app.params bounds every id), a dependency
authorises (serve_app.deps: ``ReadTenant``, ``AdminTenant``, ``ClusterAdmin``), the body calls one
``ingest`` function, and a response model (serve_app.schemas) shapes the answer. Every route
declares the errors it can answer with ``responses=error_responses(...)``; the cross-tenant test
and the schemathesis run (tests/test_api_routes.py) check both for every route, new ones too.
"""

from __future__ import annotations

from fastapi import APIRouter

from serve_app.routes import (
    browse,
    connections,
    health,
    keys,
    moves,
    operations,
    servers,
    tag_files,
    tags,
    tenants,
)

ROUTERS: tuple[APIRouter, ...] = (
    health.router,
    tenants.router,
    keys.router,
    connections.router,
    tags.router,
    tag_files.router,
    browse.router,
    operations.router,
    servers.router,
    moves.router,
)
