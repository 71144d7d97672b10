"""The HTTP API through the real Serve app: credentials, isolation, validation errors."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import TenantHandle

OPCUA_CONN: dict[str, Any] = {
    "name": "rtu-1",
    "protocol": "opcua",
    "endpoint": "opc.tcp://127.0.0.1:1/never",
    "publishing_interval_ms": 500,
    "enabled": False,
    "tags": [{"name": "tubing_pressure", "node_id": "ns=2;s=W001.T001", "unit": "bar",
              "scaling_factor": 0.1, "well": "W001"}],
}


def test_missing_or_bad_credential_is_401(api: str) -> None:
    with httpx.Client(base_url=api, timeout=30) as anon:
        r = anon.get("/v1/tenants")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        r = anon.get("/v1/tenants", headers={"Authorization": "Bearer sk_nope_wrong"})
        assert r.status_code == 401
        r = anon.post("/v1/tenants", json={"slug": "x"}, headers={"Authorization": "Basic abc"})
        assert r.status_code == 401


def test_only_the_cluster_admin_creates_tenants(tenant: TenantHandle) -> None:
    r = tenant.client.post("/v1/tenants", json={"slug": "sneaky", "name": "x"})
    assert r.status_code == 403


def test_register_list_and_read_back(tenant: TenantHandle) -> None:
    r = tenant.client.post(f"/v1/tenants/{tenant.slug}/connections", json=OPCUA_CONN)
    assert r.status_code == 201, r.text
    conn = r.json()
    assert conn["tags"][0]["tag_id"] >= 1 and conn["tags"][0]["scaling_factor"] == 0.1
    listed = tenant.client.get(f"/v1/tenants/{tenant.slug}/connections").json()
    assert [c["id"] for c in listed] == [conn["id"]] and listed[0]["tag_count"] == 1
    one = tenant.client.get(f"/v1/tenants/{tenant.slug}/connections/{conn['id']}").json()
    assert one["tags"][0]["node_id"] == "ns=2;s=W001.T001"
    assert "password" not in one and "password_enc" not in one
    r = tenant.client.post(f"/v1/tenants/{tenant.slug}/connections/{conn['id']}/tags",
                           json={"tags": [{"name": "casing_pressure", "node_id": "ns=2;s=W001.T002"}]})
    assert r.status_code == 201, r.text
    tags = tenant.client.get(f"/v1/tenants/{tenant.slug}/tags").json()
    assert [t["name"] for t in tags] == ["tubing_pressure", "casing_pressure"]
    r = tenant.client.get(f"/v1/tenants/{tenant.slug}/readings",
                          params={"tag_id": tags[0]["tag_id"]})
    assert r.status_code == 200 and r.json()["series"][0]["points"] == []


def test_two_tenants_two_databases_no_cross_reads(make_tenant: Any, admin: httpx.Client) -> None:
    a: TenantHandle = make_tenant()
    b: TenantHandle = make_tenant()
    r = a.client.post(f"/v1/tenants/{a.slug}/connections", json=OPCUA_CONN)
    assert r.status_code == 201
    conn_a = r.json()
    tag_a = conn_a["tags"][0]["tag_id"]
    # Every tenant route refuses the other tenant's key.
    paths = [
        ("GET", f"/v1/tenants/{a.slug}", None),
        ("GET", f"/v1/tenants/{a.slug}/connections", None),
        ("GET", f"/v1/tenants/{a.slug}/connections/{conn_a['id']}", None),
        ("DELETE", f"/v1/tenants/{a.slug}/connections/{conn_a['id']}", None),
        ("POST", f"/v1/tenants/{a.slug}/connections", OPCUA_CONN),
        ("POST", f"/v1/tenants/{a.slug}/connections/{conn_a['id']}/tags",
         {"tags": [{"name": "x", "node_id": "ns=2;s=X"}]}),
        ("GET", f"/v1/tenants/{a.slug}/tags", None),
        ("GET", f"/v1/tenants/{a.slug}/readings?tag_id={tag_a}", None),
        ("POST", f"/v1/tenants/{a.slug}/keys", {"name": "k", "scopes": ["read"]}),
        ("PUT", f"/v1/tenants/{a.slug}/status", {"status": "SUSPENDED"}),
        ("GET", "/v1/status", None),
    ]
    for method, path, body in paths:
        r = b.client.request(method, path, json=body)
        assert r.status_code == 403, (method, path, r.status_code, r.text)
    # A tenant that does not exist looks exactly like one that belongs to someone else.
    assert b.client.get("/v1/tenants/nosuchtenant/connections").status_code == 403
    # Tenant listing shows only the caller's own tenant.
    assert [t["slug"] for t in b.client.get("/v1/tenants").json()] == [b.slug]
    # Physically separate databases: b's database has no connections at all.
    assert b.client.get(f"/v1/tenants/{b.slug}/connections").json() == []
    assert a.db != b.db


def test_scopes_are_enforced(tenant: TenantHandle, api: str) -> None:
    r = tenant.client.post(f"/v1/tenants/{tenant.slug}/keys",
                           json={"name": "dashboard", "scopes": ["read"]})
    assert r.status_code == 201
    with httpx.Client(base_url=api, timeout=30,
                      headers={"Authorization": f"Bearer {r.json()['api_key']}"}) as reader:
        assert reader.get(f"/v1/tenants/{tenant.slug}/connections").status_code == 200
        r = reader.post(f"/v1/tenants/{tenant.slug}/connections", json=OPCUA_CONN)
        assert r.status_code == 403 and "admin" in r.json()["detail"]


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"endpoint": "http://example"}, "endpoint"),
        ({"protocol": "bacnet"}, "protocol"),
        ({"publishing_interval_ms": 1}, "publishing_interval_ms"),
        ({"tags": [{"name": "t", "node_id": "not a node id"}]}, "node_id"),
        ({"tags": [{"name": "t"}]}, "node_id"),
        ({"tags": [{"name": "t", "node_id": "ns=2;s=A", "valid_min": 5, "valid_max": 1}]},
         "valid_min"),
        ({"name": ""}, "name"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_wrong_payloads_get_422_naming_the_field(
    tenant: TenantHandle, patch: dict[str, Any], field: str
) -> None:
    body = {**OPCUA_CONN, **patch}
    r = tenant.client.post(f"/v1/tenants/{tenant.slug}/connections", json=body)
    assert r.status_code == 422, r.text
    assert field in r.text


def test_bad_query_parameters_get_422(tenant: TenantHandle) -> None:
    base = f"/v1/tenants/{tenant.slug}/readings"
    r = tenant.client.get(base)
    assert r.status_code == 422 and "tag_id" in r.text
    r = tenant.client.get(base, params={"tag_id": 1, "start": "yesterday"})
    assert r.status_code == 422 and "start" in r.text
    r = tenant.client.get(base, params={"tag_id": 999999})
    assert r.status_code == 422 and "tag_id" in r.text
    r = tenant.client.get(base, params={"tag_id": 1, "start": "2026-01-02T00:00:00Z",
                                        "end": "2026-01-01T00:00:00Z"})
    assert r.status_code == 422 and "start" in r.text


def test_duplicate_tenant_slug_is_409(admin: httpx.Client, tenant: TenantHandle) -> None:
    r = admin.post("/v1/tenants", json={"slug": tenant.slug, "name": "again"})
    assert r.status_code == 409 and "slug" in r.text
    r = admin.post("/v1/tenants", json={"slug": "Bad Slug!", "name": "x"})
    assert r.status_code == 422 and "slug" in r.text
