"""One Modbus TCP device session: poll on a fixed schedule, hand over values in columns, reconnect.

pymodbus stays behind ``modbus_link``: callers see ``ModbusPoint``, numpy columns and
``ingest.core.errors``. Reads are planned once (``plan_reads``: the fewest requests per unit and
register type) and decoded with numpy (``modbus_decode``).

What a caller can rely on:
- polls run on a fixed schedule (tick k at start + k * interval, no drift). A tick that cannot be
  polled (disconnected, or an earlier poll ran over) is recorded, not skipped: every point gets a
  row with value NaN and a Bad quality, stamped with the tick's time, and ``missed_polls`` counts
  it. The same holds per request inside a poll: a timeout or a refused connection gives
  ``BAD_NO_COMMUNICATION`` rows, a Modbus exception response ``BAD`` rows.
- source time is when the response arrived (microseconds since the Unix epoch, UTC).
- each session runs in its own asyncio task and only ever waits on its own socket with short
  timeouts; pymodbus retries are off, so a silent device costs one timeout per unit per poll and
  never delays another session on the same event loop.
- the TCP connection is re-established with capped exponential backoff and jitter.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from ingest.core.backoff import Backoff
from ingest.core.errors import DeviceProtocolError, DeviceUnreachable, IngestError
from ingest.core.models import Quality, quality_as_int4
from ingest.device.modbus_columns import PollRows, clear_of
from ingest.device.modbus_decode import ModbusPoint, ReadRequest, decode, plan_reads
from ingest.device.modbus_link import ExceptionResponse, ModbusLink, now_us, parse_endpoint
from ingest.device.session_events import OnState, OnValues, SessionState

__all__ = ["ModbusSession", "OnState", "OnStrings", "OnValues", "SessionState", "parse_endpoint"]

_log = logging.getLogger(__name__)

OnStrings = Callable[[list[tuple[int, str]], int], None]
"""``([(tag_id, text), ...], source_time_us)`` for string points read Good in one response."""


_GOOD = quality_as_int4(Quality.GOOD)
_BAD = quality_as_int4(Quality.BAD)
_NO_COMM = quality_as_int4(Quality.BAD_NO_COMMUNICATION)
# Gateway exceptions (0x0A path unavailable, 0x0B target failed to respond) mean the device behind
# the gateway could not be reached: that is no communication, not a bad value.
_GATEWAY_CODES = frozenset((0x0A, 0x0B))


class ModbusSession:
    """Polls one Modbus TCP device (all its units) and delivers values in numpy columns."""

    def __init__(
        self,
        endpoint: str,
        points: Sequence[ModbusPoint],
        on_values: OnValues,
        *,
        poll_interval_ms: int = 1000,
        timeout_s: float = 1.0,
        reconnect_initial_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        on_state: OnState | None = None,
        on_strings: OnStrings | None = None,
        max_register_gap: int = 16,
        max_bit_gap: int = 64,
    ) -> None:
        self._host, self._port = parse_endpoint(endpoint)
        if poll_interval_ms <= 0:
            raise ValueError(f"poll_interval_ms must be > 0, got {poll_interval_ms}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if not 0 < reconnect_initial_s <= reconnect_max_s:
            raise ValueError("need 0 < reconnect_initial_s <= reconnect_max_s")
        if not points:
            raise ValueError("a Modbus session needs at least one point")
        seen: set[int] = set()
        for p in points:
            if p.tag_id in seen:
                raise ValueError(f"tag_id {p.tag_id} appears twice")
            seen.add(p.tag_id)
        self.endpoint = endpoint
        self._requests = plan_reads(points, max_register_gap=max_register_gap, max_bit_gap=max_bit_gap)
        # String points read Good: with a text sink (on_strings) their text goes there and they
        # leave the float columns; without one they stay visible as NaN rows marked Bad (as the
        # OPC UA session does) instead of vanishing. Failed reads are Bad rows either way.
        self._string_mask: list[npt.NDArray[np.bool_] | None] = []
        for r in self._requests:
            mask = np.array([p.data_type == "string" for p in r.points], dtype=np.bool_)
            self._string_mask.append(mask if mask.any() else None)
        self._all_tag_ids = np.concatenate([r.tag_ids for r in self._requests])
        self._on_values = on_values
        self._on_state = on_state
        self._on_strings = on_strings
        self._interval_s = poll_interval_ms / 1000.0
        self._timeout_s = timeout_s

        self._link: ModbusLink | None = None
        # Counts connection attempts / connections since the device last answered.
        self._backoff = Backoff(reconnect_initial_s, reconnect_max_s)
        self._reconnect_at = 0.0  # loop time of the next connection attempt
        self._ever_connected = False
        self._stop = asyncio.Event()
        self._done = asyncio.Event()
        self._running = False
        self._inner: asyncio.Task[None] | None = None
        self._run_at: float | None = None  # monotonic time run() was called
        self._last_stamps: set[int] = set()  # source times of the last poll's rows
        # Set once the first poll was tried (read, refused or unreachable), or run() returned.
        self.first_tick = asyncio.Event()
        self._state = SessionState.DISCONNECTED
        self._stats: dict[str, Any] = {
            "state": SessionState.DISCONNECTED.value,
            "polls": 0,
            "first_poll_ms": 0.0,  # from run() to the first poll issued (connected by then)
            "first_value_ms": 0.0,  # ... and to the first values read
            "missed_polls": 0,
            "overruns": 0,  # missed polls because an earlier poll (or connect) ran too long
            "requests": 0,
            "values_delivered": 0,
            "bad_values": 0,
            "timeouts": 0,
            "exceptions": 0,
            "reconnects": 0,
            "callback_errors": 0,
            "last_error": None,
        }

    # --- public surface ---------------------------------------------------------------------

    @property
    def stats(self) -> dict[str, Any]:
        return dict(self._stats)

    @property
    def requests(self) -> tuple[ReadRequest, ...]:
        """The reads issued every poll, as planned."""
        return tuple(self._requests)

    async def run(self) -> None:
        """Poll until ``stop()``; never raises for device failures (see ``stats``, ``on_state``).

        A session runs once: after ``stop()``, ``run()`` returns at once.
        """
        if self._running:
            raise RuntimeError("run() is already running for this session")
        if self._stop.is_set():
            return
        self._running = True
        self._run_at = time.monotonic()
        self._done.clear()
        # The polling lives in an inner task so that stop() can cut a wait short by cancelling
        # it, while the caller's task (awaiting run()) simply sees run() return.
        inner = asyncio.create_task(self._poll_loop(), name=f"modbus {self.endpoint}")
        self._inner = inner
        try:
            await inner
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not (self._stop.is_set() and inner.cancelled()) or (current is not None and current.cancelling()):
                inner.cancel()
                raise
        finally:
            self._drop_link()
            self._set_state(SessionState.DISCONNECTED, None)
            self._running = False
            self.first_tick.set()
            self._done.set()

    async def stop(self) -> None:
        """Ask ``run()`` to return; waits for it, so no ``on_values`` call follows."""
        self._stop.set()
        if self._inner is not None and not self._inner.done():
            self._inner.cancel()
        if self._running:
            await self._done.wait()

    # --- the schedule -------------------------------------------------------------------------

    async def _poll_loop(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self._interval_s
        t0 = loop.time()
        k = 0
        # The flag, not only the cancellation stop() sends: on Python 3.11 a cancellation that
        # arrives as pymodbus' wait_for() completes is swallowed (fixed in 3.12).
        while not self._stop.is_set():
            delay = t0 + k * interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await self._tick()
            self.first_tick.set()
            if self._stop.is_set():
                return
            k += 1
            now = loop.time()
            # Ticks that fell due while this one ran (a slow connect, timeouts) are recorded as
            # missed rather than polled in a burst, so the schedule keeps its phase.
            while t0 + (k + 1) * interval <= now:
                self._stats["overruns"] += 1
                due = now_us() - round((now - (t0 + k * interval)) * 1e6)
                self._record_missed(clear_of(due, self._last_stamps))
                k += 1

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        if self._link is None and loop.time() >= self._reconnect_at:
            await self._connect()
        if self._stop.is_set():
            return
        client = self._link
        if client is None:
            self._record_missed(now_us())
            return
        if not self._stats["polls"] and self._run_at is not None:
            self._stats["first_poll_ms"] = round((time.monotonic() - self._run_at) * 1000.0, 1)
        self._stats["polls"] += 1
        bound = len(self._requests) * client.request_bound_s
        lost = "connection lost"
        try:
            # Every request is timed by pymodbus; this bounds the poll against a wait it would not
            # time. Past it the poll's unread requests are recorded Bad and the link replaced.
            async with asyncio.timeout(bound):
                all_good = await self._poll(client)
        except TimeoutError:
            all_good, lost = False, f"a poll ran past {bound:.1f} s (every request's bound)"
            self._stats["timeouts"] += 1
            client.close()
        if not all_good:
            self._stats["missed_polls"] += 1
        if not client.connected:
            self._lost(DeviceUnreachable(lost))

    def _record_missed(self, time_us: int) -> None:
        self._stats["polls"] += 1
        self._stats["missed_polls"] += 1
        n = self._all_tag_ids.shape[0]
        self._emit(
            self._all_tag_ids,
            np.full(n, time_us, dtype=np.int64),
            np.full(n, np.nan, dtype=np.float64),
            np.full(n, _NO_COMM, dtype=np.int32),
        )

    # --- connection ---------------------------------------------------------------------------

    async def _connect(self) -> None:
        self._set_state(SessionState.CONNECTING, None)
        try:
            link = await ModbusLink.open(
                self._host, self._port, name=f"modbus {self.endpoint}", timeout_s=self._timeout_s
            )
        except IngestError as err:
            self._schedule_reconnect()
            self._report(err)
            return
        if self._ever_connected:
            self._stats["reconnects"] += 1
        self._ever_connected = True
        self._link = link
        self._set_state(SessionState.CONNECTED, None)

    def _lost(self, err: IngestError) -> None:
        self._drop_link()
        self._schedule_reconnect()
        self._report(err)

    def _schedule_reconnect(self) -> None:
        delay = self._backoff.next_delay()
        self._reconnect_at = asyncio.get_running_loop().time() + delay
        _log.info("modbus %s: reconnecting in %.2f s", self.endpoint, delay)

    def _drop_link(self) -> None:
        client, self._link = self._link, None
        if client is not None:
            client.close()

    def _report(self, err: IngestError) -> None:
        self._stats["last_error"] = f"{type(err).__name__}: {err}"
        self._set_state(SessionState.DISCONNECTED, self._stats["last_error"])

    # --- one poll -----------------------------------------------------------------------------

    async def _poll(self, client: ModbusLink) -> bool:
        """Issue every planned read once and deliver the rows; True when all came back Good."""
        rows = PollRows()
        all_good = True
        silent_units: set[int] = set()
        try:
            for i, req in enumerate(self._requests):
                if self._stop.is_set():
                    break
                n = len(req.points)
                q = _GOOD
                if req.unit in silent_units or not client.connected:
                    # This unit just timed out (or the link is gone): its other reads in this poll
                    # would each cost another timeout for the same answer, so record them now.
                    vals, t_us, q = np.full(n, np.nan), now_us(), _NO_COMM
                else:
                    try:
                        vals, t_us = await self._read(client, i, req)
                    except ExceptionResponse as exc:
                        self._stats["exceptions"] += 1
                        q = _NO_COMM if exc.code in _GATEWAY_CODES else _BAD
                        vals, t_us = np.full(n, np.nan), now_us()
                        self._note(exc)
                    except DeviceUnreachable as exc:
                        self._stats["timeouts"] += 1
                        silent_units.add(req.unit)
                        vals, t_us, q = np.full(n, np.nan), now_us(), _NO_COMM
                        self._note(exc)
                    except DeviceProtocolError as exc:
                        vals, t_us, q = np.full(n, np.nan), now_us(), _BAD
                        self._note(exc)
                req_ids = req.tag_ids
                strings = self._string_mask[i]
                q_col = None
                if q == _GOOD and strings is not None:
                    if self._on_strings is None:
                        q_col = np.full(n, q, dtype=np.int32)
                        q_col[strings] = _BAD
                    else:
                        keep = ~strings
                        req_ids, vals = req_ids[keep], vals[keep]
                rows.add(req_ids, vals, t_us, q, q_col)
                all_good = all_good and q == _GOOD
        finally:
            # Also on cancellation: what was read is delivered; unless stop() cut the poll short,
            # the requests not read get Bad rows (every tick is recorded).
            if not self._stop.is_set():
                rows.fill(self._requests, now_us(), _NO_COMM)
            self._last_stamps = rows.stamps()
            cols = rows.columns()
            if cols is not None:
                self._emit(*cols)
        return all_good

    async def _read(self, client: ModbusLink, i: int, req: ReadRequest) -> tuple[npt.NDArray[np.float64], int]:
        self._stats["requests"] += 1
        raw, t_us = await client.read(req)
        # Any answer means the device is there: the next loss starts its backoff from scratch.
        self._backoff.reset()
        try:
            decoded = decode(req, raw)
        except ValueError as exc:
            raise DeviceProtocolError(f"{req.register} {req.address}+{req.count}: {exc}") from None
        if decoded.strings and self._on_strings is not None:
            try:
                self._on_strings(decoded.strings, t_us)
            except Exception:
                self._stats["callback_errors"] += 1
                _log.exception("modbus %s: on_strings raised", self.endpoint)
        return decoded.values, t_us

    def _note(self, err: IngestError) -> None:
        self._stats["last_error"] = f"{type(err).__name__}: {err}"

    def _emit(
        self,
        tag_ids: npt.NDArray[np.int32],
        times: npt.NDArray[np.int64],
        values: npt.NDArray[np.float64],
        quality: npt.NDArray[np.int32],
    ) -> None:
        n = int(tag_ids.shape[0])
        if not self._stats["values_delivered"] and self._run_at is not None:
            self._stats["first_value_ms"] = round((time.monotonic() - self._run_at) * 1000.0, 1)
        self._stats["values_delivered"] += n
        self._stats["bad_values"] += int(np.count_nonzero(quality))
        try:
            self._on_values(tag_ids, times, values, quality)
        except Exception:
            # The consumer failed on this chunk; count it loudly. Reconnecting would not help.
            self._stats["callback_errors"] += 1
            _log.exception("modbus %s: on_values raised", self.endpoint)

    def _set_state(self, state: SessionState, error: str | None) -> None:
        if self._state == state and error is None:
            return
        self._state = state
        self._stats["state"] = state.value
        if self._on_state is None:
            return
        try:
            self._on_state(state.value, error)
        except Exception:
            _log.exception("modbus %s: on_state raised", self.endpoint)
