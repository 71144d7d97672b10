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
    "tags": [
        {
            "name": "tubing_pressure",
            "node_id": "ns=2;s=W001.T001",
            "unit": "bar",
            "scaling_factor": 0.1,
            "well": "W001",
        }
    ],
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
    r = tenant.client.post(
        f"/v1/tenants/{tenant.slug}/connections/{conn['id']}/tags",
        json={"tags": [{"name": "casing_pressure", "node_id": "ns=2;s=W001.T002"}]},
    )
    assert r.status_code == 201, r.text
    tags = tenant.client.get(f"/v1/tenants/{tenant.slug}/tags").json()
    assert [t["name"] for t in tags] == ["tubing_pressure", "casing_pressure"]
    r = tenant.client.get(f"/v1/tenants/{tenant.slug}/readings", params={"tag_id": tags[0]["tag_id"]})
    assert r.status_code == 200 and r.json()["series"][0]["points"] == []


# Isolation of every route, read from the app's routes: tests/test_api_isolation.py.


def test_scopes_are_enforced(tenant: TenantHandle, api: str) -> None:
    r = tenant.client.post(f"/v1/tenants/{tenant.slug}/keys", json={"name": "dashboard", "scopes": ["read"]})
    assert r.status_code == 201
    with httpx.Client(
        base_url=api, timeout=30, headers={"Authorization": f"Bearer {r.json()['api_key']}"}
    ) as reader:
        assert reader.get(f"/v1/tenants/{tenant.slug}/connections").status_code == 200
        r = reader.post(f"/v1/tenants/{tenant.slug}/connections", json=OPCUA_CONN)
        assert r.status_code == 403 and r.json()["error"] == "insufficient_scope"
        assert "admin" in r.json()["message"]


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"endpoint": "http://example"}, "endpoint"),
        ({"protocol": "bacnet"}, "protocol"),
        ({"publishing_interval_ms": 1}, "publishing_interval_ms"),
        ({"tags": [{"name": "t", "node_id": "not a node id"}]}, "node_id"),
        ({"tags": [{"name": "t"}]}, "node_id"),
        ({"tags": [{"name": "t", "node_id": "ns=2;s=A", "valid_min": 5, "valid_max": 1}]}, "valid_min"),
        ({"name": ""}, "name"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_wrong_payloads_get_422_naming_the_field(tenant: TenantHandle, patch: dict[str, Any], field: str) -> None:
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
    r = tenant.client.get(
        base, params={"tag_id": 1, "start": "2026-01-02T00:00:00Z", "end": "2026-01-01T00:00:00Z"}
    )
    assert r.status_code == 422 and "start" in r.text


def test_duplicate_tenant_slug_is_409(admin: httpx.Client, tenant: TenantHandle) -> None:
    r = admin.post("/v1/tenants", json={"slug": tenant.slug, "name": "again"})
    assert r.status_code == 409 and "slug" in r.text
    r = admin.post("/v1/tenants", json={"slug": "Bad Slug!", "name": "x"})
    assert r.status_code == 422 and "slug" in r.text


def test_ids_out_of_their_column_range_are_4xx(tenant: TenantHandle) -> None:
    base = f"/v1/tenants/{tenant.slug}"
    cases = [
        ("GET", f"{base}/readings", {"tag_id": 3_000_000_000}, None, "tag_id"),
        ("GET", f"{base}/readings", {"tag_id": 0}, None, "tag_id"),
        ("GET", f"{base}/readings", {"tag_id": 1, "limit": 10**9}, None, "limit"),
        ("GET", f"{base}/readings", {"tag_id": 1, "start": "0001-01-01T00:00:00+05:00"}, None, "start"),
        ("PATCH", f"{base}/tags/381103392619", None, {"unit": "bar"}, "tag_id"),
        ("DELETE", f"{base}/tags/-1", None, None, "tag_id"),
        ("GET", f"{base}/connections/not-a-uuid", None, None, "connection_id"),
        ("POST", f"{base}/quarantine/{'x' * 201}/replay", None, None, "batch_id"),
        ("GET", "/v1/tenants/NOT%20A%20SLUG", None, None, "tenant"),
    ]
    for method, path, params, body, field in cases:
        r = tenant.client.request(method, path, params=params, json=body)
        assert r.status_code == 422, (method, path, params, r.status_code, r.text)
        err = r.json()
        assert err["error"] == "validation_error", err
        assert field in [d["field"] for d in err["details"]], err
    r = tenant.client.get(f"{base}/connections/00000000-0000-0000-0000-000000000000")
    assert r.status_code == 404 and r.json()["error"] == "connection_not_found"
    r = tenant.client.patch(f"{base}/tags/2147483647", json={"unit": "bar"})
    assert r.status_code == 404 and r.json()["error"] == "tag_not_found"
    r = tenant.client.post(f"{base}/quarantine/no-such-batch/replay")
    assert r.status_code == 404 and r.json()["error"] == "batch_not_found"


def test_validation_errors_name_fields_and_never_echo_values(tenant: TenantHandle) -> None:
    secret = "hunter2-do-not-echo"
    body = {**OPCUA_CONN, "username": "op", "password": secret}  # no security mode: refused
    r = tenant.client.post(f"/v1/tenants/{tenant.slug}/connections", json=body)
    assert r.status_code == 422 and secret not in r.text
    assert r.json()["error"] == "validation_error" and r.json()["details"][0]["field"] == "username"
    body = {**OPCUA_CONN, "password": secret * 40, "publishing_interval_ms": "often"}
    r = tenant.client.post(f"/v1/tenants/{tenant.slug}/connections", json=body)
    assert r.status_code == 422 and secret not in r.text
    fields = {d["field"] for d in r.json()["details"]}
    assert {"password", "publishing_interval_ms"} <= fields, r.text


def test_error_bodies_have_one_shape(tenant: TenantHandle, api: str, admin: httpx.Client) -> None:
    with httpx.Client(base_url=api, timeout=30) as anon:
        answers = [
            anon.get("/v1/tenants"),
            anon.get("/v1/nothing-here"),
            admin.get("/v1/tenants/nosuchtenant"),
            admin.post("/v1/tenants", json={"slug": tenant.slug, "name": "again"}),
        ]
    for r, code in zip(answers, ["invalid_token", "not_found", "tenant_not_found", "tenant_exists"], strict=True):
        body = r.json()
        assert set(body) == {"error", "message", "details"}, body
        assert body["error"] == code, body


def test_nul_characters_are_refused_not_a_500(tenant: TenantHandle) -> None:
    """PostgreSQL text cannot hold U+0000 (found by the schemathesis run)."""
    base = f"/v1/tenants/{tenant.slug}"
    r = tenant.client.post(f"{base}/keys", json={"name": "a\u0000b", "scopes": ["read"]})
    assert r.status_code == 422 and r.json()["details"][0]["field"] == "name", r.text
    r = tenant.client.get(f"{base}/latest", params={"well": "W\u00001", "tag": "x"})
    assert 400 <= r.status_code < 500, r.text
