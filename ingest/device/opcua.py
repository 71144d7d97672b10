"""One OPC UA device session: connect, subscribe, hand over values in columns, recover.

asyncua stays behind this package: callers see ``OpcUaTag``, ``OpcUaSecurity``, numpy columns
and ``ingest.core.errors``. This module holds the public surface and the reconnect loop; the rest
follows a connection's life: ``opcua_security`` (certificates, trust list, securing the client)
-> ``opcua_connection`` (session new or re-activated, subscription kept, transferred or
re-created) -> ``opcua_stream`` (publish loop, Republish, backfill, gaps) -> ``opcua_values``
(DataValues to numpy columns) -> the callbacks; ``opcua_service`` wraps the raw services.

Zero loss rests on these choices:
- every monitored item asks for a FIFO queue (``queue_size``, DiscardOldest) and sampling
  interval 0, and the DataChangeFilter trigger StatusValueTimestamp, so each change between two
  publish responses is kept, and a repeated value with a new source timestamp is a reading;
- the session runs its own publish loop: each response is handed over whole before the next
  PublishRequest, which carries its acknowledgement; sequence numbers are checked, and a
  missing NotificationMessage is fetched with Republish from the server's retransmission queue;
- a short interruption (socket dropped, server still holds the session) re-activates the same
  session on a new channel (Part 4 6.7), so the subscription and its queued values carry on; if
  the session is gone but the server did not restart, TransferSubscriptions is tried;
- when the subscription is gone (server restart, long outage) it is re-created, and for each tag
  the interval between its last value and its first new one is read back with HistoryRead if
  the node keeps history, else reported through ``on_gap`` (never silently dropped);
- a session whose connection moves to another actor is passed on (``pass_on``): it leaves its
  subscription on the server once what it delivered is committed, and the next owner's session
  transfers it as after a lost node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt
from asyncua import ua
from asyncua.ua.uaerrors import UaError

from ingest.core.backoff import Backoff
from ingest.core.errors import IngestError, InvalidDeviceSetting
from ingest.device import opcua_service as svc
from ingest.device.opcua_connection import SessionKeeper
from ingest.device.opcua_security import DEFAULT_PKI_DIR, OpcUaSecurity, PkiStore
from ingest.device.opcua_stream import NotificationStream
from ingest.device.opcua_values import GAP_CAUSES
from ingest.device.session_events import OnState, OnValues, SessionState
from ingest.device.takeover import TakeoverHooks

__all__ = [
    "OnGap",
    "OnState",
    "OnText",
    "OnValues",
    "OpcUaSecurity",
    "OpcUaSession",
    "OpcUaTag",
    "SessionState",
    "check_endpoint",
    "parse_node_id",
]

_log = logging.getLogger(__name__)

I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]

OnText = Callable[[I32, I64, list[str], I32], None]
"""``(tag_ids, source_time_us, texts, quality)``: string values, when the caller takes them."""

OnGap = Callable[[I32, I64, I64], None]
"""``(tag_ids, from_time_us, to_time_us)``: readings of each tag between its last value seen
(``from``) and its first value after recovery (``to``), both exclusive, are lost."""


@dataclass(frozen=True)
class OpcUaTag:
    """One tag to monitor. Unset settings take the session's defaults."""

    tag_id: int
    node_id: str  # e.g. "ns=2;s=W001.T001"
    sampling_interval_ms: float | None = None
    queue_size: int | None = None
    discard_oldest: bool = True
    deadband_type: Literal["absolute", "percent"] | None = None
    deadband_value: float = 0.0

    def __post_init__(self) -> None:
        # InvalidDeviceSetting names the field: registration runs this same check (session_inputs).
        where = f"tag {self.tag_id}"
        if self.sampling_interval_ms is not None and not 0 <= self.sampling_interval_ms <= 86_400_000:
            raise InvalidDeviceSetting("sampling_interval_ms", "must be 0..86400000 (0 = fastest)", where)
        if self.queue_size is not None and not 1 <= self.queue_size <= 100_000:
            raise InvalidDeviceSetting("queue_size", "must be 1..100000", where)
        if self.deadband_type not in (None, "absolute", "percent"):
            raise InvalidDeviceSetting("deadband_type", "must be absolute, percent or None", where)
        if not math.isfinite(self.deadband_value) or self.deadband_value < 0:
            raise InvalidDeviceSetting("deadband_value", "must be a finite number >= 0", where)
        if self.deadband_value and self.deadband_type is None:
            raise InvalidDeviceSetting("deadband_value", "needs a deadband_type (absolute or percent)", where)
        if self.deadband_type == "percent" and self.deadband_value > 100:
            raise InvalidDeviceSetting("deadband_value", "a percent deadband is 0..100", where)


