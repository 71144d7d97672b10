"""The edge agent end to end: OPC UA simulators -> ``scada-ingest edge`` (a real subprocess) ->
a cuttable link -> the cluster's push API -> TimescaleDB. After each fault every published value
is stored exactly once or lies inside a recorded gap, and nothing is stored twice.

Faults: the link cut and restored; answers lost after the cluster acted on the requests (what a
restarted API or a dropped connection does to a client); the agent SIGKILLed mid-stream and
started again on the same buffer; a buffer bound small enough to be reached; a key refused.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest

from ingest.core.config import Settings
from ingest.core.net import free_port
from ingest.simulators.edge_site import EdgeProcess, Link, edge_config, log_lines, node_tag_ids
from tests.conftest import TenantHandle
from tests.helpers import SimProcess, counting_check_with_gaps, wait_for

pytestmark = pytest.mark.slow


@dataclass
class Site:
    tenant: TenantHandle
    sim: SimProcess
    link: Link
    agent: EdgeProcess
    dsn: str

    def check(self, published: dict[str, int]) -> dict[str, Any]:
        return counting_check_with_gaps(self.dsn, node_tag_ids([self.sim], self.dsn), published)

    def finish(self) -> dict[str, Any]:
        """Stop publishing, wait until every value is stored or in a gap, return the check."""
        self.sim.pause()
        time.sleep(1.0)  # the last notifications reach the agent
        summary = self.sim.stop()
        per_node = summary["per_node"]

        def settled() -> bool:
            r = self.check(per_node)
            return bool(r["unaccounted"] == 0 and r["stored"] + r["gap_values"] >= r["published"])

        wait_for(settled, 90, "every value stored or in a gap", every_s=0.5, describe=lambda: self.check(per_node))
        result = self.check(per_node)
        assert result["published"] > 0 and result["duplicates"] == 0 and result["unaccounted"] == 0, result
        return result


@pytest.fixture
def site(api: str, admin: httpx.Client, stack: Settings, make_tenant: Any, tmp_path: Path) -> Iterator[Any]:
    made: list[Site] = []

    def _make(wells: int = 2, tags: int = 5, interval_ms: int = 100, **cfg: Any) -> Site:
        t: TenantHandle = make_tenant()
        # Draining a backlog sends back to back: the default 100 requests a minute would hold it.
        r = admin.patch(f"/v1/tenants/{t.slug}/push/settings", json={"requests_per_minute": 100_000})
        assert r.status_code == 200, r.text
        sim = SimProcess(wells, tags, interval_ms)
        u = urlparse(api)
        link = Link(u.hostname or "127.0.0.1", u.port or 80)
        port = free_port()
        conf = edge_config(
            tmp_path / f"edge-{t.slug}.yaml",
            api_url=link.url,
            tenant=t.slug,
            api_key=cfg.pop("api_key", t.key),
            sims=[sim],
            metrics_port=port,
            **cfg,
        )
        agent = EdgeProcess(conf, port, tmp_path / f"edge-{t.slug}.log").start()
        agent.wait_connected()
        s = Site(t, sim, link, agent, stack.dsn(t.db))
        made.append(s)
        return s

    yield _make
    for s in made:
        s.agent.stop()
        s.sim.kill()
        s.link.close()


def streaming(s: Site, n: int = 50) -> None:
    wait_for(lambda: s.agent.metric("scada_edge_readings_pushed_total") >= n, 60, "readings pushed")


def test_link_cut_buffers_then_drains_exactly_once(site: Any) -> None:
    s: Site = site()
    s.sim.resume()
    streaming(s)
    s.link.cut()
    time.sleep(12)  # the 60 s outage runs in `python -m scale_tests edge_outage`
    status, health = s.agent.health()
    assert status == 200 and health["status"] == "buffering" and health["link"] == "down"
    assert s.agent.metric("scada_edge_link_up") == 0 and s.agent.metric("scada_edge_buffer_rows") > 500
    s.link.restore()
    wait_for(lambda: s.agent.metric("scada_edge_link_up") == 1, 30, "link up again")
    result = s.finish()
    assert result["gap_values"] == 0 and result["stored"] == result["published"], result
    assert s.agent.metric("scada_edge_gaps_total") == 0


def test_lost_answers_are_resent_without_duplicates(site: Any, stack: Settings) -> None:
    s: Site = site()
    s.sim.resume()
    streaming(s)
    s.link.lose_answers = True  # the cluster commits, the agent never hears it
    wait_for(lambda: s.link.answers_lost >= 3, 30, "answers lost")
    s.link.lose_answers = False
    result = s.finish()
    assert result["gap_values"] == 0 and result["stored"] == result["published"], result


def test_agent_sigkilled_and_restarted_on_the_same_buffer(site: Any) -> None:
    s: Site = site()
    s.sim.resume()
    streaming(s)
    s.link.cut()  # something is buffered and unsent when the agent dies
    time.sleep(3)
    s.agent.kill()
    time.sleep(2)  # the simulator keeps publishing while no agent reads it
    s.link.restore()
    s.agent.start()
    streaming(s, 1)
    result = s.finish()
    # What the device published while the agent was down is inside the gap the restarted
    # session recorded (ConnectionHost's session-start check, asked of the buffer's last_seen).
    assert result["gap_values"] > 0 and result["stored"] > 0, result
    assert s.agent.metric("scada_edge_session_gap_markers_total") > 0


def test_small_buffer_bound_records_a_gap(site: Any) -> None:
    s: Site = site(wells=4, tags=10, interval_ms=50, max_bytes=64 * 1024)
    s.sim.resume()
    streaming(s)
    s.link.cut()
    wait_for(lambda: s.agent.metric("scada_edge_gaps_total") > 0, 60, "the bound reached")
    time.sleep(1)
    s.link.restore()
    result = s.finish()
    assert result["gap_values"] > 0, result
    dropped = s.agent.metric("scada_edge_gaps_total")
    assert dropped > 0 and s.agent.metric("scada_edge_buffer_bytes") <= 64 * 1024
    warnings = [x for x in log_lines(s.agent.log) if "buffer bound reached" in x.get("message", "")]
    assert warnings


def test_refused_key_stops_pushing_and_says_so(site: Any) -> None:
    s: Site = site(api_key="sk_not_a_key_at_all")
    wait_for(lambda: s.agent.health()[0] == 503, 30, "health says stopped")
    status, health = s.agent.health()
    assert health["status"] == "stopped" and "401" in health["push_stopped"]
    assert s.agent.metric("scada_edge_push_stopped") == 1
    s.sim.resume()
    time.sleep(2)  # it keeps reading and buffering, and does not retry
    assert s.agent.metric("scada_edge_buffer_rows") > 0
    assert s.agent.metric("scada_edge_push_requests_total") <= 1
    assert any("pushing stopped" in x.get("message", "") for x in log_lines(s.agent.log))
