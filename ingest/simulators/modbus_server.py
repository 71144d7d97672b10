"""The simulated Modbus TCP device: a pymodbus server holding ``modbus_layout`` per unit.

Register layout: see ``modbus_layout`` (the same for every unit): one point of every numeric
type in every byte order, bools, bits, strings, coils and discrete inputs, and counters from
holding register ``COUNTER_BASE`` that follow the clock in ``counting`` mode.

Fault hooks: ``stop_answering()`` (connections are accepted and requests read, but no answer is
ever sent), ``set_exception(code)`` (every request is answered with that exception code),
``restart()`` (the server goes away, dropping every connection, and comes back on the same port).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Literal

from pymodbus.constants import ExcCodes
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType as SimDataType
from pymodbus.simulator import SimData, SimDevice

from ingest.device.modbus_decode import ModbusPoint, RegisterType
from ingest.simulators.modbus_layout import (
    COIL_BITS,
    COUNTER_BASE,
    DISCRETE_BITS,
    MAX_COUNTERS,
    bit_points,
    register_image,
)

__all__ = ["ModbusSimulator", "SimulatorMode"]

SimulatorMode = Literal["counting", "static"]

_READ_CODES: dict[int, RegisterType] = {1: "coil", 2: "discrete", 3: "holding", 4: "input"}


class ModbusSimulator:
    """A pymodbus TCP server holding the layout above for each unit, with fault hooks."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        units: Sequence[int] = (1,),
        mode: SimulatorMode = "counting",
        interval_ms: int = 100,
        counters: int = 100,
    ) -> None:
        if mode not in ("counting", "static"):
            raise ValueError(f"mode must be 'counting' or 'static', got {mode!r}")
        if interval_ms <= 0:
            raise ValueError(f"interval_ms must be > 0, got {interval_ms}")
        if not 0 <= counters <= MAX_COUNTERS:
            raise ValueError(f"counters must be 0..{MAX_COUNTERS}, got {counters}")
        if not units or len(set(units)) != len(units) or not all(1 <= u <= 255 for u in units):
            raise ValueError(f"units must be distinct ids 1..255, got {units!r}")
        self.host = host
        self.mode = mode
        self.interval_ms = interval_ms
        self.counters = counters
        self.units = tuple(units)
        self._port = port
        self._server: ModbusTcpServer | None = None
        self._t0: float | None = None
        self._silent = False
        self._exception: int | None = None
        self._requests: dict[str, int] = {"coil": 0, "discrete": 0, "holding": 0, "input": 0}
        self._other_requests = 0
        self._connections = 0

    # --- layout -------------------------------------------------------------------------------

    def _unit(self, unit: int | None) -> int:
        u = self.units[0] if unit is None else unit
        if u not in self.units:
            raise ValueError(f"unit {u} is not simulated (units: {self.units})")
        return u

    def _typed(self, unit: int | None) -> list[tuple[ModbusPoint, float | str]]:
        u = self._unit(unit)
        rows: list[tuple[ModbusPoint, float | str]] = []
        rows += register_image("holding", u)[1]
        rows += register_image("input", u)[1]
        rows += bit_points("coil", u, COIL_BITS)
        rows += bit_points("discrete", u, DISCRETE_BITS)
        return [(replace(p, tag_id=i), v) for i, (p, v) in enumerate(rows, start=1)]

    def points(self, unit: int | None = None) -> list[ModbusPoint]:
        """One point of every data type and byte order (plus bits, coils, inputs); ids 1..n."""
        return [p for p, _ in self._typed(unit)]

    def expected_values(self, unit: int | None = None) -> dict[int, float | str]:
        """tag_id -> the value ``points()[tag_id - 1]`` must decode to (text for strings)."""
        return {p.tag_id: v for p, v in self._typed(unit)}

    def counter_points(
        self, n: int, *, unit: int | None = None, first_tag_id: int | None = None
    ) -> list[ModbusPoint]:
        """n uint32 ABCD counters from COUNTER_BASE; tag ids follow ``points()`` by default."""
        if not 0 <= n <= self.counters:
            raise ValueError(f"the simulator has {self.counters} counters, asked for {n}")
        u = self._unit(unit)
        first = len(self.points(u)) + 1 if first_tag_id is None else first_tag_id
        return [
            ModbusPoint(
                tag_id=first + k,
                unit=u,
                register="holding",
                address=COUNTER_BASE + 2 * k,
                data_type="uint32",
            )
            for k in range(n)
        ]

    def counter_value(self) -> int:
        """What every counter reads right now."""
        if self.mode != "counting" or self._t0 is None:
            return 0
        ticks = int((time.monotonic() - self._t0) * 1000.0 // self.interval_ms)
        return ticks & 0xFFFFFFFF

    def _device(self, unit: int) -> SimDevice:
        holding, _ = register_image("holding", unit)
        inputs, _ = register_image("input", unit)
        hr = [SimData(0, values=holding, datatype=SimDataType.REGISTERS)]
        if self.counters:
            hr.append(SimData(COUNTER_BASE, values=[0] * (2 * self.counters), datatype=SimDataType.REGISTERS))
        return SimDevice(
            id=unit,
            # Four separate tables (not pymodbus' shared block), each coil / input its own bit.
            simdata=(
                [SimData(0, values=list(COIL_BITS), datatype=SimDataType.BITS)],
                [SimData(0, values=list(DISCRETE_BITS), datatype=SimDataType.BITS)],
                hr,
                [SimData(0, values=inputs, datatype=SimDataType.REGISTERS)],
            ),
            action=self._action,
        )

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        # pymodbus calls this before it answers from ``registers`` (the live table): the
        # counters a read touches are brought up to date here, so they follow the clock exactly.
        if function_code != 3 or not self.counters or set_values is not None:
            return None
        first = max(0, (address - COUNTER_BASE) // 2)
        last = min(self.counters, (address + count - COUNTER_BASE + 1) // 2)
        if first < last:
            v = self.counter_value()
            at = COUNTER_BASE - start_address + 2 * first
            registers[at : at + 2 * (last - first)] = [v >> 16, v & 0xFFFF] * (last - first)
        return None

    # --- server -------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port == 0:
            raise RuntimeError("the simulator has not been started yet (port 0 = pick one)")
        return self._port

    @property
    def endpoint(self) -> str:
        return f"tcp://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        if self._server is not None:
            return
        server = ModbusTcpServer(
            [self._device(u) for u in self.units],
            address=(self.host, self._port),
            trace_packet=self._trace_packet,
            trace_pdu=self._trace_pdu,
            trace_connect=self._trace_connect,
        )
        await server.serve_forever(background=True)
        sockets = getattr(server.transport, "sockets", None) or ()
        if self._port == 0 and sockets:
            self._port = int(sockets[0].getsockname()[1])
        self._server = server
        if self._t0 is None:
            self._t0 = time.monotonic()

    async def stop(self) -> None:
        """Stop listening and drop every connection (counters keep following the clock)."""
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()  # type: ignore[no-untyped-call]

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    # --- fault hooks --------------------------------------------------------------------------

    def stop_answering(self) -> None:
        """Keep accepting connections and reading requests, but never send an answer."""
        self._silent = True

    def resume_answering(self) -> None:
        self._silent = False

    def set_exception(self, code: int | None) -> None:
        """Answer every request with this Modbus exception code (None: answer normally)."""
        if code is not None and not 1 <= code <= 255:
            raise ValueError(f"exception code must be 1..255, got {code}")
        self._exception = code

    # --- counters of what clients did ---------------------------------------------------------

    @property
    def requests(self) -> dict[str, int]:
        """Read requests received, per register type (answered or not)."""
        return dict(self._requests)

    @property
    def request_count(self) -> int:
        return sum(self._requests.values()) + self._other_requests

    @property
    def connections(self) -> int:
        """TCP connections accepted so far."""
        return self._connections

    def summary(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "requests": self.request_count,
            "by_register": self.requests,
            "connections": self._connections,
            "counter": self.counter_value(),
        }

    # pymodbus trace hooks: called for every packet / PDU of every connection.

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        # An empty write sends nothing: the request was read and dropped, the socket stays open.
        return b"" if sending and self._silent else data

    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if not sending:
            kind = _READ_CODES.get(pdu.function_code)
            if kind is None:
                self._other_requests += 1
            else:
                self._requests[kind] += 1
            return pdu
        if self._exception is not None:
            return ExceptionResponse(
                pdu.function_code & 0x7F,
                self._exception,
                device_id=pdu.dev_id,
                transaction=pdu.transaction_id,
            )
        return pdu

    def _trace_connect(self, connected: bool) -> None:
        if connected:
            self._connections += 1
