"""`scada-ingest status`'s table: a tenant's writer latency, before and after its first commit."""

from __future__ import annotations

from ingest.placement.status_view import render


def test_writer_latency_reads_as_a_dash_until_a_reading_is_committed() -> None:
    def tenant(slug: str, p99: float | None) -> dict[str, object]:
        writer = {"rows_committed": 0 if p99 is None else 5, "spool_rows": 0, "latency_p99_ms": p99}
        return {"slug": slug, "status": "ACTIVE", "state": "HEALTHY", "connections": 1, "writer": writer}

    text = render({"tenants": [tenant("fresh", None), tenant("busy", 153.4)], "nodes": {}, "actors": {}})
    lines = {ln.split()[0]: ln for ln in text.splitlines() if ln.startswith("  ")}
    assert lines["fresh"].endswith("p99=-") and "None" not in lines["fresh"]
    assert lines["busy"].endswith("p99=153ms")