def check_endpoint(endpoint: str) -> None:
    if not endpoint.startswith("opc.tcp://"):
        raise InvalidDeviceSetting("endpoint", f"must start with opc.tcp://, got {endpoint!r}")


def parse_node_id(text: str, *, where: str = "") -> ua.NodeId:
    """A node id as the session subscribes to it; registration refuses what this refuses.

    Beyond asyncua's parser: the namespace index and a numeric identifier must fit the UInt16 and
    UInt32 they are encoded as, or the server's CreateMonitoredItems request could not be built.
    """
    try:
        node_id = ua.NodeId.from_string(text)
    except Exception as exc:
        cause = exc.args[1] if len(exc.args) > 1 else exc
        raise InvalidDeviceSetting("node_id", f"bad node id {text!r}: {cause}", where) from exc
    if not 0 <= node_id.NamespaceIndex <= 0xFFFF:
        raise InvalidDeviceSetting("node_id", f"namespace index of {text!r} is not 0..65535", where)
    ident = node_id.Identifier
    if isinstance(ident, int) and not 0 <= ident <= 0xFFFFFFFF:
        raise InvalidDeviceSetting("node_id", f"numeric id of {text!r} is not 0..4294967295", where)
    return node_id


_T = TypeVar("_T")


class _Stopped(Exception):
    """stop() was called while the session was waiting on something."""


