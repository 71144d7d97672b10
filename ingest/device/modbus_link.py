"""One TCP connection to a Modbus device: pymodbus stays behind this module.

The session (``ingest.device.modbus``) sees a ``ModbusLink``, numpy arrays of raw registers or bits
and ``ingest.core.errors``; pymodbus and socket errors are translated here, where they enter.

pymodbus 3.16 behaviour this relies on (read in ``pymodbus/transaction/transaction.py``):
- ``execute`` serialises requests with a lock (one outstanding request per connection), waits
  ``timeout`` for the answer and, with ``retries=0``, raises ``ModbusIOException`` after one wait;
- after ``retries + 3`` further unanswered requests in a row it closes the connection itself;
- responses with a stale transaction id (a late answer to a request that timed out) are skipped;
- ``reconnect_delay=0`` turns its own background reconnect off, so this module owns reconnecting;
- a lost connection does not fail the request in flight: that one still waits for its timeout;
- responses are decoded by the PDU class registered for their function code (``client.register``,
  pymodbus' hook for custom messages). Ours for register and bit reads keep the payload as one
  numpy array instead of a Python int per register, and print without it: the stock classes
  unpack each register with ``struct`` and format the whole list for a debug line that is not
  even logged (``DecodePDU.decode`` calls ``str(pdu)`` eagerly), a third of the device side's
  CPU at 40,000 values/s.
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

import numpy as np
import numpy.typing as npt
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu.bit_message import ReadCoilsResponse, ReadDiscreteInputsResponse
from pymodbus.pdu.register_message import ReadHoldingRegistersResponse, ReadInputRegistersResponse

from ingest.core.errors import DeviceProtocolError, DeviceUnreachable, IngestError, InvalidDeviceSetting
from ingest.device.modbus_decode import ReadRequest

__all__ = ["ExceptionResponse", "ModbusLink", "parse_endpoint"]

_DEFAULT_PORT = 502


class ExceptionResponse(DeviceProtocolError):
    """The device answered with a Modbus exception response."""

    def __init__(self, code: int, request: ReadRequest) -> None:
        super().__init__(
            f"exception code {code} for {request.register} {request.address}+{request.count} "
            f"on unit {request.unit}"
        )
        self.code = code


def _translate(exc: BaseException) -> IngestError:
    """pymodbus and socket errors -> ours, so nothing above this module sees pymodbus types."""
    if isinstance(exc, IngestError):
        return exc
    if isinstance(exc, ModbusIOException):
        # With retries=0 the only ModbusIOException execute() raises is "no response"; bad frames
        # are dropped by the framer and so also end as a timeout.
        return DeviceUnreachable(f"no response: {exc.string}")
    if isinstance(exc, ConnectionException):
        return DeviceUnreachable(f"not connected: {exc.string}")
    if isinstance(exc, OSError | TimeoutError | EOFError):
        return DeviceUnreachable(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
    if isinstance(exc, ModbusException):
        return DeviceProtocolError(exc.string)
    return DeviceProtocolError(f"unexpected {type(exc).__name__}: {exc}")


class _Payload:
    """Mixin of our read responses: the byte-counted payload kept as numpy data (``_keep``) and
    a short description (pymodbus formats every response it decodes for a debug line)."""

    function_code: int
    dev_id: int
    transaction_id: int
    _even = False  # register payloads hold whole words

    def decode(self, data: bytes) -> None:
        n = int(data[0]) if data else 0
        if n >= len(data) or (self._even and n % 2):  # pymodbus drops the frame: it times out
            raise ModbusIOException(f"byte_count {n} in {len(data)} bytes", function_code=self.function_code)
        self._keep(data, n)

    def _keep(self, data: bytes, n: int) -> None:
        raise NotImplementedError

    def __str__(self) -> str:
        return f"{type(self).__name__}(dev_id={self.dev_id}, transaction_id={self.transaction_id})"


class _Words(_Payload):
    """Register responses: the payload as big-endian uint16 words, no copy."""

    _even = True
    words: npt.NDArray[np.uint16]

    def _keep(self, data: bytes, n: int) -> None:
        self.words = np.frombuffer(data, dtype=">u2", count=n // 2, offset=1)


class _Bits(_Payload):
    """Bit responses: the payload unpacked by numpy (least significant bit of each byte first)."""

    bit_array: npt.NDArray[np.bool_]

    def _keep(self, data: bytes, n: int) -> None:
        raw = np.frombuffer(data, dtype=np.uint8, count=n, offset=1)
        self.bit_array = np.unpackbits(raw, bitorder="little").astype(np.bool_)


class _HoldingWords(_Words, ReadHoldingRegistersResponse):
    pass


class _InputWords(_Words, ReadInputRegistersResponse):
    pass


class _CoilBits(_Bits, ReadCoilsResponse):
    pass


class _DiscreteBits(_Bits, ReadDiscreteInputsResponse):
    pass


_RESPONSES = (_HoldingWords, _InputWords, _CoilBits, _DiscreteBits)


def now_us() -> int:
    return time.time_ns() // 1000


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """``tcp://host:port`` (or ``modbus+tcp://``) -> (host, port); registration checks with it."""
    try:
        parts = urlsplit(endpoint)
        port = parts.port or _DEFAULT_PORT
    except ValueError:
        raise InvalidDeviceSetting("endpoint", f"bad host or port in {endpoint!r}") from None
    if (
        parts.scheme not in ("tcp", "modbus+tcp")
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
    ):
        raise InvalidDeviceSetting("endpoint", f"must look like tcp://host:port, got {endpoint!r}")
    return parts.hostname, port


