"""What a running pipeline costs and how late its values land, read from its own actors.

The coordinator's status names every connection actor and each tenant's writer with its pid and
node; CPU comes from /proc (scale_tests.cpu), so it is only read for processes on this machine
(a ``ray.cluster_utils.Cluster`` keeps all its nodes here). Source-to-commit latency comes from
the writer's own histogram (1 ms buckets of commit time minus source timestamp, every row), two
snapshots apart.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from actors.common import COORDINATOR_NAME, writer_name
from scale_tests.common import ratio
from scale_tests.cpu import total_cpu


def _status(namespace: str) -> dict[str, Any]:
    import ray

    st: Any = ray.get(ray.get_actor(COORDINATOR_NAME, namespace=namespace).status.remote())
    return dict(st)


def placement(namespace: str) -> dict[str, Any]:
    """Which node each connection actor and each writer runs on, and their pids."""
    st = _status(namespace)
    conns = {n: {"node_id": a.get("node_id"), "pid": a.get("pid")} for n, a in st["actors"].items()}
    writers = {
        t["slug"]: {"node_id": (t.get("writer") or {}).get("node_id"), "pid": (t.get("writer") or {}).get("pid")}
        for t in st["tenants"]
    }
    return {"connection_actors": conns, "writers": writers}


def hist_percentiles(counts: np.ndarray, qs: tuple[float, ...] = (50.0, 99.0)) -> list[float | None]:
    cum = np.cumsum(counts)
    total = int(cum[-1]) if cum.size else 0
    if total == 0:
        return [None for _ in qs]
    return [float(x) for x in np.searchsorted(cum, [q / 100.0 * total for q in qs])]


class PipelineProbe:
    """CPU seconds of the connection actors and of the tenants' writers, and latency
    percentiles of the rows committed, between ``start`` and ``stop``."""

    def __init__(self, namespace: str, slugs: list[str], database: list[int] | None = None) -> None:
        """``database``: pids of the database server's processes, to cost it too."""
        import ray

        self.namespace = namespace
        where = placement(namespace)
        self.conn_pids = [int(a["pid"]) for a in where["connection_actors"].values() if a.get("pid")]
        self.writer_pids = [
            int(where["writers"][s]["pid"]) for s in slugs if where["writers"].get(s, {}).get("pid")
        ]
        self.writers = [ray.get_actor(writer_name(s), namespace=namespace) for s in slugs]
        self.db_pids = database or []
        self._c0 = self._w0 = self._d0 = 0.0
        self._h0: list[np.ndarray] = []

    def _hists(self) -> list[np.ndarray]:
        import ray

        hists: list[Any] = ray.get([w.latency_histogram.remote() for w in self.writers])
        return [np.asarray(h) for h in hists]

    def start(self) -> PipelineProbe:
        self._h0 = self._hists()
        self._c0, self._w0 = total_cpu(self.conn_pids), total_cpu(self.writer_pids)
        self._d0 = total_cpu(self.db_pids)
        return self

    def stop(self) -> dict[str, Any]:
        conn_s, writer_s = total_cpu(self.conn_pids) - self._c0, total_cpu(self.writer_pids) - self._w0
        db_s = total_cpu(self.db_pids) - self._d0
        diff: np.ndarray | None = None
        for h0, h1 in zip(self._h0, self._hists(), strict=True):
            d = h1[: h0.size] - h0 if h1.size >= h0.size else h1
            if h0.size == 1:  # the writer had not started at the first snapshot
                d = h1
            diff = d if diff is None else diff[: d.size] + d[: diff.size]
        p50, p99 = hist_percentiles(diff if diff is not None else np.zeros(1, np.int64))
        return {
            "cpu_s": {
                "connection_actors": round(conn_s, 3),
                "writers": round(writer_s, 3),
                **({"database": round(db_s, 3)} if self.db_pids else {}),
            },
            "latency_p50_ms": p50,
            "latency_p99_ms": p99,
            "latency_rows": int(diff.sum()) if diff is not None else 0,
            "pids": {"connection_actors": self.conn_pids, "writers": self.writer_pids},
        }


def cost_summary(pipe: dict[str, Any], bare_rate: float, bare_cpu: float) -> dict[str, Any]:
    conn, writer = pipe["cpu_s_per_million"]["connection_actors"], pipe["cpu_s_per_million"]["writer"]
    return {
        "values_per_s": {"pipeline": pipe["values_per_s"], "bare_client": bare_rate},
        "ratio_vs_bare": ratio(pipe["values_per_s"], bare_rate),
        "cpu_s_per_million": {"bare_client": bare_cpu, "connection_actors": conn, "writer": writer},
        "cpu_ratio_vs_bare": ratio(conn, bare_cpu),
        "cpu_ratio_pipeline_vs_bare": ratio(conn + writer, bare_cpu),
        "latency_p50_ms": pipe["latency_p50_ms"],
        "latency_p99_ms": pipe["latency_p99_ms"],
    }
