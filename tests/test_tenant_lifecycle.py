"""Tenant and key lifecycle, and quotas, as a provider and a tenant's admin use them: keys listed
without secrets, revoked and expired (refused with 401 `invalid_token` within the replicas' few
seconds of auth cache), last use recorded; a tenant renamed, given quotas that every adding path
honours (409 `quota_exceeded` naming the quota, nothing half-written), deleted softly (its keys and
routes go at once) and purged (its database dropped)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import redis

from ingest.core.config import Settings
from ingest.core.keys import split_api_key
from ingest.simulators.fleet import db_fetch, wait_for
from tests.conftest import TenantHandle


def _opcua(name: str, tags: int) -> dict[str, Any]:
    return {
        "name": name,
        "protocol": "opcua",
        "endpoint": "opc.tcp://127.0.0.1:1/none",
        "enabled": False,
        "tags": [{"name": f"{name}-t{i}", "node_id": f"ns=2;s={name}.T{i}"} for i in range(tags)],
    }


def _with_key(api: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=api, timeout=60, headers={"Authorization": f"Bearer {key}"})


def test_keys_are_listed_revoked_and_expire(tenant: TenantHandle, api: str) -> None:
    base = f"/v1/tenants/{tenant.slug}"
    r = tenant.client.post(f"{base}/connections", json=_opcua("a", 1))
    assert r.status_code == 201, r.text
    latest = f"{base}/latest?tag_id={r.json()['tags'][0]['tag_id']}"  # a hot route, with its auth cache
    r = tenant.client.post(f"{base}/keys", json={"name": "reader", "scopes": ["read"]})
    assert r.status_code == 201, r.text
    reader = r.json()["api_key"]
    soon = datetime.now(UTC) + timedelta(seconds=10)
    r = tenant.client.post(
        f"{base}/keys", json={"name": "brief", "scopes": ["read"], "expires_at": soon.isoformat()}
    )
    assert r.status_code == 201 and r.json()["expires_at"], r.text
    brief = r.json()["api_key"]
    # An expiry must be in the future and carry a zone.
    for bad in ((datetime.now(UTC) - timedelta(minutes=1)).isoformat(), "2030-01-01T00:00:00"):
        r = tenant.client.post(f"{base}/keys", json={"name": "x", "scopes": ["read"], "expires_at": bad})
        assert r.status_code == 422 and r.json()["details"][0]["field"].endswith("expires_at"), r.text

    with _with_key(api, reader) as c, _with_key(api, brief) as b:
        assert c.get(latest).status_code == 200
        # Accepted until its expiry (a loaded machine may already be past it: then refused).
        got = b.get(latest).status_code
        assert got == 200 or (got == 401 and datetime.now(UTC) >= soon), got
        keys = {k["name"]: k for k in tenant.client.get(f"{base}/keys").json()}
        assert set(keys) >= {"initial admin key", "reader", "brief"}
        assert keys["reader"]["last_used_at"] is not None and keys["reader"]["state"] == "active"
        listed = tenant.client.get(f"{base}/keys").text
        assert split_api_key(reader)[1] not in listed and split_api_key(brief)[1] not in listed  # no secret

        r = tenant.client.delete(f"{base}/keys/{keys['reader']['key_id']}")
        assert r.status_code == 200 and r.json()["state"] == "revoked", r.text
        # Every route refuses it within the auth cache's seconds: the hot read route, a
        # registration route and push.
        for path in (latest, f"{base}/connections"):
            wait_for(lambda p=path: c.get(p).status_code == 401, 30, f"revoked key refused on {path}")
        assert c.get(latest).json()["error"] == "invalid_token"
        push = c.post("/v1/ingest/realtime", json={"tenant_id": tenant.slug, "data_points": []})
        assert push.status_code == 401, push.text
        # The short-lived key stops at its expiry.
        wait_for(lambda: b.get(latest).status_code == 401, 60, "expired key refused")
        states = {k["name"]: k["state"] for k in tenant.client.get(f"{base}/keys").json()}
        assert states["reader"] == "revoked" and states["brief"] == "expired"
    # Unknown key ids, and another tenant's, are 404.
    assert tenant.client.delete(f"{base}/keys/sk_nosuchkey").status_code == 404


def test_quotas_hold_on_every_adding_path(tenant: TenantHandle, admin: httpx.Client, stack: Settings) -> None:
    base = f"/v1/tenants/{tenant.slug}"
    # Quotas are the provider's: the tenant's own admin key cannot raise them.
    r = tenant.client.patch(base, json={"max_tags": 1_000_000})
    assert r.status_code == 403 and r.json()["error"] == "insufficient_scope", r.text
    r = admin.patch(base, json={"max_tags": 5, "max_connections": 2, "name": "Renamed"})
    assert r.status_code == 200, r.text
    assert (r.json()["max_tags"], r.json()["max_connections"], r.json()["name"]) == (5, 2, "Renamed")
    assert admin.get(base).json()["name"] == "Renamed"

    r = tenant.client.post(f"{base}/connections", json=_opcua("a", 3))
    assert r.status_code == 201, r.text
    conn_a = r.json()["id"]
    # Registration past max_tags: refused whole, nothing written.
    r = tenant.client.post(f"{base}/connections", json=_opcua("b", 3))
    assert r.status_code == 409, r.text
    assert r.json()["error"] == "quota_exceeded" and r.json()["details"][0]["field"] == "max_tags", r.text
    # Tags added to a connection: the same.
    r = tenant.client.post(
        f"{base}/connections/{conn_a}/tags",
        json={"tags": [{"name": f"x{i}", "node_id": f"ns=2;s=X{i}"} for i in range(3)]},
    )
    assert r.status_code == 409 and r.json()["details"][0]["field"] == "max_tags", r.text
    r = tenant.client.post(f"{base}/connections", json=_opcua("c", 1))
    assert r.status_code == 201, r.text
    # A bulk import: 2 new tags would make 6 > 5; its dry run still reports, the import writes nothing.
    rows = {"tags": [{"name": f"bulk{i}", "node_id": f"ns=2;s=B{i}"} for i in range(2)]}
    r = tenant.client.post(f"{base}/connections/{conn_a}/tags/import", json=rows)
    assert r.status_code == 409 and r.json()["details"][0]["field"] == "max_tags", r.text
    # max_connections: a third device connection is refused.
    r = tenant.client.post(f"{base}/connections", json=_opcua("d", 0))
    assert r.status_code == 409 and r.json()["details"][0]["field"] == "max_connections", r.text
    rows = db_fetch(
        stack.dsn(tenant.db),
        "SELECT (SELECT count(*) FROM tag_mappings WHERE deleted_at IS NULL) AS tags, "
        "(SELECT count(*) FROM scada_connections WHERE deleted_at IS NULL) AS conns",
    )
    assert (rows[0]["tags"], rows[0]["conns"]) == (4, 2)

    # Push auto-registration: 2 new tags would make 6 > 5; nothing is created or written.
    assert tenant.client.patch(f"{base}/push/settings", json={"auto_register": True}).status_code == 200
    now = datetime.now(UTC).isoformat()
    body = {
        "tenant_id": tenant.slug,
        "data_points": [
            {"well_id": "W1", "timestamp": now, "parameter_name": p, "value": 1.0, "unit": "psi"}
            for p in ("p1", "p2")
        ],
    }
    r = tenant.client.post("/v1/ingest/realtime", json=body, headers={"Idempotency-Key": str(uuid.uuid4())})
    assert r.status_code == 409 and r.json()["error"] == "quota_exceeded", r.text
    assert r.json()["details"][0]["field"] == "max_tags", r.text
    rows = db_fetch(stack.dsn(tenant.db), "SELECT count(*) AS n FROM tag_mappings WHERE deleted_at IS NULL")
    assert rows[0]["n"] == 4
    # One new tag fits exactly.
    body["data_points"] = body["data_points"][:1]
    r = tenant.client.post("/v1/ingest/realtime", json=body, headers={"Idempotency-Key": str(uuid.uuid4())})
    assert r.status_code == 200, r.text


def test_delete_then_purge(make_tenant: Any, admin: httpx.Client, api: str, stack: Settings) -> None:
    t: TenantHandle = make_tenant()
    base = f"/v1/tenants/{t.slug}"
    assert t.client.post(f"{base}/connections", json=_opcua("a", 1)).status_code == 201
    # Only the cluster admin deletes.
    r = t.client.delete(base)
    assert r.status_code == 403, r.text
    assert admin.delete(base).status_code == 204
    assert admin.get(base).status_code == 404
    assert t.slug not in {x["slug"] for x in admin.get("/v1/tenants").json()}
    wait_for(lambda: t.client.get(f"{base}/connections").status_code == 401, 30, "deleted tenant's key refused")
    # The slug stays taken; the database stays until purged.
    r = admin.post("/v1/tenants", json={"slug": t.slug, "name": "again"})
    assert r.status_code == 409 and "deleted" in r.json()["message"], r.text
    exists = f"SELECT count(*) AS n FROM pg_database WHERE datname = '{t.db}'"
    assert db_fetch(stack.dsn("postgres"), exists)[0]["n"] == 1
    # An explicit purge drops it, with the delete or after it. Its keys in Redis go with it (by
    # slug and by id), a soft-deleted tenant's stay.
    u: TenantHandle = make_tenant()
    rc = redis.Redis.from_url(stack.redis_url)
    try:
        for who in (t, u):
            rc.hset(f"scada:latest:{who.slug}", "1", "x")
            rc.xadd(f"scada:live:{who.slug}", {"c": "1", "v": "[]"})
            rc.set(f"scada:spool:{who.slug}:rows", 0)
            rc.hset(f"scada:push:settings:{who.id}", "requests_per_minute", 100)
            rc.set(f"scada:push:idem:{who.id}:{'ab' * 20}", "{}", ex=600)
        assert admin.delete(f"/v1/tenants/{u.slug}", params={"purge": "true"}).status_code == 204
        left = sorted(
            k.decode() for k in rc.scan_iter(match="scada:*") if u.slug in k.decode() or u.id in k.decode()
        )
        assert left == []
        kept = [k for k in rc.scan_iter(match="scada:*") if t.slug in k.decode() or t.id in k.decode()]
        assert len(kept) >= 5
        # The tenant deleted before, purged now (its grace period cut short); then it is gone.
        assert admin.delete(base).status_code == 404  # a second delete without purge: nothing to do
        assert admin.delete(base, params={"purge": "true"}).status_code == 204
        assert db_fetch(stack.dsn("postgres"), exists)[0]["n"] == 0
        assert [k for k in rc.scan_iter(match="scada:*") if t.slug in k.decode() or t.id in k.decode()] == []
        assert admin.delete(base, params={"purge": "true"}).status_code == 404
    finally:
        rc.close()
    assert (
        db_fetch(stack.dsn("postgres"), f"SELECT count(*) AS n FROM pg_database WHERE datname = '{u.db}'")[0]["n"]
        == 0
    )
    actions = db_fetch(
        stack.master_dsn,
        "SELECT action FROM audit_log WHERE tenant_id = $1::uuid ORDER BY id",
        u.id,
    )
    assert [a["action"] for a in actions][-2:] == ["tenant.delete", "tenant.purge"]
    detail = db_fetch(
        stack.master_dsn,
        "SELECT detail FROM audit_log WHERE tenant_id = $1::uuid AND action = 'tenant.purge'",
        u.id,
    )
    assert '"redis_keys": 5' in detail[0]["detail"], detail


def _scale_api(settings: Settings, replicas: int) -> None:
    """The running Serve app with ``replicas`` replicas of the API (same code: Serve only adds or
    removes replicas); returns once they all run."""
    from ray import serve

    from serve_app.deploy import APP_NAME, SERVE_LOGGING
    from serve_app.deployment import ApiIngress

    app = ApiIngress.options(num_replicas=replicas).bind(settings)  # type: ignore[attr-defined]
    serve.run(app, name=APP_NAME, route_prefix="/", logging_config=SERVE_LOGGING)

    def running() -> int:
        st = serve.status().applications[APP_NAME].deployments["api"]
        return int(st.replica_states.get("RUNNING", 0))

    wait_for(lambda: running() == replicas, 120, f"{replicas} API replicas running", describe=running)


def test_a_revoked_key_is_refused_by_every_replica(tenant: TenantHandle, api: str, stack: Settings) -> None:
    """Two replicas, each with its own auth cache: after a revocation, every request (the router
    spreads them over both) is refused within the cache's seconds; before it, every one served."""
    base = f"/v1/tenants/{tenant.slug}"
    r = tenant.client.post(f"{base}/connections", json=_opcua("r", 1))
    assert r.status_code == 201, r.text
    latest = f"{base}/latest?tag_id={r.json()['tags'][0]['tag_id']}"
    r = tenant.client.post(f"{base}/keys", json={"name": "everywhere", "scopes": ["read"]})
    assert r.status_code == 201, r.text
    key = r.json()["api_key"]
    key_id = next(k["key_id"] for k in tenant.client.get(f"{base}/keys").json() if k["name"] == "everywhere")
    _scale_api(stack, 2)
    try:
        with _with_key(api, key) as c:
            # 30 requests, each routed to either replica: both learn (and cache) the key.
            assert [c.get(latest).status_code for _ in range(30)] == [200] * 30
            assert tenant.client.delete(f"{base}/keys/{key_id}").status_code == 200
            wait_for(
                lambda: all(c.get(latest).status_code == 401 for _ in range(30)),
                30,
                "the revoked key refused by both replicas, 30 requests in a row",
            )
            # And it stays refused (a refusal is never cached as a success anywhere).
            assert {c.get(latest).status_code for _ in range(30)} == {401}
    finally:
        _scale_api(stack, 1)
