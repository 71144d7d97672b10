"""Tenant isolation and the documented contract, for every route the app has.

The routes are read from the app itself (``app.routes``), so a route added later, in any router,
is covered without editing this file; a route with a path or query parameter the tables below do
not know fails the test until someone says what value it takes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute

from ingest.core.keys import split_api_key
from serve_app.app import app
from tests.conftest import TenantHandle
from tests.test_api import OPCUA_CONN

PUBLIC = {("GET", "/healthz")}
# Routes that change nothing of the tenant's although they are not GETs: a read key may use them.
READ_SCOPE_POSTS = {("POST", "/v1/tenants/{tenant}/stream-tickets")}  # a live-stream ticket
# Routes without a {tenant} in their path: what another tenant's key gets from them.
NOT_TENANT_SCOPED = {
    ("GET", "/v1/tenants"): 200,  # lists only the caller's own tenant (asserted below)
    ("POST", "/v1/tenants"): 403,
    ("GET", "/v1/status"): 403,
    ("POST", "/v1/ingest/realtime"): 403,  # the tenant is named in the body (BODIES)
    ("GET", "/v1/servers"): 403,  # database servers are the cluster admin's
    ("POST", "/v1/servers"): 403,
    ("DELETE", "/v1/servers/{server}"): 403,
}


@dataclass
class Victim:
    """Tenant A's resources, which tenant B's key tries to reach."""

    tenant: TenantHandle
    connection_id: str
    tag_id: int


# The value each parameter takes in a request aimed at tenant A's resources.
PATH_VALUES: dict[str, Callable[[Victim], str]] = {
    "tenant": lambda v: v.tenant.slug,
    "connection_id": lambda v: v.connection_id,
    "tag_id": lambda v: str(v.tag_id),
    "batch_id": lambda v: "b:1",
    "key_id": lambda v: split_api_key(v.tenant.key)[0],
    "server": lambda v: "local",
}
QUERY_VALUES: dict[str, Callable[[Victim], str]] = {
    "tag_id": lambda v: str(v.tag_id),
}
# Bodies that aim at tenant A where the body, not the path, names the tenant; others send {}
# (authorisation comes before the body is read).
BODIES: dict[tuple[str, str], Callable[[Victim], dict[str, Any]]] = {
    ("POST", "/v1/ingest/realtime"): lambda v: {
        "tenant_id": v.tenant.slug,
        "data_points": [
            {
                "well_id": "W001",
                "timestamp": "2026-01-01T00:00:00Z",
                "parameter_name": "p",
                "value": 1.0,
                "unit": "bar",
            }
        ],
    },
}


@dataclass(frozen=True)
class Route:
    method: str
    path_format: str  # as served, router prefixes included
    api_route: APIRoute

    @property
    def has_body(self) -> bool:
        return self.api_route.body_field is not None


def api_routes() -> Iterator[Route]:
    """Every (method, path) the app serves, from ``app.routes``. FastAPI >= 0.16x includes
    routers lazily, so ``app.routes`` holds the routers; its ``iter_route_contexts`` flattens."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # older FastAPI: app.routes is flat already
        contexts: Any = app.routes
    else:
        contexts = iter_route_contexts(app.routes)
    for ctx in contexts:
        route = getattr(ctx, "original_route", ctx)
        if isinstance(route, APIRoute):
            for method in sorted(set(ctx.methods or ()) - {"HEAD", "OPTIONS"}):
                yield Route(method, ctx.path_format, route)


def required_query(route: Route) -> list[str]:
    op = app.openapi()["paths"].get(route.path_format, {}).get(route.method.lower(), {})
    return [p["name"] for p in op.get("parameters", []) if p["in"] == "query" and p.get("required")]


def request_for(route: Route, victim: Victim) -> tuple[str, dict[str, str]]:
    names = re.findall(r"{(\w+)(?::\w+)?}", route.path_format)
    unknown = [n for n in names if n not in PATH_VALUES]
    assert not unknown, f"{route.method} {route.path_format}: add {unknown} to PATH_VALUES"
    path = route.path_format
    for n in names:
        path = path.replace("{" + n + "}", PATH_VALUES[n](victim))
    query = required_query(route)
    unknown = [q for q in query if q not in QUERY_VALUES]
    assert not unknown, f"{route.method} {route.path_format}: add {unknown} to QUERY_VALUES"
    return path, {q: QUERY_VALUES[q](victim) for q in query}


def body_for(route: Route, victim: Victim) -> dict[str, Any] | None:
    make = BODIES.get((route.method, route.path_format))
    if make is not None:
        return make(victim)
    return {} if route.has_body else None


