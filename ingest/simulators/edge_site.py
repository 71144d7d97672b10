"""A simulated site for the edge agent: its config for a simulator fleet, the agent as a real
subprocess, and a cuttable link between it and the cluster's API.

Used by tests/test_edge_agent.py and ``python -m scale_tests edge_outage``. The link is a TCP
proxy like tests/tcp_proxy.py, run on a thread of its own (the agent is another process and the
callers are synchronous), with one more fault: ``lose_answers`` lets requests reach the server
and drops the connection when the answer comes back, so the server has acted on a request whose
client never learns it (the case an Idempotency-Key exists for).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import httpx
import yaml

from ingest.core.net import free_port
from ingest.simulators.fleet import SimProcess, db_fetch


class Link:
    """A TCP proxy on its own event loop thread: ``cut``, ``restore``, ``lose_answers``."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.lose_answers = False
        self.answers_lost = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="edge-link", daemon=True).start()
        self._call(self._start())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    def cut(self) -> None:
        """Refuse new connections and drop the open ones, like a dead link."""
        self._call(self._cut())

    def restore(self) -> None:
        self._call(self._start())

    def close(self) -> None:
        self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for w in list(self._pipes):
            w.transport.abort()
        self._pipes.clear()

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection(*self.target)
        except OSError:
            w.close()
            return
        self._pipes.update((w, uw))

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, answers: bool) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    if answers and self.lose_answers:
                        self.answers_lost += 1
                        w.transport.abort()
                        uw.transport.abort()
                        return
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(Exception):
                dst.close()

        await asyncio.gather(pump(r, uw, False), pump(ur, w, True))
        self._pipes.discard(w)
        self._pipes.discard(uw)


def edge_config(
    path: Path,
    *,
    api_url: str,
    tenant: str,
    api_key: str,
    sims: list[SimProcess],
    metrics_port: int,
    publishing_interval_ms: int = 50,
    max_bytes: int | None = None,
    push: dict[str, Any] | None = None,
) -> Path:
    """An agent config reading every node of ``sims``: tag ``W001.T001`` of well ``W001``."""
    devices = [
        {
            "name": f"sim{i}",
            "protocol": "opcua",
            "endpoint": sim.endpoint,
            "publishing_interval_ms": publishing_interval_ms,
            "tags": [
                {"name": (n := node.split(";s=")[-1]), "well": n.split(".")[0], "node_id": node, "unit": "psi"}
                for node in sim.node_ids
            ],
        }
        for i, sim in enumerate(sims)
    ]
    cfg: dict[str, Any] = {
        "cluster": {"url": api_url, "tenant": tenant, "api_key": api_key, "timeout_s": 10},
        "buffer": {"path": str(path.with_suffix(".db"))},
        "push": {"backoff_initial_s": 0.2, "backoff_max_s": 2.0, **(push or {})},
        "metrics": {"host": "127.0.0.1", "port": metrics_port},
        "devices": devices,
    }
    if max_bytes is not None:
        cfg["buffer"]["max_bytes"] = max_bytes
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


class EdgeProcess:
    """``scada-ingest edge --config ...`` as a subprocess, its log in a file."""

    def __init__(self, config: Path, metrics_port: int, log: Path) -> None:
        self.config = config
        self.metrics_url = f"http://127.0.0.1:{metrics_port}"
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    def start(self, wait_s: float = 60.0) -> EdgeProcess:
        self._log_file = self.log.open("ab")
        cmd = [sys.executable, "-m", "serve_app.cli", "edge", "--config", str(self.config)]
        self.proc = subprocess.Popen(cmd, stdout=self._log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"edge agent exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.metrics_url + "/health", timeout=2).status_code in (200, 503):
                    return self
            time.sleep(0.1)
        raise RuntimeError("edge agent did not answer /health within 60 s")

    def wait_connected(self, wait_s: float = 60.0) -> None:
        """Until every device session is connected (subscribed): a value published before that
        was never the agent's to read, so a counting check must start after it."""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            devices = self.health()[1]["devices"]
            if devices and all(state == "connected" for state in devices.values()):
                return
            time.sleep(0.1)
        raise RuntimeError(f"edge agent sessions not connected within {wait_s:.0f} s: {self.health()[1]}")

    def health(self) -> tuple[int, dict[str, Any]]:
        r = httpx.get(self.metrics_url + "/health", timeout=5)
        body: dict[str, Any] = r.json()
        return r.status_code, body

    def metric(self, name: str) -> float:
        """The sum of a metric's samples (all label values)."""
        text = httpx.get(self.metrics_url + "/metrics", timeout=5).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and (line[len(name)] in " {"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def kill(self) -> None:
        """SIGKILL: no chance to flush anything."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout_s: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log_file is not None:
            self._log_file.close()
        return self.proc.returncode


def push_tag_ids(dsn: str) -> dict[str, int]:
    """Pushed tags of a tenant database: name -> tag id."""
    rows = db_fetch(
        dsn,
        "SELECT t.name, t.tag_id FROM tag_mappings t JOIN scada_connections c ON c.id = t.connection_id "
        "WHERE c.protocol = 'push' AND t.deleted_at IS NULL",
    )
    return {r["name"]: r["tag_id"] for r in rows}


def node_tag_ids(sims: list[SimProcess], dsn: str) -> dict[str, int]:
    """Simulator node id -> the tenant's tag id (what the counting checks take)."""
    by_name = push_tag_ids(dsn)
    return {n: by_name[n.split(";s=")[-1]] for sim in sims for n in sim.node_ids if n.split(";s=")[-1] in by_name}


def log_lines(log: Path) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out
