"""``scada-ingest down`` asks whether a Ray cluster listens before joining it: ``ray.init`` at an
address where nothing listens waits minutes for a GCS to appear (no services)."""

from __future__ import annotations

import socket

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
