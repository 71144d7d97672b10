"""Simulated field devices for tests, demos and capacity runs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ingest.simulators.opcua_server import OpcUaSimulator

__all__ = ["OpcUaSimulator"]


def __getattr__(name: str) -> Any:
    # Imported lazily: asyncua's server is a heavy import that the fleet helpers never need.
    if name == "OpcUaSimulator":
        from ingest.simulators.opcua_server import OpcUaSimulator

        return OpcUaSimulator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
