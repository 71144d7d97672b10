"""A Modbus TCP device simulator (pymodbus server), for tests, demos and capacity runs.

Register layout, the same for every unit (0-based protocol addresses):

holding registers
    0..79     one point of every numeric type in every byte order: for each data type in
              ``NUMERIC_TYPES`` (int16, uint16, int32, uint32, int64, uint64, float32, float64)
              and each byte order (ABCD, DCBA, BADC, CDAB), in that nesting, packed back to back
    80        0       bool (register != 0) -> False
    81        0x0100  bool -> True
    82        0xA053  bit points bit=0..15, ABCD
    83        0xA053 with its bytes swapped: bit points bit=0..15, BADC
    84..107   the text ``HOLDING-TXT`` as a 6-register string (NUL padded) in ABCD, DCBA, BADC, CDAB
    1000..    counters (``counters`` of them): uint32 ABCD at 1000 + 2 * k; in ``counting`` mode
              every counter reads ``counter_value()``, which goes up by one every ``interval_ms``
              from ``start()`` on (wrapping at 2**32); in ``static`` mode they read 0.
input registers
    0..107    the same layout as holding 0..107 with ``INPUT_VALUES`` and the text ``INPUT-TXT``.
coils             0..31: ``COIL_BITS``
discrete inputs   0..31: ``DISCRETE_BITS``

Addresses in between (108..999 of the holding registers) are not mapped: reading them is answered
with exception 2, as a real device does. ``points()`` lists the typed points (tag ids 1..n) and
``expected_values()`` what each one must decode to; the register images are built here with
``struct`` so that they check our decoder rather than repeat it.

Fault hooks: ``stop_answering()`` (connections are accepted and requests read, but no answer is
ever sent), ``set_exception(code)`` (every request is answered with that exception code),
``restart()`` (the server goes away, dropping every connection, and comes back on the same port).

Command line: ``python -m ingest.simulators.modbus_sim --port 0 --units 1 --counters 100
--interval-ms 100`` prints ``READY tcp://127.0.0.1:PORT`` once it accepts connections and serves
until SIGTERM / SIGINT, then prints a JSON summary line. ``--count N`` starts N such servers as
separate processes (free ports, or PORT..PORT+N-1) and prints one READY line for each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Literal

from pymodbus.constants import ExcCodes
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType as SimDataType
from pymodbus.simulator import SimData, SimDevice

from ingest.device.modbus_decode import ByteOrder, DataType, ModbusPoint, RegisterType

__all__ = [
    "COUNTER_BASE",
    "ModbusSimulator",
    "SimulatorMode",
]

SimulatorMode = Literal["counting", "static"]

NUMERIC_TYPES: tuple[DataType, ...] = (
    "int16",
    "uint16",
    "int32",
    "uint32",
    "int64",
    "uint64",
    "float32",
    "float64",
)
BYTE_ORDERS: tuple[ByteOrder, ...] = ("ABCD", "DCBA", "BADC", "CDAB")
_STRUCT = {
    "int16": "h",
    "uint16": "H",
    "int32": "i",
    "uint32": "I",
    "int64": "q",
    "uint64": "Q",
    "float32": "f",
    "float64": "d",
}
# Values with distinct bytes, so that any byte or word order mix-up changes them; floats are
# exactly representable in their width.
HOLDING_VALUES: dict[str, int | float] = {
    "int16": -0x1234,
    "uint16": 0xBEEF,
    "int32": -0x12345678,
    "uint32": 0xDEADBEEF,
    "int64": -0x0123456789ABCDEF,
    "uint64": 0x0123456789ABCDEF,
    "float32": -1234.5625,
    "float64": 12345.678901234567,
}
# Edge values: the extremes of each integer type.
INPUT_VALUES: dict[str, int | float] = {
    "int16": -(2**15),
    "uint16": 2**16 - 1,
    "int32": -(2**31),
    "uint32": 2**32 - 1,
    "int64": -(2**63),
    "uint64": 2**64 - 1,
    "float32": 3.0517578125e-05,
    "float64": -1.0e300,
}
BIT_REGISTER = 0xA053
STRING_REGISTERS = 6
TEXTS = {"holding": "HOLDING-TXT", "input": "INPUT-TXT"}
COIL_BITS = [i % 3 == 0 for i in range(32)]
DISCRETE_BITS = [i % 5 in (1, 2) for i in range(32)]
COUNTER_BASE = 1000
MAX_COUNTERS = (65536 - COUNTER_BASE) // 2
_READ_CODES: dict[int, RegisterType] = {1: "coil", 2: "discrete", 3: "holding", 4: "input"}

_log = logging.getLogger(__name__)


def _wire_words(big_endian: bytes, order: str) -> list[int]:
    """Bytes of a big-endian value -> the register words a device with that byte order sends."""
    pairs = [big_endian[i : i + 2] for i in range(0, len(big_endian), 2)]
    if order == "DCBA":
        wire = big_endian[::-1]
    elif order == "BADC":
        wire = b"".join(p[::-1] for p in pairs)
    elif order == "CDAB":
        wire = b"".join(reversed(pairs))
    else:
        wire = big_endian
    return [int.from_bytes(wire[i : i + 2], "big") for i in range(0, len(wire), 2)]


def _string_words(text: str, order: str) -> list[int]:
    raw = text.encode("ascii").ljust(2 * STRING_REGISTERS, b"\x00")
    if order in ("BADC", "DCBA"):  # first character in the low byte of each register
        raw = b"".join(raw[i : i + 2][::-1] for i in range(0, len(raw), 2))
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


def _layout(
    register: RegisterType, unit: int
) -> tuple[list[int], list[tuple[ModbusPoint, float | str]]]:
    """The register image of one register table and its points (tag ids assigned later)."""
    values = HOLDING_VALUES if register == "holding" else INPUT_VALUES
    image: list[int] = []
    points: list[tuple[ModbusPoint, float | str]] = []

    def add(words: list[int], value: float | str, **kw: Any) -> None:
        points.append((ModbusPoint(tag_id=0, unit=unit, register=register, **kw), value))
        image.extend(words)

    for dt in NUMERIC_TYPES:
        v = values[dt]
        for order in BYTE_ORDERS:
            words = _wire_words(struct.pack(">" + _STRUCT[dt], v), order)
            add(words, float(v), address=len(image), data_type=dt, byte_order=order)
    add([0], 0.0, address=len(image), data_type="bool")
    add([0x0100], 1.0, address=len(image), data_type="bool")
    for order, word in (("ABCD", BIT_REGISTER), ("BADC", _wire_words(b"\xa0\x53", "BADC")[0])):
        addr = len(image)
        for bit in range(16):
            points.append(
                (
                    ModbusPoint(
                        tag_id=0,
                        unit=unit,
                        register=register,
                        address=addr,
                        data_type="bool",
                        byte_order=order,
                        bit=bit,
                    ),
                    float((BIT_REGISTER >> bit) & 1),
                )
            )
        image.append(word)
    for order in BYTE_ORDERS:
        add(
            _string_words(TEXTS[register], order),
            TEXTS[register],
            address=len(image),
            data_type="string",
            byte_order=order,
            length=STRING_REGISTERS,
        )
    return image, points


def _bit_points(
    register: RegisterType, unit: int, bits: list[bool]
) -> list[tuple[ModbusPoint, float]]:
    return [
        (ModbusPoint(tag_id=0, unit=unit, register=register, address=i, data_type="bool"), float(b))
        for i, b in enumerate(bits)
    ]


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
        rows += _layout("holding", u)[1]
        rows += _layout("input", u)[1]
        rows += _bit_points("coil", u, COIL_BITS)
        rows += _bit_points("discrete", u, DISCRETE_BITS)
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
        holding, _ = _layout("holding", unit)
        inputs, _ = _layout("input", unit)
        hr = [SimData(0, values=holding, datatype=SimDataType.REGISTERS)]
        if self.counters:
            hr.append(
                SimData(
                    COUNTER_BASE, values=[0] * (2 * self.counters), datatype=SimDataType.REGISTERS
                )
            )
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


# --- command line -------------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m ingest.simulators.modbus_sim", description=__doc__.split("\n")[0]
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--units", default="1", help="comma-separated unit ids, e.g. 1,2,3")
    p.add_argument("--counters", type=int, default=100, help="uint32 counters per unit")
    p.add_argument("--interval-ms", type=int, default=100, help="counter increment period")
    p.add_argument("--mode", choices=["counting", "static"], default="counting")
    p.add_argument("--count", type=int, default=1, help="servers to start, one process each")
    p.add_argument("--exit-on-stdin-eof", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        args.unit_ids = tuple(int(u) for u in args.units.split(",") if u.strip())
    except ValueError:
        p.error(f"--units must be comma-separated integers, got {args.units!r}")
    if args.count < 1:
        p.error("--count must be >= 1")
    return args


async def _serve(args: argparse.Namespace) -> None:
    sim = ModbusSimulator(
        host=args.host,
        port=args.port,
        units=args.unit_ids,
        mode=args.mode,
        interval_ms=args.interval_ms,
        counters=args.counters,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.exit_on_stdin_eof:
        # Started by a --count parent: its end (even by SIGKILL) closes our stdin.
        def watch() -> None:
            sys.stdin.buffer.read()
            loop.call_soon_threadsafe(stop.set)

        threading.Thread(target=watch, name="stdin-watch", daemon=True).start()
    await sim.start()
    try:
        print(f"READY {sim.endpoint}", flush=True)
        await stop.wait()
    finally:
        await sim.stop()
    print(json.dumps(sim.summary()), flush=True)


def _serve_many(args: argparse.Namespace, argv: list[str]) -> int:
    """Start ``--count`` servers as child processes and relay their READY lines."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    children: list[subprocess.Popen[bytes]] = []
    rc = 0
    try:
        for i in range(args.count):
            port = 0 if args.port == 0 else args.port + i
            cmd = [sys.executable, "-m", "ingest.simulators.modbus_sim", *argv]
            cmd += ["--count", "1", "--port", str(port), "--exit-on-stdin-eof"]
            child = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            children.append(child)
        for child in children:
            assert child.stdout is not None
            line = child.stdout.readline().decode().strip()
            if not line.startswith("READY "):
                print(f"simulator process {child.pid} failed to start", file=sys.stderr)
                return 1
            print(line, flush=True)
        while not stop.wait(0.2):
            if any(c.poll() is not None for c in children):
                print("a simulator process exited", file=sys.stderr)
                rc = 1
                break
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                out, _ = child.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()
                out, _ = child.communicate()
            for line in out.decode().splitlines():
                if line.startswith("{"):
                    print(line, flush=True)
    return rc


def _strip_count_and_port(argv: list[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--count", "--port"):
            skip = True
            continue
        if a.startswith(("--count=", "--port=")):
            continue
        out.append(a)
    return out


def main(argv: list[str] | None = None) -> int:
    from ingest.core.logging_json import configure_json_logging

    configure_json_logging(logging.WARNING)
    raw = list(sys.argv[1:] if argv is None else argv)
    args = _parse_args(raw)
    if args.count > 1:
        return _serve_many(args, _strip_count_and_port(raw))
    asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
