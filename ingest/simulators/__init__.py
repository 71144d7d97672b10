"""Simulated field devices for tests, demos and capacity runs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ingest.simulators.opcua_sim import OpcUaSimulator

__all__ = ["OpcUaSimulator"]


def __getattr__(name: str) -> Any:
    # Imported lazily so `python -m ingest.simulators.opcua_sim` does not find the module already
    # imported by its own package (runpy warns about that).
    if name == "OpcUaSimulator":
        from ingest.simulators.opcua_sim import OpcUaSimulator

        return OpcUaSimulator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
