"""Logs are structured (JSON lines from the CLI, the simulators, actors and Serve) and hold no
secret: a run that used API keys and passwords leaves none of them in any log file."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from ingest.core.config import Settings
from ingest.core.logging_json import JsonFormatter
from tests.conftest import TenantHandle
from tests.helpers import wait_for


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_the_formatter_keeps_one_valid_object_per_line_whatever_the_message() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("scada.test.json")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning('device "pump-1" said:\n  {bad} \\ %s', "ünïcode", extra={"tenant": "acme"})
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("write failed")
    finally:
        log.removeHandler(handler)
    first, second = _json_lines(out.getvalue())
    assert first["message"] == 'device "pump-1" said:\n  {bad} \\ ünïcode'
    assert (first["level"], first["logger"], first["tenant"]) == ("WARNING", "scada.test.json", "acme")
    assert second["level"] == "ERROR" and "ValueError: boom" in second["exc"]


def test_the_simulator_logs_json_lines() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ingest.simulators.opcua_sim",
            "--port",
            "0",
            "--wells",
            "1",
            "--tags",
            "1",
            "--start-paused",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        for line in proc.stdout:
            if line.startswith("READY "):
                break
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    records = _json_lines(err)
    assert records, "asyncua warns at start-up (no signing policy): expected some log lines"
    assert all({"ts", "level", "logger", "message"} <= set(r) for r in records)


def _tenant_db_password(settings: Settings, tenant_id: str) -> str:
    from ingest.store.master import MasterStore

    async def go() -> str:
        master = await MasterStore.connect(settings)
        try:
            return urlsplit(await master.tenant_dsn(tenant_id)).password or ""
        finally:
            await master.close()

    return asyncio.run(go())


def test_a_run_leaves_no_key_or_password_in_any_log(
    api: str, admin: httpx.Client, tenant: TenantHandle, stack: Settings
) -> None:
    import ray

    device_password = f"dev-pw-{uuid.uuid4().hex}"
    body = {
        "name": "secured",
        "protocol": "opcua",
        "endpoint": "opc.tcp://127.0.0.1:1/never",
        "security_mode": "SignAndEncrypt",
        "security_policy": "Basic256Sha256",
        "username": "operator",
        "password": device_password,
        "publishing_interval_ms": 100,
        "tags": [{"name": "t1", "node_id": "ns=2;s=W1.T1"}],
    }
    r = tenant.client.post(f"/v1/tenants/{tenant.slug}/connections", json=body)
    assert r.status_code == 201, r.text
    cid = r.json()["id"]
    # A wrong key too: refused requests are where keys most often end up in logs.
    bad = httpx.get(
        f"{api}/v1/tenants/{tenant.slug}/tags", timeout=30, headers={"Authorization": f"Bearer {tenant.key}x"}
    )
    assert bad.status_code == 401

    def session_failed() -> bool:
        """The cluster status shows the session with its (password-free) error."""
        status = admin.get("/v1/status")

        def find(node: Any) -> bool:
            if isinstance(node, dict):
                if isinstance(node.get(cid), dict) and node[cid].get("error"):
                    return True
                return any(find(v) for v in node.values())
            return isinstance(node, list) and any(find(v) for v in node)

        return status.status_code == 200 and find(status.json())

    wait_for(session_failed, 120, "the device session to fail and be reported", every_s=1.0)

    secrets = {
        "admin key": stack.admin_key,
        "tenant API key": tenant.key,
        "device password": device_password,
        "PostgreSQL password": stack.pg_password,
        "Redis password": stack.redis_password,
        "master key": stack.master_key,
        "tenant DB password": _tenant_db_password(stack, tenant.id),
    }
    assert all(len(v) >= 16 for k, v in secrets.items() if k != "device password"), (
        "a short secret would match by chance"
    )
    session = Path(ray._private.worker._global_node.get_session_dir_path())
    files = [p for p in (session / "logs").rglob("*") if p.is_file()]
    files += [p for p in Path(stack.local_dir).rglob("*.log") if p.is_file()]
    assert len(files) > 10
    found = []
    for path in files:
        data = path.read_bytes()
        found += [(name, str(path)) for name, v in secrets.items() if v.encode() in data]
    assert found == []

    # Serve replicas log Ray's JSON encoding: every line of the API replica's log is an object.
    replica_logs = list((session / "logs" / "serve").glob("replica_scada_api_*.log"))
    assert replica_logs
    records = [rec for p in replica_logs for rec in _json_lines(p.read_text())]
    assert records and all("message" in rec and "levelname" in rec for rec in records)
