"""Human-readable rendering of the coordinator's status (``scada-ingest status``)."""

from __future__ import annotations

import time
from typing import Any

_LIVE_FIELDS = ("health", "state", "last_error", "last_value_at", "values_per_s", "reconnects", "failures", "tags")


def live_connections(actor_status: dict[str, dict[str, Any]], tenant_slug: str) -> dict[str, dict[str, Any]]:
    """Connection id -> what its host last reported, for one tenant (``ConnectionHost.status()``
    of every connection actor, as the coordinator keeps them)."""
    out: dict[str, dict[str, Any]] = {}
    for st in actor_status.values():
        for cid, c in (st or {}).get("connections", {}).items():
            if c.get("tenant") == tenant_slug:
                out[cid] = {k: c.get(k) for k in _LIVE_FIELDS}
    return out


def _age(t: float | None) -> str:
    return "never" if not t else f"{max(0.0, time.time() - t):.0f}s ago"


def render(status: dict[str, Any]) -> str:
    lines = ["TENANTS"]
    for t in status.get("tenants", []):
        w = t.get("writer") or {}
        state = t.get("state", "?") if t["status"] == "ACTIVE" else t["status"]
        lines.append(
            f"  {t['slug']:<20} {state:<9} connections={t['connections']:<4} "
            f"rows={w.get('rows_committed', 0):<10} spool={w.get('spool_rows', 0):<8} "
            f"p99={w.get('latency_p99_ms')}ms" + (f"  error: {t['degraded']}" if t.get("degraded") else "")
        )
        for cid, reason in (t.get("failed_connections") or {}).items():
            lines.append(f"    connection {cid} FAILED: {reason}")
    lines.append("NODES")
    for node, n in sorted(status.get("nodes", {}).items()):
        lines.append(
            f"  {node[:12]:<12} actors={len(n['actors'])} connections={n['connections']}"
            f" tags={n['tags']} values/s={n['values_per_s']:.0f}"
        )
    lines.append("ACTORS")
    for name, a in sorted(status.get("actors", {}).items()):
        if "error" in a:
            lines.append(f"  {name:<20} UNHEALTHY {a['error']}")
            continue
        conns = a.get("connections", {})
        tags = sum(c.get("tags", 0) for c in conns.values())
        lines.append(
            f"  {name:<20} connections={len(conns)} tags={tags} "
            f"values/s={a.get('values_per_s', 0):.0f} unacked={a.get('unacked_rows', 0)} "
            f"gaps={a.get('gap_markers', 0)}"
        )
        for cid, c in conns.items():
            err = c.get("last_error") or c.get("error")
            lines.append(
                f"    {cid} {c['tenant']:<16} {c['protocol']:<6} {c.get('health') or c['state']:<10} "
                f"tags={c['tags']} values/s={c.get('values_per_s', 0):.0f} "
                f"last_value={_age(c.get('last_value_at'))} reconnects={c.get('reconnects', 0)}"
                + (f" last_error={err}" if err else "")
            )
    return "\n".join(lines)
