"""One OPC UA device session: connect, subscribe, hand over values in columns, reconnect.

asyncua stays behind this module: callers see ``OpcUaTag``, numpy columns and ``ingest.errors``.

Zero loss rests on three choices (see ``ingest/simulators/opcua_sim.py`` for what asyncua's server
does with queued values):
- every monitored item asks for a FIFO queue (``queue_size``, DiscardOldest) and sampling
  interval 0, so a server keeps each change between two publish responses instead of only the last;
- the DataChangeFilter trigger is StatusValueTimestamp, so a repeated value with a new source
  timestamp is still a reading (the default trigger StatusValue would hide it); items on servers
  that refuse the filter fall back to the default trigger;
- values are taken from each publish response as a whole (one ``on_values`` call per
  DataChangeNotification), inside asyncua's publish loop, before the next PublishRequest (and so
  the acknowledgement) is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from asyncua import ua
from asyncua.client.client import Client
from asyncua.client.ua_client import UaClientState
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaError, UaStatusCodeError

from ingest.errors import ConfigError, DeviceProtocolError, DeviceUnreachable, IngestError
from ingest.models import SecurityMode, SecurityPolicy

__all__ = ["OnState", "OnValues", "OpcUaSecurity", "OpcUaSession", "OpcUaTag", "SessionState"]

_log = logging.getLogger(__name__)

OnValues = Callable[
    [npt.NDArray[np.int32], npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.int32]],
    None,
]
"""``(tag_ids, source_time_us, values, quality)``: one call per publish response.

