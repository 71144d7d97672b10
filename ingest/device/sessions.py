"""Build the protocol session for a connection spec: the one place a spec becomes an
``OpcUaSession`` or a ``ModbusSession`` (the host runs it; registration checks build it without
running it). The protocol libraries load only when a session of theirs is built."""

from __future__ import annotations

import logging
from typing import Any
from typing import Protocol as TypingProtocol

import numpy as np

from ingest.core.models import ConnectionSpec, Protocol
from ingest.device.session_inputs import modbus_points, opcua_security, opcua_tags
from ingest.device.takeover import TakeoverHooks


class DeviceSession(TypingProtocol):
    async def run(self) -> None: ...
    async def stop(self) -> None: ...
    @property
    def stats(self) -> dict[str, Any]: ...


def make_session(
    spec: ConnectionSpec,
    on_values: Any,
    on_state: Any,
    on_text: Any = None,
    on_gap: Any = None,
    takeover: TakeoverHooks | None = None,
) -> DeviceSession:
    """Build the protocol session for a connection spec (registration checks the same inputs)."""
    if spec.protocol is Protocol.OPCUA:
        from ingest.device.opcua import OpcUaSession

        return OpcUaSession(
            spec.endpoint,
            opcua_tags(spec),
            on_values,
            publishing_interval_ms=spec.publishing_interval_ms,
            on_state=on_state,
            on_text=on_text,
            on_gap=on_gap,
            security=opcua_security(spec),
            takeover=takeover,
        )
    if spec.protocol is Protocol.MODBUS:
        from ingest.device.modbus import ModbusSession

        # pymodbus logs every timeout at ERROR with a frame dump; the session counts them instead.
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

        def on_strings(pairs: list[tuple[int, str]], time_us: int) -> None:
            if on_text is not None and pairs:
                n = len(pairs)
                on_text(
                    np.array([p[0] for p in pairs], np.int32),
                    np.full(n, time_us, np.int64),
                    [p[1] for p in pairs],
                    np.zeros(n, np.int32),
                )

        return ModbusSession(
            spec.endpoint,
            modbus_points(spec),
            on_values,
            poll_interval_ms=spec.publishing_interval_ms,
            on_state=on_state,
            on_strings=on_strings,
        )
    raise NotImplementedError(f"protocol {spec.protocol.value} is not supported")
