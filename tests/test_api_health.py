"""/healthz: master database, Redis and coordinator reported one by one; 503 names what is down."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from ingest.core.config import Settings
from ingest.core.net import free_port
from serve_app.app import app
from serve_app.state import ApiState


def test_healthy_stack_reports_each_component(api: str) -> None:
    r = httpx.get(f"{api}/healthz", timeout=30)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "ok": True,
        "checks": {
            "master_db": {"ok": True, "error": None},
            "redis": {"ok": True, "error": None},
            "coordinator": {"ok": True, "error": None},
        },
    }


@pytest.fixture
def local_app() -> Iterator[TestClient]:
    """The app in this process, so its state can point at services that are down."""
    before = getattr(app.state, "api", None)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client
    app.state.api = before


def _answer(client: TestClient, settings: Settings) -> httpx.Response:
    app.state.api = ApiState(settings)
    return client.get("/healthz")


def test_master_down_is_a_503_naming_it(local_app: TestClient, api: str, stack: Settings) -> None:
    r = _answer(local_app, stack.model_copy(update={"pg_port": free_port()}))
    assert r.status_code == 503 and r.headers["retry-after"], r.text
    body = r.json()
    assert body["error"] == "unavailable" and body["message"] == "down: master_db", body
    assert [d["field"] for d in body["details"]] == ["master_db"]
    assert body["checks"]["redis"]["ok"] and body["checks"]["coordinator"]["ok"], body


def test_everything_down_names_everything(local_app: TestClient, api: str, stack: Settings) -> None:
    down = stack.model_copy(
        update={"pg_port": free_port(), "redis_port": free_port(), "namespace": "no-such-namespace"}
    )
    r = _answer(local_app, down)
    assert r.status_code == 503, r.text
    assert {d["field"] for d in r.json()["details"]} == {"master_db", "redis", "coordinator"}
    assert all(c["error"] for c in r.json()["checks"].values()), r.text
    # Any other route answers the one error body with 503 too, never a plain-text 500.
    r = local_app.get("/v1/tenants", headers={"Authorization": f"Bearer {stack.admin_key}"})
    assert r.status_code == 503 and r.json()["error"] == "storage_unavailable", r.text
    assert r.headers["retry-after"]
