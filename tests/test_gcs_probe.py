"""``scada-ingest down`` and ``status`` ask whether a Ray cluster listens before joining it:
``ray.init`` at an address where nothing listens waits minutes for a GCS to appear (no
services)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from actors.deploy import gcs_listening
from ingest.core.config import Settings


def _settings() -> Settings:
    return Settings(pg_host="127.0.0.1")


def test_a_listening_address_is_found_and_a_closed_one_is_not(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
        assert gcs_listening(_settings())
    # The same port, closed now: refused at once.
    assert not gcs_listening(_settings(), timeout_s=2.0)


@pytest.mark.parametrize("address", ["auto", "ray://127.0.0.1:10001/x"])
def test_other_addresses_are_left_to_ray(monkeypatch: pytest.MonkeyPatch, address: str) -> None:
    monkeypatch.setenv("RAY_ADDRESS", address)
    assert gcs_listening(_settings())


def test_status_with_nothing_running_says_so_instead_of_waiting() -> None:
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        port = srv.getsockname()[1]  # bound, never listening: refused
        env = {**os.environ, "RAY_ADDRESS": f"127.0.0.1:{port}"}
        # The timeout guards against the old wait (minutes); it is not a timed assert.
        out = subprocess.run(
            [sys.executable, "-m", "serve_app.cli", "status", "--json"],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
    assert out.returncode == 3, out.stderr
    assert json.loads(out.stdout.splitlines()[-1]) == {"running": False, "address": f"127.0.0.1:{port}"}
    assert "nothing is running" in out.stderr