source_time_us is microseconds since the Unix epoch (UTC); quality is the OPC UA StatusCode with
its 32 bits stored signed (0 = Good, Bad codes are negative). Called on the event loop inside the
publish loop: keep it short (append to a batch), never block.
"""

OnState = Callable[[str, str | None], None]
"""``(state, error)``; state is a ``SessionState`` value, error the reason for a disconnect."""


class SessionState(StrEnum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"


@dataclass(frozen=True)
class OpcUaTag:
    tag_id: int
    node_id: str  # e.g. "ns=2;s=W001.T001"


@dataclass(frozen=True)
class OpcUaSecurity:
    """How the session secures its channel. Only mode None is implemented so far.

    Sign / SignAndEncrypt will add the client certificate and key, the server trust list and an
    auto-accept flag here, and apply them in ``_apply_security`` before ``connect``.
    """

    mode: SecurityMode = SecurityMode.NONE
    policy: SecurityPolicy = SecurityPolicy.NONE


# Spec limits we apply whatever the server says.
_MAX_ITEMS_PER_CALL = 1000
_MIN_STALL_TIMEOUT_S = 5.0
_KEEPALIVE_EVERY_S = 1.0  # ask for a keep-alive at least this often when nothing changes
_LIFETIME_S = 60.0  # server drops our subscription after this long without a PublishRequest
_SESSION_TIMEOUT_MS = 60_000
_REQUEST_TIMEOUT_S = 10.0
_DISCONNECT_TIMEOUT_S = 3.0

_GOOD = 0
_BAD = 0x80000000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)

# Server answers that mean "the device or the path to it is down", as opposed to "you asked for
# something it will not do"; the first are DeviceUnreachable, the rest DeviceProtocolError.
_UNREACHABLE_CODES = frozenset(
    getattr(StatusCodes, name)
    for name in (
        "BadTimeout",
        "BadCommunicationError",
        "BadConnectionClosed",
        "BadConnectionRejected",
        "BadDisconnect",
        "BadNoCommunication",
        "BadServerHalted",
        "BadServerNotConnected",
        "BadSecureChannelClosed",
        "BadSecureChannelIdInvalid",
        "BadSessionClosed",
        "BadSessionIdInvalid",
        "BadShutdown",
        "BadTooManySessions",
        "BadResourceUnavailable",
        "BadSubscriptionIdInvalid",
        "BadNoSubscription",
        "BadTooManyPublishRequests",
    )
)
_FILTER_REFUSED_CODES = frozenset(
    (
        StatusCodes.BadFilterNotAllowed,
        StatusCodes.BadMonitoredItemFilterUnsupported,
        StatusCodes.BadMonitoredItemFilterInvalid,
    )
)

_T = TypeVar("_T")


class _Stopped(Exception):
    """stop() was called while the session was waiting on something."""


def _translate(exc: BaseException) -> IngestError:
    """asyncua and socket errors -> ours, so nothing above this module sees asyncua types."""
    if isinstance(exc, IngestError):
        return exc
    if isinstance(exc, UaStatusCodeError):
        code = getattr(exc, "code", None)
        cls = DeviceUnreachable if code in _UNREACHABLE_CODES else DeviceProtocolError
        return cls(f"server answered {exc}")
    if isinstance(exc, (OSError, TimeoutError, asyncio.TimeoutError, EOFError)):
        return DeviceUnreachable(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
    if isinstance(exc, UaError):
        return DeviceProtocolError(f"{type(exc).__name__}: {exc}")
    return DeviceProtocolError(f"unexpected {type(exc).__name__}: {exc}")


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
    ) -> None:
        if not endpoint.startswith("opc.tcp://"):
            raise ValueError(f"endpoint must start with opc.tcp://, got {endpoint!r}")
        if publishing_interval_ms <= 0:
            raise ValueError(f"publishing_interval_ms must be > 0, got {publishing_interval_ms}")
        if sampling_interval_ms < 0:
            raise ValueError(f"sampling_interval_ms must be >= 0, got {sampling_interval_ms}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        if not 0 < reconnect_initial_s <= reconnect_max_s:
            raise ValueError("need 0 < reconnect_initial_s <= reconnect_max_s")
        self._security = security or OpcUaSecurity()
        if self._security.mode != SecurityMode.NONE:
            raise ConfigError(f"OPC UA security mode {self._security.mode} is not supported yet")
        seen: set[int] = set()
        node_ids: list[ua.NodeId] = []
        for tag in tags:
            if tag.tag_id in seen:
                raise ValueError(f"tag_id {tag.tag_id} appears twice")
            if not -(2**31) <= tag.tag_id < 2**31:
                raise ValueError(f"tag_id {tag.tag_id} does not fit int32")
            seen.add(tag.tag_id)
            try:
                node_ids.append(ua.NodeId.from_string(tag.node_id))
            except Exception as exc:
                raise ValueError(f"tag {tag.tag_id}: bad node id {tag.node_id!r}: {exc}") from None
        self.endpoint = endpoint
        self._tags = tuple(tags)
        self._node_ids = node_ids
        # Client handle = position in self._tags, so mapping a notification to its tag is one
        # numpy take over the whole publish response.
        self._tag_ids = np.array([t.tag_id for t in self._tags], dtype=np.int32)
        self._on_values = on_values
        self._on_state = on_state
        self._publishing_interval_ms = publishing_interval_ms
        self._sampling_interval_ms = sampling_interval_ms
        self._queue_size = queue_size
        self._reconnect_initial_s = reconnect_initial_s
        self._reconnect_max_s = reconnect_max_s

        self._stop = asyncio.Event()
        self._dead: str | None = None  # why the current connection is considered lost
        self._wake = asyncio.Event()
        self._running = False
        self._connected = False  # the current attempt got as far as a working subscription
        self._ever_connected = False
        self._done = asyncio.Event()
        self._last_publish = 0.0
        self._stats: dict[str, Any] = {
            "state": SessionState.DISCONNECTED.value,
            "values_received": 0,
            "publishes_received": 0,
            "bad_values": 0,
            "reconnects": 0,
            "failed_items": 0,
            "callback_errors": 0,
            "last_error": None,
        }

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
        failures = 0  # consecutive attempts that did not get as far as "connected"
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
                failures = 0 if self._connected else failures + 1
                backoff = self._reconnect_initial_s * 2.0 ** max(failures - 1, 0)
                # Jitter, so that a fleet of sessions cut off together does not come back in step.
                delay = min(self._reconnect_max_s, backoff) * random.uniform(0.5, 1.0)
                _log.info("opcua %s: reconnecting in %.2f s", self.endpoint, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=delay)
        finally:
            self._set_state(SessionState.DISCONNECTED, None)
            self._running = False
            self._done.set()

    async def stop(self) -> None:
        """Ask ``run()`` to disconnect and return; waits for it, so no ``on_values`` follows."""
        self._stop.set()
        self._wake.set()
        if self._running:
            await self._done.wait()

    # --- one connection -----------------------------------------------------------------------

    async def _connect_and_watch(self) -> None:
        """Connect and subscribe, then watch until stop() (returns) or loss (raises)."""
        self._dead = None
        self._wake.clear()
        client = Client(self.endpoint, timeout=_REQUEST_TIMEOUT_S, watchdog_intervall=5.0)
        client.session_timeout = _SESSION_TIMEOUT_MS
        client.connection_lost_callback = self._on_connection_lost
        self._apply_security(client)
        try:
            await self._unless_stopped(client.connect())
        except BaseException:
            client.disconnect_socket()  # connect() cleans up after itself; this is belt and braces
            raise
        try:
            per_call = await self._unless_stopped(self._max_items_per_call(client))
            stall_timeout = await self._unless_stopped(self._subscribe(client, per_call))
            if self._ever_connected:
                self._stats["reconnects"] += 1
            self._connected = self._ever_connected = True
            self._set_state(SessionState.CONNECTED, None)
            await self._watch(client, stall_timeout)
        except Exception as exc:
            # Say so before the teardown, which can take a while on a wedged server.
            self._report_failure(exc)
            raise
        finally:
            await self._close(client)

    def _report_failure(self, exc: Exception) -> None:
        if self._stats["state"] == SessionState.DISCONNECTED.value:
            return  # already reported for this attempt
        err = _translate(exc)
        if not isinstance(exc, IngestError | OSError | UaError | TimeoutError):
            _log.warning("opcua %s: unexpected error", self.endpoint, exc_info=exc)
        self._stats["last_error"] = f"{type(err).__name__}: {err}"
        self._set_state(SessionState.DISCONNECTED, self._stats["last_error"])

    def _apply_security(self, client: Client) -> None:
        # Only None so far (checked in __init__). Sign / SignAndEncrypt go here:
        # client.set_security(policy_class, cert, key, server_certificate=..., mode=...).
        del client

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

    async def _max_items_per_call(self, client: Client) -> int:
        node = client.get_node(
            ua.NodeId(
                ua.Int32(
                    ObjectIds.Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall
                )
            )
        )
        try:
            value = await node.read_value()
        except (UaError, TimeoutError):
            return _MAX_ITEMS_PER_CALL  # the node is optional; 0 or absent means "no limit"
        if isinstance(value, int) and value > 0:
            return min(_MAX_ITEMS_PER_CALL, value)
        return _MAX_ITEMS_PER_CALL

    async def _subscribe(self, client: Client, per_call: int) -> float:
        """Create the subscription and its items; return the stall timeout in seconds."""
        interval = float(self._publishing_interval_ms)
        keepalive = max(1, math.ceil(_KEEPALIVE_EVERY_S * 1000.0 / interval))
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=interval,
            RequestedLifetimeCount=max(3 * keepalive, math.ceil(_LIFETIME_S * 1000.0 / interval)),
            RequestedMaxKeepAliveCount=keepalive,
            MaxNotificationsPerPublish=0,  # 0 = no limit; the queues bound what piles up
            PublishingEnabled=True,
            Priority=0,
        )
        # The raw service (not asyncua's Subscription class) so that our callback gets each
        # PublishResult whole, and so asyncua's own stale-subscription watchdog and reconnect
        # logic (which would re-create it behind our back) leave it alone.
        result = await client.uaclient.create_subscription(params, callback=self._on_publish)
        self._last_publish = time.monotonic()
        revised_interval_s = max(result.RevisedPublishingInterval, 1.0) / 1000.0
        revised_keepalive = max(int(result.RevisedMaxKeepAliveCount), 1)
        stall_timeout = max(3.0 * revised_interval_s * revised_keepalive, _MIN_STALL_TIMEOUT_S)
        stall_timeout = float(stall_timeout)

        pending = list(range(len(self._tags)))
        for use_filter in (True, False):
            refused: list[int] = []
            for start in range(0, len(pending), per_call):
                chunk = pending[start : start + per_call]
                refused += await self._create_items(
                    client, result.SubscriptionId, chunk, use_filter
                )
            if not refused:
                break
            pending = refused
        return stall_timeout

    async def _create_items(
        self, client: Client, subscription_id: int, handles: list[int], use_filter: bool
    ) -> list[int]:
        """Create monitored items; return handles whose filter the server refused."""
        flt = None
        if use_filter:
            flt = ua.DataChangeFilter(
                Trigger=ua.DataChangeTrigger.StatusValueTimestamp,
                DeadbandType=ua.DeadbandType.None_,
            )
        requests = []
        for h in handles:
            mparams = ua.MonitoringParameters(
                ClientHandle=h,
                SamplingInterval=float(self._sampling_interval_ms),
                QueueSize=self._queue_size,
                DiscardOldest=True,
                Filter=flt,
            )
            requests.append(
                ua.MonitoredItemCreateRequest(
                    ItemToMonitor=ua.ReadValueId(
                        NodeId=self._node_ids[h], AttributeId=AttributeIds.Value
                    ),
                    MonitoringMode=ua.MonitoringMode.Reporting,
                    RequestedParameters=mparams,
                )
            )
        params = ua.CreateMonitoredItemsParameters(
            SubscriptionId=subscription_id,
            TimestampsToReturn=ua.TimestampsToReturn.Both,
            ItemsToCreate=requests,
        )
        results = await client.uaclient.create_monitored_items(params)
        refused: list[int] = []
        failed: list[tuple[int, int]] = []
        for h, res in zip(handles, results, strict=True):
            code = res.StatusCode.value
            if res.StatusCode.is_good():
                continue
            if use_filter and code in _FILTER_REFUSED_CODES:
                refused.append(h)
            else:
                failed.append((h, code))
        if failed:
            self._report_failed_items(failed)
        return refused

    def _report_failed_items(self, failed: list[tuple[int, int]]) -> None:
        # A tag the server will not monitor (unknown node, access denied) becomes one visible
        # Bad reading with the server's status, instead of silently never reporting.
        self._stats["failed_items"] += len(failed)
        for h, code in failed[:10]:
            _log.warning(
                "opcua %s: cannot monitor tag %s (%s): %s",
                self.endpoint,
                self._tags[h].tag_id,
                self._tags[h].node_id,
                ua.StatusCode(ua.UInt32(code)),
            )
        now_us = (datetime.now(UTC) - _EPOCH) // _ONE_US
        n = len(failed)
        self._emit(
            self._tag_ids[np.fromiter((h for h, _ in failed), dtype=np.int64, count=n)],
            np.full(n, now_us, dtype=np.int64),
            np.full(n, np.nan, dtype=np.float64),
            np.fromiter((c for _, c in failed), dtype=np.uint32, count=n).view(np.int32),
        )

    async def _watch(self, client: Client, stall_timeout: float) -> None:
        """Return on stop(); raise DeviceUnreachable when the session is lost or stalled."""
        tick = min(1.0, stall_timeout / 4.0)
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=tick)
            self._wake.clear()
            if self._stop.is_set():
                return
            if self._dead is not None:
                raise DeviceUnreachable(self._dead)
            if client.uaclient.state is not UaClientState.CONNECTED:
                self._dead = f"client state {client.uaclient.state.value}"
                raise DeviceUnreachable(self._dead)
            silent = time.monotonic() - self._last_publish
            if silent > stall_timeout:
                self._dead = f"no publish response or keep-alive for {silent:.1f} s"
                raise DeviceUnreachable(self._dead)

    async def _close(self, client: Client) -> None:
        # Closing the session also deletes its subscription on the server. On a dead transport
        # asyncua skips the requests; on a wedged one the timeout cuts it short.
        try:
            await asyncio.wait_for(client.disconnect(), timeout=_DISCONNECT_TIMEOUT_S)
        except Exception as exc:  # teardown is best effort
            _log.debug("opcua %s: disconnect failed: %r", self.endpoint, exc)
            with contextlib.suppress(Exception):
                client.disconnect_socket()

    # --- asyncua callbacks (run on the event loop, inside asyncua's loops) ----------------------

    async def _on_connection_lost(self, exc: Exception) -> None:
        self._mark_dead(f"connection lost: {exc!r}")

    def _mark_dead(self, reason: str) -> None:
        if self._dead is None:
            self._dead = reason
        self._wake.set()

    def _on_publish(self, result: ua.PublishResult) -> None:
        self._last_publish = time.monotonic()
        self._stats["publishes_received"] += 1
        for notif in result.NotificationMessage.NotificationData or ():
            if isinstance(notif, ua.DataChangeNotification):
                if notif.MonitoredItems:
                    self._deliver(notif.MonitoredItems)
            elif isinstance(notif, ua.StatusChangeNotification):
                status = notif.Status
                if status is not None and not status.is_good():
                    # BadTimeout: the server dropped the subscription; BadShutdown: asyncua saw
                    # the transport go. Either way the subscription is gone: start over.
                    self._mark_dead(f"subscription status {status}")

    def _deliver(self, items: Sequence[ua.MonitoredItemNotification]) -> None:
        n = len(items)
        handles = np.empty(n, dtype=np.int64)
        times = np.empty(n, dtype=np.int64)
        values = np.empty(n, dtype=np.float64)
        quality = np.empty(n, dtype=np.uint32)
        now_us: int | None = None
        bad = 0
        for i, item in enumerate(items):
            handles[i] = item.ClientHandle
            dv = item.Value
            if dv is None:
                code, raw, ts = _BAD, None, None
            else:
                code = dv.StatusCode.value if dv.StatusCode is not None else _GOOD
                raw = dv.Value.Value if dv.Value is not None else None
                ts = dv.SourceTimestamp or dv.ServerTimestamp
            if type(raw) is float:
                values[i] = raw
            elif isinstance(raw, int | float):  # bool and int included; stored as float8
                values[i] = float(raw)
            else:
                # TODO: strings (and other non-numeric values) go to the text-valued hypertable;
                # until that path exists they are a NaN reading marked Bad, not dropped. A value
                # the server already marked Bad (often null) keeps the server's code.
                values[i] = math.nan
                if not code & _BAD:
                    code = _BAD
            if ts is None:
                if now_us is None:
                    now_us = (datetime.now(UTC) - _EPOCH) // _ONE_US
                times[i] = now_us
            else:
                if ts.tzinfo is None:
                    ts = ts.replace(tzinfo=UTC)
                times[i] = (ts - _EPOCH) // _ONE_US
            quality[i] = code
            if code & 0x80000000:
                bad += 1
        known = (handles >= 0) & (handles < len(self._tags))
        if not known.all():
            _log.warning(
                "opcua %s: %d values for unknown handles", self.endpoint, int((~known).sum())
            )
            handles, times, values, quality = (
                handles[known],
                times[known],
                values[known],
                quality[known],
            )
        self._stats["bad_values"] += bad
        self._emit(self._tag_ids[handles], times, values, quality.view(np.int32))

    def _emit(
        self,
        tag_ids: npt.NDArray[np.int32],
        times: npt.NDArray[np.int64],
        values: npt.NDArray[np.float64],
        quality: npt.NDArray[np.int32],
    ) -> None:
        self._stats["values_received"] += int(tag_ids.shape[0])
        try:
            self._on_values(tag_ids, times, values, quality)
        except Exception:
            # The consumer failed on this chunk; count it loudly. Reconnecting would not help.
            self._stats["callback_errors"] += 1
            _log.exception("opcua %s: on_values raised", self.endpoint)

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
