"""The hot reads (serve_app.hot_reads) answer exactly what the routes answer: the same requests,
valid and not, sent to the app in this process with the middleware on and off, against the real
stack's databases and Redis, give the same status, type and body; the valid ones were answered
by the middleware, the rest referred to the routes."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from ingest.core.config import Settings
from ingest.core.metrics import Metrics
from serve_app import hot_reads
from serve_app.app import app
from serve_app.hot_reads import HotReadCounts
from serve_app.state import ApiState
from tests.conftest import TenantHandle
from tests.test_read_api import CONN, Feed


@pytest.fixture
def local(stack: Settings) -> Iterator[TestClient]:
    before = getattr(app.state, "api", None)
    app.state.api = ApiState(stack)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client
    app.state.hot_reads = True
    app.state.api = before


def _same(r: Any) -> tuple[int, str, Any]:
    body = r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text
    if isinstance(body, list):  # latest: the age is the clock's
        body = [{k: v for k, v in x.items() if k != "age_s"} for x in body]
    return r.status_code, r.headers.get("content-type", ""), body


def test_hot_reads_answer_as_the_routes_do(
    tenant: TenantHandle, make_tenant: Any, stack: Settings, local: TestClient
) -> None:
    r = tenant.client.post(f"/v1/tenants/{tenant.slug}/connections", json=CONN)
    assert r.status_code == 201, r.text
    ids = {t["name"]: t["tag_id"] for t in r.json()["tags"]}
    tp, cp, st = ids["tubing_pressure"], ids["casing_pressure"], ids["status"]
    feed = Feed(stack, tenant.slug)
    end = datetime.now(UTC).replace(microsecond=0)
    t0 = end - timedelta(hours=3)
    feed.numeric([(tp, t0 + timedelta(seconds=30 * k), float(k), 0) for k in range(360)])
    feed.numeric([(cp, t0 + timedelta(seconds=30 * k), -float(k), 0) for k in range(360)])
    feed.text([(st, end - timedelta(minutes=5), "RUNNING")])
    other = make_tenant()
    s = tenant.slug
    key = {"Authorization": f"Bearer {tenant.key}"}
    span = {"start": t0.isoformat(), "end": end.isoformat()}
    valid: list[tuple[str, dict[str, Any], dict[str, str]]] = [
        (f"/v1/tenants/{s}/latest", {"tag_id": [tp, cp, st]}, key),
        (f"/v1/tenants/{s}/latest", {"well": "W001"}, key),
        (f"/v1/tenants/{s}/latest", {"well": "W001", "tag": ["status", "tubing_pressure"]}, key),
        (f"/v1/tenants/{s}/readings", {"tag_id": [tp, cp], **span}, key),
        (f"/v1/tenants/{s}/readings", {"tag_id": tp, "resolution": "raw", "limit": 50, **span}, key),
        (f"/v1/tenants/{s}/readings", {"tag_id": st, "resolution": "raw", **span}, key),
        (f"/v1/tenants/{s}/readings", {"well": "W001", "tag": "tubing_pressure", "resolution": "1h", **span}, key),
        (f"/v1/tenants/{s}/readings", {"tag_id": tp, "resolution": "1d", "days": "utc", **span}, key),
        (f"/v1/tenants/{s}/readings", {"tag_id": tp, "max_points": 10, **span}, key),
        (
            f"/v1/tenants/{s}/readings",
            {"tag_id": tp, "start": t0.strftime("%Y-%m-%dT%H:%M:%SZ"), "end": end.isoformat()},
            key,
        ),
    ]
    # Refused by the routes, or (a time without a zone, CSV) not of the forms the middleware takes.
    invalid: list[tuple[str, dict[str, Any], dict[str, str]]] = [
        (f"/v1/tenants/{s}/latest", {"tag_id": [tp, 2_000_000]}, key),  # no such tag
        (f"/v1/tenants/{s}/latest", {"tag_id": "0"}, key),
        (f"/v1/tenants/{s}/latest", {"tag_id": "x1"}, key),
        (f"/v1/tenants/{s}/latest", {"well": "nowhere"}, key),
        (f"/v1/tenants/{s}/latest", {}, key),
        (f"/v1/tenants/{s}/latest", {"tag_id": tp}, {"Authorization": f"Bearer {other.key}"}),
        (f"/v1/tenants/{s}/latest", {"tag_id": tp}, {"Authorization": "Bearer nope"}),
        (f"/v1/tenants/{s}/latest", {"tag_id": tp}, {}),
        (f"/v1/tenants/{s}/readings", {"tag_id": tp, "start": end.isoformat(), "end": t0.isoformat()}, key),
        (f"/v1/tenants/{s}/readings", {"tag_id": tp, "start": "2026-01-01T00:00:00", **{"end": span["end"]}}, key),
        (f"/v1/tenants/{s}/readings", {"tag_id": tp, "start": "0001-01-01T00:00:00+00:00"}, key),
        (f"/v1/tenants/{s}/readings", {"tag_id": tp, "resolution": "5m", **span}, key),
        (f"/v1/tenants/{s}/readings", {"tag_id": tp, "limit": 0, **span}, key),
        (f"/v1/tenants/{s}/readings", {"tag_id": tp, "cursor": "not-a-cursor", **span}, key),
        (f"/v1/tenants/{s}/readings", {"tag_id": tp, "max_points": 100_001, **span}, key),
        (f"/v1/tenants/{s}/readings", {"tag_id": [tp], "well": "W001", **span}, key),
        (f"/v1/tenants/{s}/readings", {"tag_id": tp, **span}, {**key, "Accept": "text/csv"}),
        (f"/v1/tenants/{other.slug}/readings", {"tag_id": tp, **span}, key),
    ]
    # A cursor from the raw page above, and the same cursor on another query.
    page = local.get(f"/v1/tenants/{s}/readings", params=valid[4][1], headers=key).json()
    assert page["next"], page
    valid.append((f"/v1/tenants/{s}/readings", {**valid[4][1], "cursor": page["next"]}, key))
    invalid.append((f"/v1/tenants/{s}/readings", {"tag_id": cp, "cursor": page["next"], **span}, key))

    counts = app.state.api.part(HotReadCounts)
    for kind, cases in (("answered", valid), ("referred", invalid)):
        for path, params, headers in cases:
            app.state.hot_reads = False
            plain = _same(local.get(path, params=params, headers=headers))
            app.state.hot_reads = True
            local.get(path, params=params, headers=headers)  # the route remembers the key
            answered = counts.answered
            hot = _same(local.get(path, params=params, headers=headers))
            assert hot == plain, (path, params)
            assert (counts.answered == answered + 1) == (kind == "answered"), (kind, path, params, hot[:2])
            if kind == "answered":
                assert plain[0] == 200, (path, params, plain)


def test_hot_readings_are_byte_for_byte_the_routes(
    tenant: TenantHandle, stack: Settings, local: TestClient
) -> None:
    """The same bytes, not only the same JSON (the encoding is the route's)."""
    r = tenant.client.post(f"/v1/tenants/{tenant.slug}/connections", json=CONN)
    tp = next(t["tag_id"] for t in r.json()["tags"] if t["name"] == "tubing_pressure")
    end = datetime.now(UTC)
    Feed(stack, tenant.slug).numeric([(tp, end - timedelta(seconds=k), 0.1 * k, 0) for k in range(1, 100)])
    params = {"tag_id": tp, "start": (end - timedelta(minutes=5)).isoformat(), "end": end.isoformat()}
    path, key = f"/v1/tenants/{tenant.slug}/readings", {"Authorization": f"Bearer {tenant.key}"}
    app.state.hot_reads = False
    plain = local.get(path, params=params, headers=key)
    app.state.hot_reads = True
    local.get(path, params=params, headers=key)
    hot = local.get(path, params=params, headers=key)
    assert hot.status_code == plain.status_code == 200
    assert hot.content == plain.content and len(orjson.loads(hot.content)["series"][0]["points"]) == 99
    assert hot.headers["content-type"] == plain.headers["content-type"] == "application/json"
    assert hot.headers["content-length"] == plain.headers["content-length"]


class _Recorded:
    def __init__(self) -> None:
        self.calls: list[tuple[float, dict[str, str] | None]] = []

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        self.calls.append((value, tags))


def test_counts_reach_the_metrics_as_deltas_at_most_every_flush(monkeypatch: pytest.MonkeyPatch) -> None:
    hot, cache = _Recorded(), _Recorded()
    monkeypatch.setattr(Metrics, "get", classmethod(lambda cls: SimpleNamespace(hot_reads=hot, read_cache=cache)))
    counts = ApiState(Settings()).part(HotReadCounts)
    counts.count("latest", "answered")
    counts.count("readings", "referred")
    assert hot.calls == []  # within FLUSH_S of the last flush: only counted
    counts.rollups.hits, counts.rollups.misses = 5, 1
    monkeypatch.setattr(hot_reads, "FLUSH_S", 0.0)
    counts.count("latest", "answered")
    assert sorted((v, sorted(t.items())) for v, t in hot.calls if t) == [
        (1, [("kind", "readings"), ("outcome", "referred")]),
        (2, [("kind", "latest"), ("outcome", "answered")]),
    ]
    assert sorted(cache.calls, key=str) == [(1, {"outcome": "miss"}), (5, {"outcome": "hit"})]
    hot.calls.clear()
    cache.calls.clear()
    counts.rollups.hits = 7
    counts.count("latest", "answered")  # only what is new since the last flush
    assert hot.calls == [(1, {"kind": "latest", "outcome": "answered"})]
    assert cache.calls == [(2, {"outcome": "hit"})]
    assert counts.answered == 3
