"""Metrics as an operator sees them: real ingest through the live stack, then Ray's metrics
endpoints scraped, and a real Prometheus that finds the stack through Ray's service-discovery
file. Every metric the alert rules and the Grafana dashboard read must be exported under the name
they use (ray_ prefix, _total on counters), labelled with the tenant that caused it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ingest.core.config import Settings
from ingest.core.metrics_catalog import Emitted, spec_for_series
from ingest.core.models import Quality, quality_as_int4
from ingest.core.net import free_port
from ingest.write.fanout import live_key
from tests.conftest import TenantHandle
from tests.helpers import SimProcess, db_fetch, wait_for
from tests.ops_helpers import alert_rules, dashboard_exprs, used_metric_names
from tests.test_ops_alerts import SERVE_METRICS

SD_FILE = "prom_metrics_service_discovery.json"
# Metrics this test makes happen on purpose (besides normal ingest), and how:
TRIGGERED = {
    "scada_validation_errors_total",  # a tag whose valid range rejects the simulator's values
    "scada_write_failures_total",  # a CHECK constraint the database refuses a batch with
    "scada_device_errors_total",  # a Modbus device on a port nobody listens on
    "scada_live_subscribers",  # a live (SSE) subscriber that reads its snapshot and leaves
    "scada_gaps_total",  # an edit restarts the OPC UA session while the simulator publishes
    "scada_live_conflated_total",  # a subscriber resuming from the stream's start overflows its queue
}
# Event-only metrics the rules read that this run does not cause. Adding one to a rule means
# causing it here, or naming it here on purpose.
NOT_TRIGGERED: set[str] = set()


def _series(text: str) -> list[tuple[str, str]]:
    """(series name, raw label text) of every sample line of a Prometheus exposition."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, rest = line.partition("{")
        out.append((name.split(" ")[0], rest.rpartition("}")[0] if rest else ""))
    return out


def _metrics_targets() -> list[str]:
    import ray

    return [f"{n['NodeManagerAddress']}:{n['MetricsExportPort']}" for n in ray.nodes() if n["Alive"]]


def _scrape() -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for target in _metrics_targets():
        try:
            out += _series(httpx.get(f"http://{target}/metrics", timeout=10).text)
        except httpx.HTTPError:
            pass  # a node that just died; the others still count
    return out


@pytest.fixture(scope="module")
def ingesting(api: str, admin: httpx.Client, stack: Settings) -> Iterator[dict[str, Any]]:
    """One tenant streaming from a simulator, with a rejected tag, a refused batch and a dead
    device, so that the event metrics the alerts read have happened too."""
    slug = f"ops{uuid.uuid4().hex[:8]}"
    r = admin.post("/v1/tenants", json={"slug": slug, "name": "Ops metrics"})
    assert r.status_code == 201, r.text
    tenant = TenantHandle(api, r.json())
    dsn = stack.dsn(tenant.db)
    # Value 7 is refused by the database: batches holding it are quarantined (a write failure).
    db_fetch(dsn, "ALTER TABLE scada_readings ADD CONSTRAINT ops_test_no_seven CHECK (value <> 7)")
    sim = SimProcess(1, 4, 50)
    try:
        body = sim.connection_body("ops-pad")
        body["tags"][0].update({"valid_max": 3.0, "out_of_range": "reject"})
        r = tenant.client.post(f"/v1/tenants/{tenant.slug}/connections", json=body)
        assert r.status_code == 201, r.text
        opcua_ids = [t["tag_id"] for t in r.json()["tags"]][1:]  # the first rejects its values
        opcua_conn = r.json()["id"]
        dead = {
            "name": "dead-plc",
            "protocol": "modbus",
            "endpoint": f"tcp://127.0.0.1:{free_port()}",
            "publishing_interval_ms": 200,
            "tags": [
                {
                    "name": "p1",
                    "modbus_unit": 1,
                    "modbus_register": "holding",
                    "modbus_address": 0,
                    "modbus_data_type": "uint16",
                }
            ],
        }
        r = tenant.client.post(f"/v1/tenants/{tenant.slug}/connections", json=dead)
        assert r.status_code == 201, r.text
        # The simulator counts 1, 2, 3... from its resume: resume once subscribed, so 7 is seen.
        wait_for(
            lambda: (
                db_fetch(
                    dsn,
                    "SELECT count(DISTINCT tag_id) AS n FROM scada_readings WHERE tag_id = ANY($1::int[])",
                    opcua_ids,
                )[0]["n"]
                == len(opcua_ids)
            ),
            120,
            "subscription delivering",
        )
        sim.resume()
        # The simulator's own tags past 20, so past the refused 7: the dead device's NaN rows
        # compare greater than any number in PostgreSQL and must not end this wait, or the edit
        # below restarts the session while the batch holding 7 (quarantined whole) is being cut
        # and the session's gap markers go into quarantine with it.
        wait_for(
            lambda: (
                db_fetch(
                    dsn,
                    "SELECT count(*) AS n FROM scada_readings WHERE tag_id = ANY($1::int[]) AND value > 20 "
                    "AND value <> 'NaN'",
                    opcua_ids,
                )[0]["n"]
                > 0
            ),
            120,
            "readings landed",
        )
        _provoke_gap_markers(tenant, opcua_conn, dsn)
        _provoke_conflation(tenant, stack)
        # A 404 and a 401 through the API, so Ray Serve's request metrics carry error codes too.
        assert tenant.client.get(f"/v1/tenants/{tenant.slug}/connections/{uuid.uuid4()}").status_code == 404
        assert httpx.get(f"{api}/v1/tenants", timeout=30).status_code == 401
        # A live subscriber: the gauge of subscribers gets its series for the tenant.
        with tenant.client.stream(
            "GET", f"/v1/tenants/{tenant.slug}/stream", headers={"Accept": "text/event-stream"}
        ) as live:
            assert live.status_code == 200
            assert any(line.startswith("event: snapshot") for line in live.iter_lines())
        yield {"tenant": tenant.slug, "dsn": dsn}
    finally:
        sim.kill()
        admin.delete(f"/v1/tenants/{slug}")  # its writer retired; the database kept
        tenant.client.close()


def _provoke_gap_markers(tenant: TenantHandle, conn_id: str, dsn: str) -> None:
    """An edit restarts the session while the simulator goes on publishing (every 50 ms): the new
    session's first reading of each tag is newer than the newest stored one, so it writes a gap
    marker per tag (the readings in between were never read), and scada_gaps_total counts them."""
    r = tenant.client.patch(
        f"/v1/tenants/{tenant.slug}/connections/{conn_id}", json={"publishing_interval_ms": 60}
    )
    assert r.status_code == 200, r.text
    gap = quality_as_int4(Quality.BAD_DATA_LOST)
    markers = "SELECT count(*) AS n FROM scada_readings WHERE quality = $1"
    wait_for(lambda: db_fetch(dsn, markers, gap)[0]["n"] > 0, 120, "session-start gap markers")


def _provoke_conflation(tenant: TenantHandle, stack: Settings) -> None:
    """A subscriber resuming from the stream's start (Last-Event-ID 0-0) gets every entry the
    tenant's live stream holds queued at once; past ``live_queue_entries`` they conflate, the
    client is told (a ``conflated`` event) and scada_live_conflated_total counts it."""
    import redis

    rds = redis.Redis.from_url(stack.redis_url)
    try:
        wait_for(
            lambda: rds.xlen(live_key(tenant.slug)) > stack.live_queue_entries + 20,
            180,
            "more live-stream entries than one subscriber queue holds",
            every_s=1.0,
        )
    finally:
        rds.close()
    headers = {"Accept": "text/event-stream", "Last-Event-ID": "0-0"}
    with tenant.client.stream("GET", f"/v1/tenants/{tenant.slug}/stream", headers=headers) as live:
        assert live.status_code == 200
        for n, line in enumerate(live.iter_lines()):
            if line.startswith("event: conflated"):
                break
            assert n < 100_000, "no conflated event after the catch-up"


def _wanted(slug: str) -> dict[str, str]:
    """Series name -> label text it must carry, for every name the rules and dashboard use that
    this run must have produced."""
    wanted: dict[str, str] = {}
    for name in used_metric_names():
        if name in SERVE_METRICS:
            wanted[name] = 'application="scada"'
            continue
        spec = spec_for_series(name)
        assert spec is not None, f"{name} is used but not in ingest/metrics_catalog.py"
        if spec.emitted is Emitted.ALWAYS or spec.name in TRIGGERED:
            wanted[name] = f'tenant="{slug}"'
    return wanted


def _missing(slug: str) -> dict[str, str]:
    seen = _scrape()
    return {n: lab for n, lab in _wanted(slug).items() if not any(s == n and lab in labels for s, labels in seen)}


def test_every_metric_the_alerts_and_dashboard_read_is_exported(ingesting: dict[str, Any]) -> None:
    slug = ingesting["tenant"]
    used = used_metric_names()
    # Ray exports a metric once it is recorded and at most every few seconds: poll, bounded.
    wait_for(
        lambda: not _missing(slug),
        120,
        "every used metric exported for the tenant",
        every_s=2.0,
        describe=lambda: sorted(_missing(slug)),
    )
    exported = {s for s, _ in _scrape()}
    planned = {n for n in used if (s := spec_for_series(n)) and s.emitted is Emitted.PLANNED}
    on_event = {
        s.name
        for n in used
        if (s := spec_for_series(n)) and s.emitted is Emitted.ON_EVENT and s.name not in TRIGGERED
    }
    # Planned metrics are declared for features that do not write them yet: once one is
    # exported, its catalog entry must say so (and this run must then see it with the tenant).
    assert not planned & exported, f"written now, mark them in the catalog: {planned & exported}"
    assert on_event == NOT_TRIGGERED
    assert {"ray_scada_readings_ingested_total", "ray_serve_num_http_requests_total"} <= exported
    # The ingested counter is the one a no-ingest alert reads: it must count this tenant's rows.
    lines = [lab for s, lab in _scrape() if s == "ray_scada_readings_ingested_total" and f'tenant="{slug}"' in lab]
    assert lines
    # Serve labels requests with the matched route pattern (what the push-429 alert filters on).
    pattern = 'route="/v1/tenants/{tenant}/connections/{connection_id}"'
    wait_for(
        lambda: any(
            s == "ray_serve_num_http_requests_total" and 'status_code="404"' in lab and pattern in lab
            for s, lab in _scrape()
        ),
        60,
        "Serve's request counter with the route pattern and the 404",
        every_s=2.0,
    )


def test_sessions_by_state_show_the_dead_device(ingesting: dict[str, Any]) -> None:
    slug = ingesting["tenant"]

    def states() -> dict[tuple[str, str], float]:
        out: dict[tuple[str, str], float] = {}
        for target in _metrics_targets():
            for line in httpx.get(f"http://{target}/metrics", timeout=10).text.splitlines():
                if line.startswith("ray_scada_connections{") and f'tenant="{slug}"' in line:
                    labels = line[line.index("{") + 1 : line.rindex("}")]
                    proto = labels.split('protocol="')[1].split('"')[0]
                    state = labels.split('state="')[1].split('"')[0]
                    key = (proto, state)
                    out[key] = out.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
        return out

    got = wait_for(
        lambda: (s := states()).get(("modbus", "disconnected")) == 1 and s.get(("opcua", "connected")) == 1 and s,
        120,
        "opcua connected and modbus disconnected",
        every_s=2.0,
        describe=states,
    )
    assert got[("modbus", "connected")] == 0


def _service_discovery_file() -> Path:
    """Ray's file-SD list for this cluster, in the session directory.

    The head node's dashboard writes it every few seconds. The test cluster runs without a
    dashboard (two cores), so when the file is absent the same Ray class the dashboard runs
    writes it once, into the session directory only (leaving the shared /tmp/ray link alone).
    """
    import ray

    node = ray._private.worker._global_node
    session = Path(node.get_session_dir_path())
    sd = session / SD_FILE
    if not sd.exists():
        code = (
            "import sys; from ray._private.metrics_agent import "
            "PrometheusServiceDiscoveryWriter as W; "
            "W(sys.argv[1], sys.argv[2], sys.argv[2]).write()"
        )
        subprocess.run(
            [sys.executable, "-c", code, node.gcs_address, str(session)],
            check=True,
            capture_output=True,
            timeout=120,
        )
    return sd


def test_prometheus_discovers_the_stack_and_queries_ingest(ingesting: dict[str, Any]) -> None:
    exe = shutil.which("prometheus")
    assert exe, "prometheus missing: scripts/bootstrap.sh installs Debian's prometheus package"
    slug = ingesting["tenant"]
    sd = _service_discovery_file()

    def listed() -> set[str]:
        try:
            return set(json.loads(sd.read_text())[0]["targets"])
        except (OSError, ValueError, IndexError, KeyError):
            return set()

    # Ray rewrites the file every few seconds: a node that joined or left a moment ago (the
    # failover tests add and remove nodes) shows up in it at its next rewrite.
    wait_for(
        lambda: set(_metrics_targets()) <= listed(),
        60,
        "every live node's metrics endpoint in the service-discovery file",
        every_s=1.0,
        describe=lambda: (sorted(_metrics_targets()), sorted(listed())),
    )
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "prometheus.yml"
        cfg.write_text(
            json.dumps(
                {  # JSON is YAML; the same job as deploy/prometheus.yml
                    # A scrape may take seconds on a loaded machine (the timeout is at most the
                    # interval): at 1 s none succeeded in a fresh-clone run at load 100.
                    "global": {"scrape_interval": "3s", "scrape_timeout": "3s", "evaluation_interval": "3s"},
                    "scrape_configs": [
                        {
                            "job_name": "ray",
                            "file_sd_configs": [{"files": [str(sd)]}],
                            "metric_relabel_configs": [
                                {"source_labels": ["__name__"], "regex": "ray_.*", "action": "keep"}
                            ],
                        }
                    ],
                }
            )
        )
        proc = subprocess.Popen(
            [
                exe,
                f"--config.file={cfg}",
                f"--storage.tsdb.path={tmp}/data",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(Path(tmp) / "prometheus.log", "w"),
        )
        try:
            base = f"http://127.0.0.1:{port}"

            def ingested() -> float:
                try:
                    r = httpx.get(
                        f"{base}/api/v1/query",
                        timeout=5,
                        params={"query": f'sum(ray_scada_readings_ingested_total{{tenant="{slug}"}})'},
                    )
                except httpx.HTTPError:
                    return 0.0
                result = r.json()["data"]["result"] if r.status_code == 200 else []
                return float(result[0]["value"][1]) if result else 0.0

            total = wait_for(
                ingested,
                240,
                "the ingest counter queryable from Prometheus",
                every_s=1.0,
                describe=lambda: (Path(tmp) / "prometheus.log").read_text()[-2000:],
            )
            # What Prometheus saw was committed: never more than the rows stored since.
            stored = db_fetch(ingesting["dsn"], "SELECT count(*) AS n FROM scada_readings")
            assert 0 < total <= stored[0]["n"]
            up = httpx.get(f"{base}/api/v1/query", params={"query": 'up{job="ray"}'}).json()
            assert {r["metric"]["instance"] for r in up["data"]["result"] if r["value"][1] == "1"} >= set(
                _metrics_targets()
            )
            # Every dashboard and alert expression is valid PromQL for this Prometheus, and the
            # ingest-rate panel answers for the tenant once two scrapes are in.
            for expr in dashboard_exprs() + [r["expr"] for r in alert_rules()]:
                q = expr.replace("$__rate_interval", "1m").replace("$tenant", slug)
                r = httpx.get(f"{base}/api/v1/query", params={"query": q}, timeout=30)
                assert r.status_code == 200 and r.json()["status"] == "success", (expr, r.text)
            rate_expr = dashboard_exprs()[0].replace("$__rate_interval", "1m").replace("$tenant", slug)

            def rate_seen() -> bool:
                r = httpx.get(f"{base}/api/v1/query", params={"query": rate_expr}, timeout=30)
                return any(x["metric"].get("tenant") == slug for x in r.json()["data"]["result"])

            wait_for(rate_seen, 120, "the ingest-rate panel answering for the tenant")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
