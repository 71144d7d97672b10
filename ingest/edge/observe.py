"""What the edge agent shows a site: Prometheus metrics and a health answer on its own port.

Its own registry (not the process-wide default) and prometheus-client's WSGI app, served by the
standard library's WSGI server on a daemon thread, with one more path beside it: ``/health``
answers JSON, 200 while the agent collects and keeps readings (link down included: that is what
the buffer is for), 503 once pushing has stopped for a reason a retry cannot fix (401/403).
The agent runs without Ray, so these are not the cluster's ``ray.util.metrics``; the names keep
the ``scada_`` prefix and low-cardinality labels.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, make_wsgi_app


class EdgeMetrics:
    """Every metric of the agent, on one registry."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.buffer_rows = Gauge("scada_edge_buffer_rows", "Readings held in the disk buffer", registry=r)
        self.buffer_bytes = Gauge(
            "scada_edge_buffer_bytes", "Payload bytes held (what max_bytes bounds)", registry=r
        )
        self.buffer_file_bytes = Gauge(
            "scada_edge_buffer_file_bytes", "Size of the SQLite file and WAL", registry=r
        )
        self.buffer_age = Gauge(
            "scada_edge_buffer_oldest_age_seconds", "Age of the oldest buffered batch", registry=r
        )
        self.buffered = Counter("scada_edge_readings_buffered_total", "Readings written to the buffer", registry=r)
        self.pushed = Counter(
            "scada_edge_readings_pushed_total", "Readings the cluster accepted (2xx)", registry=r
        )
        self.rejected = Counter(
            "scada_edge_readings_rejected_total",
            "Readings the cluster refused (named in a 2xx answer, or a batch refused whole)",
            ["reason"],
            registry=r,
        )
        self.requests = Counter(
            "scada_edge_push_requests_total", "Push requests by outcome", ["outcome"], registry=r
        )
        self.gaps = Counter(
            "scada_edge_gaps_total", "Readings recorded as a gap (dropped at the buffer's bounds)", registry=r
        )
        self.gap_markers = Counter(
            "scada_edge_gap_markers_total", "Gap markers recorded (per tag and dropped run)", registry=r
        )
        self.session_gaps = Counter(
            "scada_edge_session_gap_markers_total",
            "Gap markers from the device sessions (reconnects, restarts)",
            registry=r,
        )
        self.link_up = Gauge("scada_edge_link_up", "1 while the cluster answers HTTP", registry=r)
        self.push_stopped = Gauge(
            "scada_edge_push_stopped", "1 once pushing stopped on 401/403 (fix the key, restart)", registry=r
        )
        self.sessions = Gauge("scada_edge_sessions", "Device sessions by state", ["state"], registry=r)


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass  # a scrape every 15 s is not news


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


Health = Callable[[], tuple[bool, dict[str, Any]]]
StartResponse = Callable[[str, list[tuple[str, str]]], Any]


def serve(metrics: EdgeMetrics, health: Health, host: str, port: int) -> tuple[WSGIServer, int]:
    """Start ``/metrics`` (any other path too) and ``/health``; returns the server and its port."""
    prom = make_wsgi_app(metrics.registry)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/health":
            ok, body = health()
            data = json.dumps(body, default=str).encode()
            start_response(
                "200 OK" if ok else "503 Service Unavailable",
                [("Content-Type", "application/json"), ("Content-Length", str(len(data)))],
            )
            return [data]
        out: Iterable[bytes] = prom(environ, start_response)
        return out

    httpd = make_server(host, port, app, _ThreadingServer, handler_class=_Quiet)
    threading.Thread(target=httpd.serve_forever, name="edge-metrics", daemon=True).start()
    return httpd, int(httpd.server_address[1])
