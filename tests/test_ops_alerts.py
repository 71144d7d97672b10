"""Alert rules: valid for Prometheus, each proven to fire and to stay quiet (promtool), and every
metric they read declared in the catalog under the name Ray exports."""

from __future__ import annotations

import shutil
import subprocess

import yaml

from ingest.core.metrics import Metrics
from ingest.core.metrics_catalog import CATALOG, Kind, exported_names, spec_for_series
from tests.ops_helpers import ALERT_TESTS, ALERTS, DEPLOY, alert_rules, metric_names

# Ray Serve's own proxy metrics (ray/serve/_private/request_ingress_metrics.py in Ray 2.60).
SERVE_METRICS = {
    "ray_serve_num_http_requests_total",
    "ray_serve_num_http_error_requests_total",
    "ray_serve_http_request_latency_ms_bucket",
}


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    assert exe, "promtool missing: scripts/bootstrap.sh installs Debian's prometheus package"
    return subprocess.run([exe, *args], cwd=DEPLOY, capture_output=True, text=True, timeout=120)


def test_rules_file_is_valid() -> None:
    r = _promtool("check", "rules", ALERTS.name)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in r.stdout


def test_every_alert_has_a_firing_and_a_quiet_case_and_they_pass() -> None:
    cases = [c for t in yaml.safe_load(ALERT_TESTS.read_text())["tests"] for c in t.get("alert_rule_test", [])]
    for rule in alert_rules():
        mine = [c for c in cases if c["alertname"] == rule["alert"]]
        assert any(c.get("exp_alerts") for c in mine), f"{rule['alert']}: no firing case"
        assert any(not c.get("exp_alerts") for c in mine), f"{rule['alert']}: no quiet case"
    r = _promtool("test", "rules", ALERT_TESTS.name)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_the_alerts_cover_the_failures_an_operator_pages_on() -> None:
    names = {r["alert"] for r in alert_rules()}
    assert names >= {
        "ScadaSpoolFilling",
        "ScadaGapsRecorded",
        "ScadaWriterFailing",
        "ScadaNoIngest",
        "ScadaDeviceDown",
        "ScadaApiErrors",
        "ScadaRollupLag",
        "ScadaLiveConflation",
        "ScadaPushThrottled",
    }


def test_every_metric_the_rules_read_is_declared_under_its_exported_name() -> None:
    for rule in alert_rules():
        for name in metric_names(rule["expr"]):
            assert spec_for_series(name) is not None or name in SERVE_METRICS, (
                f"{rule['alert']} reads {name}: neither in ingest/metrics_catalog.py "
                f"(exported as ray_<name>, counters with _total) nor a Ray Serve metric"
            )


def test_catalog_and_metrics_class_declare_the_same_metrics() -> None:
    declared = {a for a in Metrics.__annotations__ if not a.startswith("_")}
    assert declared == {s.attr for s in CATALOG}
    assert len({s.name for s in CATALOG}) == len(CATALOG)
    for s in CATALOG:
        assert s.name.startswith("scada_"), s.name
        assert not {"tag", "tag_id", "connection", "connection_id"} & set(s.labels), s.name
        assert (s.kind is Kind.HISTOGRAM) == bool(s.boundaries), s.name
        assert all(n.startswith("ray_scada_") for n in exported_names(s))
