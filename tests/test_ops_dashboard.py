"""The Grafana dashboard: importable with a data-source input, filtered by a tenant variable, and
showing what an operator watches. (That its queries run and name exported metrics is proven
against a live stack and a real Prometheus in tests/test_ops_metrics.py.)"""

from __future__ import annotations

import json

from ingest.core.metrics_catalog import spec_for_series
from tests.ops_helpers import DASHBOARD, dashboard_exprs, metric_names
from tests.test_ops_alerts import SERVE_METRICS


def _board() -> dict:  # type: ignore[type-arg]
    board: dict = json.loads(DASHBOARD.read_text())  # type: ignore[type-arg]
    return board


def test_datasource_is_an_input_and_every_query_uses_it() -> None:
    board = _board()
    assert [i["pluginId"] for i in board["__inputs"]] == ["prometheus"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for p in board["panels"]:
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}", p["title"]


def test_tenant_variable_filters_every_per_tenant_query() -> None:
    board = _board()
    tenant = {v["name"]: v for v in board["templating"]["list"]}["tenant"]
    assert tenant["includeAll"] and tenant["multi"] and tenant["allValue"] == ".*"
    assert "label_values(ray_scada_readings_ingested_total, tenant)" in tenant["definition"]
    for p in board["panels"]:
        for t in p["targets"]:
            names = metric_names(t["expr"])
            specs = [spec_for_series(n) for n in names if n not in SERVE_METRICS]
            assert all(specs), (p["title"], names)
            if any(s is not None and "tenant" in s.labels for s in specs):
                assert 'tenant=~"$tenant"' in t["expr"], p["title"]


def test_panels_an_operator_needs() -> None:
    titles = {p["title"] for p in _board()["panels"]}
    assert titles >= {
        "Ingest rate",
        "Rejects and flags by reason",
        "Spool depth",
        "DB write p99",
        "End-to-end latency",
        "Device sessions by state",
        "Gaps recorded",
        "Push ingest 429 / 413",
        "Live subscribers",
    }
    exprs = " ".join(dashboard_exprs())
    assert "histogram_quantile(0.99" in exprs and 'status_code=~"413|429"' in exprs
