"""Where a ticket's answer sends a live client (serve_app.live_url): the port this process
listens on within Serve's direct-ingress range, found from /proc; an explicit setting wins; none
while direct ingress is off or nothing listens yet. Real sockets, no Ray."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from ingest.core import procfs
from ingest.core.config import Settings
from serve_app.live_url import LiveUrl


@pytest.fixture
def listening() -> Iterator[int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    try:
        yield s.getsockname()[1]
    finally:
        s.close()


def _live_url(**settings: Any) -> LiveUrl:
    return LiveUrl(SimpleNamespace(settings=Settings(**settings)))  # type: ignore[arg-type]


def _range(monkeypatch: pytest.MonkeyPatch, lo: int, hi: int, on: str = "1") -> None:
    monkeypatch.setenv("RAY_SERVE_ENABLE_DIRECT_INGRESS", on)
    monkeypatch.setenv("RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT", str(lo))
    monkeypatch.setenv("RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT", str(hi))


def test_listening_ports_are_this_process_s_own_within_the_range(listening: int) -> None:
    assert listening in procfs.listening_ports()
    assert procfs.listening_ports(listening, listening) == [listening]
    assert procfs.listening_ports(listening + 1, listening + 1) == []
    # A connected (not listening) socket of ours is not counted.
    c = socket.create_connection(("127.0.0.1", listening))
    try:
        assert c.getsockname()[1] not in procfs.listening_ports()
    finally:
        c.close()


def test_the_replica_names_its_own_port_on_its_host(monkeypatch: pytest.MonkeyPatch, listening: int) -> None:
    _range(monkeypatch, listening - 5, listening + 5)
    assert _live_url(http_host="127.0.0.1").get() == f"http://127.0.0.1:{listening}"


def test_nothing_named_when_direct_ingress_is_off_or_not_listening(
    monkeypatch: pytest.MonkeyPatch, listening: int
) -> None:
    _range(monkeypatch, listening, listening, on="0")
    assert _live_url().get() is None
    _range(monkeypatch, listening + 1, listening + 1)
    late = _live_url()
    assert late.get() is None  # not up yet: asked again next time, not remembered as none
    _range(monkeypatch, listening, listening)
    assert late.get() == f"http://127.0.0.1:{listening}"


def test_a_configured_url_wins(monkeypatch: pytest.MonkeyPatch, listening: int) -> None:
    _range(monkeypatch, listening, listening)
    assert _live_url(live_url="https://live.example.test/").get() == "https://live.example.test"