class OpcUaSession:
    """A long-lived OPC UA subscription to one server, delivering values in numpy columns."""

    def __init__(
        self,
        endpoint: str,
        tags: Sequence[OpcUaTag],
        on_values: OnValues,
        *,
        publishing_interval_ms: int = 100,
        sampling_interval_ms: int = 0,
        queue_size: int = 1000,
        reconnect_initial_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        on_state: OnState | None = None,
        security: OpcUaSecurity | None = None,
        pki_dir: Path = DEFAULT_PKI_DIR,
        on_gap: OnGap | None = None,
        on_text: OnText | None = None,
        history_backfill: bool = True,
        takeover: TakeoverHooks | None = None,
    ) -> None:
        """``takeover``: from the host, to carry on a subscription another actor left (and to
        acknowledge messages only once committed); None acknowledges on hand-over."""
        check_endpoint(endpoint)
        if publishing_interval_ms <= 0:
            raise ValueError(f"publishing_interval_ms must be > 0, got {publishing_interval_ms}")
        if sampling_interval_ms < 0:
            raise ValueError(f"sampling_interval_ms must be >= 0, got {sampling_interval_ms}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        if not 0 < reconnect_initial_s <= reconnect_max_s:
            raise ValueError("need 0 < reconnect_initial_s <= reconnect_max_s")
        seen: set[int] = set()
        items: list[svc.ItemSpec] = []
        for handle, tag in enumerate(tags):
            if tag.tag_id in seen:
                raise ValueError(f"tag_id {tag.tag_id} appears twice")
            if not -(2**31) <= tag.tag_id < 2**31:
                raise ValueError(f"tag_id {tag.tag_id} does not fit int32")
            seen.add(tag.tag_id)
            node_id = parse_node_id(tag.node_id, where=f"tag {tag.tag_id}")
            # Client handle = position in the tag list, so mapping a notification to its tag is
            # one numpy take over the whole publish response.
            items.append(
                svc.ItemSpec(
                    handle=handle,
                    node_id=node_id,
                    sampling_interval_ms=float(
                        sampling_interval_ms if tag.sampling_interval_ms is None else tag.sampling_interval_ms
                    ),
                    queue_size=queue_size if tag.queue_size is None else tag.queue_size,
                    discard_oldest=tag.discard_oldest,
                    deadband_type=tag.deadband_type,
                    deadband_value=tag.deadband_value,
                )
            )
        self.endpoint = endpoint
        self._tag_ids = np.array([t.tag_id for t in tags], dtype=np.int32)
        self._on_state = on_state
        self._reconnect_initial_s = reconnect_initial_s
        self._reconnect_max_s = reconnect_max_s

        self._stop = asyncio.Event()
        self._done = asyncio.Event()
        # Set by pass_on(): asked once publishing has stopped whether the subscription may be
        # left on the server for the connection's next owner.
        self._settle: Callable[[], Awaitable[bool]] | None = None
        self._running = False
        self._connected = False  # the current attempt got as far as a working subscription
        self._ever_connected = False
        self._stats: dict[str, Any] = {
            "state": SessionState.DISCONNECTED.value,
            "values_received": 0,
            "text_values": 0,
            "publishes_received": 0,
            "bad_values": 0,
            "reconnects": 0,
            "resumed": 0,  # reconnects that carried on the same subscription
            "transferred": 0,
            "passed_on": 0,  # subscriptions left on the server for the next owner (pass_on)
            "floors_ms": 0.0,  # how long reading where each tag's stored history ends took
            "connect_ms": 0.0,  # the last connect: channel, session, subscription
            "takeover_attempts": 0,  # sessions that started with another owner's subscription
            "transfers_silent": 0,  # transfers the server answered but then published nothing for
            "resubscribed": 0,  # reconnects that had to create a new subscription
            "republished": 0,  # NotificationMessages fetched again with Republish
            "lost_messages": 0,  # NotificationMessages the server could no longer send
            "gaps": 0,  # tag intervals reported through on_gap
            **{f"gaps_{cause}": 0 for cause in GAP_CAUSES},  # ... by why the gap opened
            "backfilled": 0,  # values read back with HistoryRead
            "duplicates_dropped": 0,
            "item_create_calls": 0,
            "failed_items": 0,
            "callback_errors": 0,
            "last_error": None,
        }
        self._stream = NotificationStream(
            endpoint,
            items,
            self._tag_ids,
            on_values,
            on_text,
            on_gap,
            self._stats,
            history_backfill=history_backfill,
        )
        if takeover is not None:
            self._stream.ack_gate = takeover.ledger
        self._keeper = SessionKeeper(
            endpoint,
            security or OpcUaSecurity(),
            PkiStore(pki_dir),
            items,
            float(publishing_interval_ms),
            self._stream,
            self._stats,
            self._stop,
            takeover,
        )

    # --- public surface ---------------------------------------------------------------------

    @property
    def stats(self) -> dict[str, Any]:
        return dict(self._stats)

    async def run(self) -> None:
        """Keep the subscription alive until ``stop()``; never raises for device failures.

        Failures are reported through ``on_state("disconnected", error)`` and ``stats``. A
        session runs once: after ``stop()``, ``run()`` returns at once.
        """
        if self._running:
            raise RuntimeError("run() is already running for this session")
        self._running = True
        self._done.clear()
        # Consecutive attempts that did not get as far as "connected"; jittered, so a fleet of
        # sessions cut off together does not come back in step.
        backoff = Backoff(self._reconnect_initial_s, self._reconnect_max_s)
        try:
            while not self._stop.is_set():
                self._set_state(SessionState.CONNECTING, None)
                self._connected = False
                try:
                    await self._connect_and_watch()
                except _Stopped:
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # every failure reconnects: that is the contract
                    self._report_failure(exc)
                if self._stop.is_set():
                    break
                if self._connected:  # it got as far as a session: start the backoff over
                    backoff.reset()
                delay = backoff.next_delay()
                _log.info("opcua %s: reconnecting in %.2f s", self.endpoint, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=delay)
        finally:
            await self._leave()
            self._set_state(SessionState.DISCONNECTED, None)
            self._running = False
            self._done.set()

    async def stop(self) -> None:
        """Ask ``run()`` to disconnect and return; waits for it, so no callback follows.
        The session ends on the server, and its subscription with it (CloseSession)."""
        self._stop.set()
        self._keeper.wake()
        if self._running:
            await self._done.wait()

    async def pass_on(self, settle: Callable[[], Awaitable[bool]]) -> bool:
        """Stop like ``stop()``, but leave the subscription to the connection's next owner.

        Publishing stops first (no callback follows); then ``settle()`` is awaited: True when
        everything this session handed over is committed and recorded
        (``ingest.device.takeover``). Only then is the connection dropped without CloseSession:
        the server keeps session and subscription, with every message not acknowledged, for the
        session timeout, and the next owner transfers the subscription and Republishes them.
        Otherwise (False, an error, not connected) the session is ended as ``stop()`` ends it,
        so no owner carries on from history that is not stored yet. True if it was left."""
        self._settle = settle
        await self.stop()
        return bool(self._stats["passed_on"])

    async def _leave(self) -> None:
        settle, self._settle = self._settle, None
        if settle is not None and self._keeper.can_pass_on():
            try:
                passed = await settle()
            except Exception as exc:
                _log.warning("opcua %s: not passed on: %s", self.endpoint, exc)
                passed = False
            if passed:
                self._keeper.drop_connection()
                self._stats["passed_on"] += 1
                return
        await self._keeper.close()

    # --- one connection -----------------------------------------------------------------------

    async def _connect_and_watch(self) -> None:
        """Connect, get a subscription, then watch until stop() (returns) or loss (raises)."""
        try:
            t0 = time.monotonic()
            sub = await self._unless_stopped(self._keeper.connect())
            self._stats["connect_ms"] = round((time.monotonic() - t0) * 1000.0, 1)
            if self._ever_connected:
                self._stats["reconnects"] += 1
            self._connected = self._ever_connected = True
            self._set_state(SessionState.CONNECTED, None)
            await self._keeper.watch(sub)
        except Exception as exc:
            # Say so before the teardown, which can take a while on a wedged server.
            self._report_failure(exc)
            raise
        finally:
            if not self._stop.is_set():
                self._keeper.drop_connection()

    def _report_failure(self, exc: Exception) -> None:
        if self._stats["state"] == SessionState.DISCONNECTED.value:
            return  # already reported for this attempt
        err = svc.translate_error(exc)
        if not isinstance(exc, IngestError | OSError | UaError | TimeoutError):
            _log.warning("opcua %s: unexpected error", self.endpoint, exc_info=exc)
        self._stats["last_error"] = f"{type(err).__name__}: {err}"
        self._set_state(SessionState.DISCONNECTED, self._stats["last_error"])

    async def _unless_stopped(self, aw: Awaitable[_T]) -> _T:
        """Await ``aw`` but give up (raising _Stopped) as soon as stop() is called."""
        task = asyncio.ensure_future(aw)
        stopper = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            stopper.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            raise _Stopped()
        return task.result()

    def _set_state(self, state: SessionState, error: str | None) -> None:
        if self._stats["state"] == state.value and error is None:
            return
        self._stats["state"] = state.value
        if self._on_state is None:
            return
        try:
            self._on_state(state.value, error)
        except Exception:
            _log.exception("opcua %s: on_state raised", self.endpoint)
