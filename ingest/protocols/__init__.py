"""Protocol adapters: device sessions that deliver readings as numpy columns.

Each adapter keeps its third-party library (asyncua, pymodbus) behind its own module and raises
only ``ingest.errors`` types.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ingest.protocols.opcua import OpcUaSecurity, OpcUaSession, OpcUaTag

__all__ = ["OpcUaSecurity", "OpcUaSession", "OpcUaTag"]

_OPCUA = frozenset(__all__)


def __getattr__(name: str) -> Any:
    # Lazy, so that importing one adapter does not pull in every protocol library.
    if name in _OPCUA:
        from ingest.protocols import opcua

        return getattr(opcua, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