def test_every_route_documents_its_answers() -> None:
    """Each route has a response model and declares, with the one error body, the errors that
    every authenticated route can answer."""
    spec = app.openapi()
    routes = list(api_routes())
    assert len(routes) >= 19
    for route in routes:
        where = f"{route.method} {route.path_format}"
        responses = spec["paths"][route.path_format][route.method.lower()]["responses"]
        assert [c for c in responses if c.startswith("2")], where
        if route.api_route.status_code != 204:
            assert route.api_route.response_model is not None, f"{where}: no response model"
        if (route.method, route.path_format) in PUBLIC:
            continue
        codes = ["401", "503"]
        if (route.method, route.path_format) != ("GET", "/v1/tenants"):
            codes.append("403")
        for code in codes:
            assert code in responses, f"{where} does not declare {code}"
            ref = responses[code]["content"]["application/json"]["schema"]["$ref"]
            assert ref.endswith("/ErrorBody"), (where, code, ref)


@pytest.fixture
def victim(tenant: TenantHandle) -> Victim:
    r = tenant.client.post(f"/v1/tenants/{tenant.slug}/connections", json=OPCUA_CONN)
    assert r.status_code == 201, r.text
    return Victim(tenant, r.json()["id"], r.json()["tags"][0]["tag_id"])


def test_no_route_serves_another_tenant(victim: Victim, make_tenant: Any, api: str) -> None:
    b: TenantHandle = make_tenant()
    anon = httpx.Client(base_url=api, timeout=60)
    checked = []
    for route in api_routes():
        method, key = route.method, (route.method, route.path_format)
        if key in PUBLIC:
            continue
        path, params = request_for(route, victim)
        body = body_for(route, victim)
        if "{tenant}" in route.path_format:
            expected = 403
        else:
            assert key in NOT_TENANT_SCOPED, f"{method} {route.path_format}: tenant-scoped?"
            expected = NOT_TENANT_SCOPED[key]
        r = b.client.request(method, path, params=params, json=body)
        assert r.status_code == expected, (method, path, r.status_code, r.text)
        if expected == 403:  # cluster-admin routes: the key lacks that scope
            assert r.json()["error"] in ("tenant_mismatch", "insufficient_scope"), (method, path)
        r = anon.request(method, path, params=params, json=body)
        assert r.status_code == 401 and r.json()["error"] == "invalid_token", (method, path, r.text)
        assert r.headers["www-authenticate"] == "Bearer"
        checked.append(f"{method} {route.path_format}")
    print(f"\ncross-tenant: {len(checked)} routes refused tenant B's key and no key")
    # A's resources are untouched: B's DELETEs did nothing.
    a = victim.tenant
    one = a.client.get(f"/v1/tenants/{a.slug}/connections/{victim.connection_id}")
    assert one.status_code == 200 and one.json()["tags"][0]["tag_id"] == victim.tag_id
    # A tenant that does not exist looks exactly like one that belongs to someone else.
    r = b.client.get("/v1/tenants/nosuchtenant/connections")
    assert r.status_code == 403 and r.json()["error"] == "tenant_mismatch"
    # Tenant listing shows only the caller's own tenant.
    assert [t["slug"] for t in b.client.get("/v1/tenants").json()] == [b.slug]
    # Physically separate databases: b's database has no connections at all.
    assert b.client.get(f"/v1/tenants/{b.slug}/connections").json() == []
    assert a.db != b.db
    anon.close()


def test_read_key_cannot_use_admin_routes(victim: Victim, api: str) -> None:
    """A read key of the tenant itself: refused as insufficient_scope (never tenant_mismatch)
    wherever it is refused, and refused on every route that changes something."""
    a = victim.tenant
    r = a.client.post(f"/v1/tenants/{a.slug}/keys", json={"name": "ro", "scopes": ["read"]})
    assert r.status_code == 201, r.text
    reader = httpx.Client(base_url=api, timeout=60, headers={"Authorization": f"Bearer {r.json()['api_key']}"})
    for route in api_routes():
        if (route.method, route.path_format) in PUBLIC:
            continue
        path, params = request_for(route, victim)
        r = reader.request(route.method, path, params=params, json=body_for(route, victim))
        if r.status_code == 403:
            assert r.json()["error"] == "insufficient_scope", (route.method, path, r.text)
        elif route.method != "GET" and (route.method, route.path_format) not in READ_SCOPE_POSTS:
            pytest.fail(f"{route.method} {path} let a read key through: {r.status_code} {r.text}")
    reader.close()