class ModbusLink:
    """An open connection; one request at a time (pymodbus serialises them)."""

    def __init__(self, client: AsyncModbusTcpClient, timeout_s: float) -> None:
        self._client = client
        self.timeout_s = timeout_s

    @property
    def request_bound_s(self) -> float:
        """The longest one request may take, pymodbus' own timeout with room to spare."""
        return self.timeout_s * 2 + 0.5

    @classmethod
    async def open(cls, host: str, port: int, *, name: str, timeout_s: float) -> ModbusLink:
        """Connect; ``DeviceUnreachable`` (or another ``IngestError``) when that fails."""
        client = AsyncModbusTcpClient(
            host,
            port=port,
            name=name,
            timeout=timeout_s,  # connect timeout and per-request response timeout
            retries=0,
            reconnect_delay=0,  # no background reconnects: the session owns the policy
        )
        for response in _RESPONSES:
            client.register(response)
        try:
            # pymodbus bounds connect() by the timeout already; this is belt and braces.
            async with asyncio.timeout(timeout_s * 2 + 0.5):
                ok = await client.connect()
        except (OSError, TimeoutError, ModbusException) as exc:
            client.close()
            raise _translate(exc) from exc
        if not ok:
            client.close()
            raise DeviceUnreachable(f"cannot connect to {host}:{port}")
        return cls(client, timeout_s)

    @property
    def connected(self) -> bool:
        return bool(self._client.connected)

    def close(self) -> None:
        self._client.close()

    async def read(self, req: ReadRequest) -> tuple[npt.NDArray[np.bool_] | npt.NDArray[np.uint16], int]:
        """Issue one planned read: (raw bits, or the registers as big-endian words, read-only;
        arrival time in us).

        Raises ``ExceptionResponse`` for a Modbus exception answer, ``DeviceUnreachable`` for
        no answer or no connection, ``DeviceProtocolError`` for anything else pymodbus refuses.
        """
        client = self._client
        try:
            # pymodbus times the response out itself (timeout_s). The session bounds a whole poll
            # as well (ModbusSession), against a wait pymodbus would not time: one timer per poll
            # rather than one per request (a tenth of this path's CPU).
            if req.register == "holding":
                rsp = await client.read_holding_registers(req.address, count=req.count, device_id=req.unit)
            elif req.register == "input":
                rsp = await client.read_input_registers(req.address, count=req.count, device_id=req.unit)
            elif req.register == "coil":
                rsp = await client.read_coils(req.address, count=req.count, device_id=req.unit)
            else:
                rsp = await client.read_discrete_inputs(req.address, count=req.count, device_id=req.unit)
        except (ModbusException, OSError, TimeoutError) as exc:
            raise _translate(exc) from exc
        t_us = now_us()
        if rsp.isError():
            raise ExceptionResponse(int(getattr(rsp, "exception_code", 0)), req)
        if req.is_bits:
            if isinstance(rsp, _Bits):
                return rsp.bit_array[: req.count], t_us
            return np.array(rsp.bits[: req.count], dtype=np.bool_), t_us  # a stock response class
        if isinstance(rsp, _Words):
            return rsp.words, t_us
        return np.array(rsp.registers, dtype=np.uint16), t_us
