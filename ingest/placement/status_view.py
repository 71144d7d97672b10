"""The coordinator's status (``scada-ingest status``): assembled from what it last saw, and rendered."""

from __future__ import annotations

import time
from typing import Any

from ingest.placement.desired_state import DesiredState

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


def cluster_status(
    state: DesiredState,
    slots: dict[str, dict[str, Any] | None],
    slot_nodes: dict[str, str],
    writers: dict[str, Any],
    head: dict[str, Any],
) -> dict[str, Any]:
    """``head`` (leadership, passes, ...) followed by tenants, nodes and actors: ``slots`` is each
    connection actor's status (None: it did not answer), ``writers`` each tenant slug's writer
    stats."""
    failed: dict[str, dict[str, str | None]] = {}  # tenant slug -> connection -> reason
    for st in slots.values():
        for cid, c in (st or {}).get("connections", {}).items():
            if c["state"] == "failed":
                failed.setdefault(c["tenant"], {})[cid] = c.get("error")
    nodes: dict[str, Any] = {}
    for name, st in slots.items():
        entry = nodes.setdefault(
            slot_nodes.get(name, "?"), {"actors": [], "connections": 0, "tags": 0, "values_per_s": 0.0}
        )
        entry["actors"].append(name)
        if st:
            entry["connections"] += len(st["connections"])
            entry["tags"] += sum(c.get("tags", 0) for c in st["connections"].values())
            entry["values_per_s"] += st.get("values_per_s", 0.0)
    return {
        **head,
        "tenants": [
            {
                "id": t.id,
                "slug": t.slug,
                "status": t.status.value,
                "state": "DEGRADED" if (t.id in state.degraded or failed.get(t.slug)) else "HEALTHY",
                "degraded": state.degraded.get(t.id),
                "failed_connections": failed.get(t.slug, {}),
                "connections": len(state.specs.get(t.id, [])),
                "writer": writers.get(t.slug),
                "spool_rows": (writers.get(t.slug) or {}).get("spool_rows"),
            }
            for t in state.tenants
        ],
        "nodes": nodes,
        "actors": {n: (st if st is not None else {"error": "unhealthy"}) for n, st in slots.items()},
    }


def _age(t: float | None) -> str:
    return "never" if not t else f"{max(0.0, time.time() - t):.0f}s ago"


def _ms(v: float | None) -> str:
    """A latency for the table: "-" before the first committed reading."""
    return "-" if v is None else f"{v:.0f}ms"


def render(status: dict[str, Any]) -> str:
    lines = []
    if status.get("standby"):
        holder = status["standby"].get("holder") or {}
        lines.append(
            "STANDING BY: another coordinator holds this master database "
            f"({holder.get('application_name', 'unknown')} from {holder.get('client_addr', '?')}); "
            "nothing is polled from this cluster"
        )
    lines.append("TENANTS")
    for t in status.get("tenants", []):
        w = t.get("writer") or {}
        state = t.get("state", "?") if t["status"] == "ACTIVE" else t["status"]
        lines.append(
            f"  {t['slug']:<20} {state:<9} connections={t['connections']:<4} "
            f"rows={w.get('rows_committed', 0):<10} spool={w.get('spool_rows', 0):<8} "
            f"p99={_ms(w.get('latency_p99_ms'))}" + (f"  error: {t['degraded']}" if t.get("degraded") else "")
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
