"""One OPC UA device session: connect, subscribe, hand over values in columns, recover.

asyncua stays behind this package: callers see ``OpcUaTag``, ``OpcUaSecurity``, numpy columns
and ``ingest.errors``. The module reads top to bottom in the order a connection lives:
connect (``opcua_security``) -> session (new or re-activated) -> subscription (kept, transferred
or re-created, ``opcua_service``) -> publish loop -> values (``opcua_values``) -> callbacks.

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
  the node keeps history, else reported through ``on_gap`` (never silently dropped).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt
from asyncua import ua
from asyncua.client.client import Client
from asyncua.client.ua_client import UaClientState
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaError, UaStatusCodeError

from ingest.errors import DeviceProtocolError, DeviceUnreachable, IngestError
from ingest.protocols import opcua_service as svc
from ingest.protocols.opcua_security import (
    DEFAULT_PKI_DIR,
    OpcUaSecurity,
    PkiStore,
    configure_client,
)
from ingest.protocols.opcua_stream import NotificationStream
from ingest.protocols.opcua_values import now_us

__all__ = [
    "OnGap",
    "OnState",
    "OnText",
    "OnValues",
    "OpcUaSecurity",
    "OpcUaSession",
    "OpcUaTag",
    "SessionState",
]

_log = logging.getLogger(__name__)

I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]

OnValues = Callable[[I32, I64, npt.NDArray[np.float64], I32], None]
"""``(tag_ids, source_time_us, values, quality)``: numbers (bool and int as float).

source_time_us is microseconds since the Unix epoch (UTC); quality is the OPC UA StatusCode with
its 32 bits stored signed (0 = Good, Bad codes are negative). Called on the event loop inside the
publish loop: keep it short (append to a batch), never block.
"""

OnText = Callable[[I32, I64, list[str], I32], None]
"""``(tag_ids, source_time_us, texts, quality)``: string values, when the caller takes them."""

OnGap = Callable[[I32, I64, I64], None]
"""``(tag_ids, from_time_us, to_time_us)``: readings of each tag between its last value seen
(``from``) and its first value after recovery (``to``), both exclusive, are lost."""

OnState = Callable[[str, str | None], None]
"""``(state, error)``; state is a ``SessionState`` value, error the reason for a disconnect."""


class SessionState(StrEnum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"


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
        if self.sampling_interval_ms is not None and self.sampling_interval_ms < 0:
            raise ValueError(f"tag {self.tag_id}: sampling_interval_ms must be >= 0")
        if self.queue_size is not None and self.queue_size < 1:
            raise ValueError(f"tag {self.tag_id}: queue_size must be >= 1")
        if self.deadband_type not in (None, "absolute", "percent"):
            raise ValueError(f"tag {self.tag_id}: deadband_type must be absolute, percent or None")
        if self.deadband_value < 0 or (self.deadband_value and self.deadband_type is None):
            raise ValueError(f"tag {self.tag_id}: deadband_value needs a deadband_type, >= 0")


_KEEPALIVE_EVERY_S = 1.0  # ask for a keep-alive at least this often when nothing changes
_LIFETIME_S = 60.0  # server drops our subscription after this long without a PublishRequest
_SESSION_TIMEOUT_MS = 60_000  # ... and our session: the window in which a resume is possible
_MIN_STALL_TIMEOUT_S = 5.0
_REQUEST_TIMEOUT_S = 10.0
_DISCONNECT_TIMEOUT_S = 3.0
_MAX_ITEMS_PER_CALL = svc.MAX_ITEMS_PER_CALL

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
_IDENTITY_CODES = frozenset(
    (
        StatusCodes.BadUserAccessDenied,
        StatusCodes.BadIdentityTokenInvalid,
        StatusCodes.BadIdentityTokenRejected,
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
    if isinstance(exc, OSError | TimeoutError | asyncio.TimeoutError | EOFError):
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
        pki_dir: Path = DEFAULT_PKI_DIR,
        on_gap: OnGap | None = None,
        on_text: OnText | None = None,
        history_backfill: bool = True,
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
        seen: set[int] = set()
        self._items: list[svc.ItemSpec] = []
        for handle, tag in enumerate(tags):
            if tag.tag_id in seen:
                raise ValueError(f"tag_id {tag.tag_id} appears twice")
            if not -(2**31) <= tag.tag_id < 2**31:
                raise ValueError(f"tag_id {tag.tag_id} does not fit int32")
            seen.add(tag.tag_id)
            try:
                node_id = ua.NodeId.from_string(tag.node_id)
            except Exception as exc:
                raise ValueError(f"tag {tag.tag_id}: bad node id {tag.node_id!r}: {exc}") from None
            # Client handle = position in the tag list, so mapping a notification to its tag is
            # one numpy take over the whole publish response.
            self._items.append(
                svc.ItemSpec(
                    handle=handle,
                    node_id=node_id,
                    sampling_interval_ms=float(
                        sampling_interval_ms
                        if tag.sampling_interval_ms is None
                        else tag.sampling_interval_ms
                    ),
                    queue_size=queue_size if tag.queue_size is None else tag.queue_size,
                    discard_oldest=tag.discard_oldest,
                    deadband_type=tag.deadband_type,
                    deadband_value=tag.deadband_value,
                )
            )
        self.endpoint = endpoint
        self._tags = tuple(tags)
        self._tag_ids = np.array([t.tag_id for t in self._tags], dtype=np.int32)
        self._on_values = on_values
        self._on_text = on_text
        self._on_gap = on_gap
        self._on_state = on_state
        self._security = security or OpcUaSecurity()
        self._pki = PkiStore(pki_dir)
        self._history_backfill = history_backfill
        self._publishing_interval_ms = publishing_interval_ms
        self._reconnect_initial_s = reconnect_initial_s
        self._reconnect_max_s = reconnect_max_s

        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._done = asyncio.Event()
        self._running = False
        self._dead: str | None = None  # why the current connection is considered lost
        self._connected = False  # the current attempt got as far as a working subscription
        self._ever_connected = False
        # What survives a connection: the asyncua client (it holds the session token and
        # nonce a re-activation needs), the subscription, and per-tag gap bookkeeping.
        self._client: Client | None = None
        self._sub: svc.SubscriptionState | None = None
        self._server_start: Any = None
        self._kept = False
        self._subscribed_before = False  # this connection carried on an existing subscription
        self._resume_ok = True
        self._stats: dict[str, Any] = {
            "state": SessionState.DISCONNECTED.value,
            "values_received": 0,
            "text_values": 0,
            "publishes_received": 0,
            "bad_values": 0,
            "reconnects": 0,
            "resumed": 0,  # reconnects that carried on the same subscription
            "transferred": 0,
            "resubscribed": 0,  # reconnects that had to create a new subscription
            "republished": 0,  # NotificationMessages fetched again with Republish
            "lost_messages": 0,  # NotificationMessages the server could no longer send
            "gaps": 0,  # tag intervals reported through on_gap
            "backfilled": 0,  # values read back with HistoryRead
            "duplicates_dropped": 0,
            "item_create_calls": 0,
            "failed_items": 0,
            "callback_errors": 0,
            "last_error": None,
        }
        self._stream = NotificationStream(
            endpoint,
            self._items,
            self._tag_ids,
            on_values,
            on_text,
            on_gap,
            self._stats,
            history_backfill=history_backfill,
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
            if self._client is not None:
                await self._close(self._client, end_session=True)
            self._set_state(SessionState.DISCONNECTED, None)
            self._running = False
            self._done.set()

    async def stop(self) -> None:
        """Ask ``run()`` to disconnect and return; waits for it, so no callback follows."""
        self._stop.set()
        self._wake.set()
        if self._running:
            await self._done.wait()

    # --- one connection -----------------------------------------------------------------------

    async def _connect_and_watch(self) -> None:
        """Connect, get a subscription, then watch until stop() (returns) or loss (raises)."""
        self._dead = None
        self._wake.clear()
        self._stream.progress = self._kept = False
        if self._client is None:
            self._client = Client(self.endpoint, timeout=_REQUEST_TIMEOUT_S)
            self._client.session_timeout = _SESSION_TIMEOUT_MS
        client = self._client
        tasks: list[asyncio.Task[None]] = []
        try:
            resumed = await self._unless_stopped(self._open_session(client))
            sub = await self._unless_stopped(self._subscription(client, resumed))
            if self._ever_connected:
                self._stats["reconnects"] += 1
            self._connected = self._ever_connected = True
            self._set_state(SessionState.CONNECTED, None)
            self._stream.last_response = time.monotonic()
            tasks = [
                asyncio.create_task(self._stream.run(client, sub), name="opcua-publish"),
                asyncio.create_task(self._renew_channel(client), name="opcua-renew"),
            ]
            for task in tasks:
                task.add_done_callback(self._on_task_done)
            await self._watch(client, max(sub.stall_timeout_s, _MIN_STALL_TIMEOUT_S))
        except Exception as exc:
            # Say so before the teardown, which can take a while on a wedged server.
            self._report_failure(exc)
            raise
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task
            # A resume that never got a publish response through is not tried twice in a row.
            self._resume_ok = self._stream.progress or not self._kept
            if not self._stop.is_set():
                # Only the transport: the server keeps our session (and subscription) for
                # _SESSION_TIMEOUT_MS, so the next attempt can re-activate it.
                client.disconnect_socket()

    async def _open_session(self, client: Client) -> bool:
        """Secure channel plus an activated session; True if it is the previous one, resumed."""
        await configure_client(client, self._security, self._pki, self.endpoint)
        await self._open_channel(client)
        session = client.uaclient.session
        resumed = False
        if session.has_session:
            session.rebind_authentication_token()
            try:
                await self._activate(client)
                resumed = True
            except UaStatusCodeError as exc:
                _log.info("opcua %s: previous session not resumed (%s)", self.endpoint, exc)
        if not resumed:
            session.reset_authentication_token()
            await client.create_session()
            await self._activate(client)
        start = await svc.server_start_time(client)
        restarted = (
            self._server_start is not None and start is not None and start != self._server_start
        )
        if resumed and restarted:
            # asyncua servers number their session tokens from a counter that restarts with the
            # process, so "our" token on a restarted server is someone else's session. Leave it
            # alone (no CloseSession) and start a session of our own.
            _log.warning("opcua %s: server restarted; not resuming the old session", self.endpoint)
            client.disconnect_socket()
            session.reset_authentication_token()
            await self._open_channel(client)
            await client.create_session()
            await self._activate(client)
            resumed = False
        if restarted and self._sub is not None:
            self._lose_subscription("server restarted")
        if start is not None:
            self._server_start = start
        return resumed

    async def _open_channel(self, client: Client) -> None:
        await client.connect_socket()
        try:
            await client.send_hello()
            await client.open_secure_channel()
        except BaseException:
            client.disconnect_socket()
            raise

    async def _activate(self, client: Client) -> None:
        try:
            await client.activate_session(
                username=self._security.username,
                password=self._security.password,
                certificate=client.user_certificate,
            )
        except UaStatusCodeError as exc:
            if exc.code in _IDENTITY_CODES:
                who = (
                    f"user {self._security.username!r}"
                    if self._security.username
                    else ("the user certificate" if client.user_certificate else "anonymous")
                )
                raise DeviceProtocolError(
                    f"{self.endpoint}: server refused the identity ({who}): {exc}"
                ) from None
            raise

    def _lose_subscription(self, why: str) -> None:
        """The subscription is gone: values it still held may be lost; find out per tag."""
        _log.info("opcua %s: subscription lost (%s); re-creating", self.endpoint, why)
        self._stream.gaps.open_all()
        self._sub = None

    async def _subscription(self, client: Client, resumed: bool) -> svc.SubscriptionState:
        """Carry on the subscription we had if the server still has it, else create one."""
        old = self._sub
        if old is not None:
            kept = False
            if resumed and self._resume_ok:
                with contextlib.suppress(UaStatusCodeError):
                    kept = await svc.subscription_alive(client, old.id)
                self._stats["resumed"] += kept
            elif resumed:
                with contextlib.suppress(UaError):  # do not leave it queueing for nobody
                    await client.uaclient.delete_subscriptions([old.id])
            elif self._resume_ok:
                with contextlib.suppress(UaStatusCodeError):
                    kept = await svc.transfer_subscription(client, old.id)
                self._stats["transferred"] += kept
            if kept:
                self._kept = True
                return old
            self._lose_subscription("not on the server any more")
        per_call = await svc.operation_limit(
            client,
            ObjectIds.Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall,
            _MAX_ITEMS_PER_CALL,
        )
        sub = await svc.create_subscription(
            client, float(self._publishing_interval_ms), _KEEPALIVE_EVERY_S, _LIFETIME_S
        )
        self._sub = sub
        self._stream.historized = None  # the server may have changed what it keeps
        self._stream.gaps.mark_subscribed(np.arange(len(self._items), dtype=np.int64), now_us())
        failed, calls = await svc.create_items(client, sub.id, self._items, per_call)
        self._stats["item_create_calls"] += calls
        if self._subscribed_before:
            self._stats["resubscribed"] += 1
        self._subscribed_before = True
        if failed:
            self._report_failed_items(failed)
        return sub

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
        n = len(failed)
        handles = np.fromiter((h for h, _ in failed), dtype=np.int64, count=n)
        self._stream.gaps.close(handles)
        self._stream.emit_values(
            self._tag_ids[handles],
            np.full(n, now_us(), dtype=np.int64),
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
            silent = time.monotonic() - self._stream.last_response
            if silent > stall_timeout:
                self._dead = f"no publish response or keep-alive for {silent:.1f} s"
                raise DeviceUnreachable(self._dead)

    async def _renew_channel(self, client: Client) -> None:
        # Part 4 5.5.2.1: ask for a new security token after 75 % of its lifetime.
        while True:
            await asyncio.sleep(client.secure_channel_timeout * 0.75 / 1000.0)
            await client.open_secure_channel(renew=True)
            client.uaclient.revolve_security_token()

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            err = _translate(exc)
            self._mark_dead(f"{task.get_name()}: {type(err).__name__}: {err}")

    def _mark_dead(self, reason: str) -> None:
        if self._dead is None:
            self._dead = reason
        self._wake.set()

    async def _close(self, client: Client, *, end_session: bool) -> None:
        # Closing the session also deletes its subscription on the server. On a dead transport
        # asyncua skips the requests; on a wedged one the timeout cuts it short.
        try:
            if end_session and client.uaclient.state is UaClientState.CONNECTED:
                await asyncio.wait_for(client.disconnect(), timeout=_DISCONNECT_TIMEOUT_S)
        except Exception as exc:  # teardown is best effort
            _log.debug("opcua %s: disconnect failed: %r", self.endpoint, exc)
        with contextlib.suppress(Exception):
            client.disconnect_socket()

    def _report_failure(self, exc: Exception) -> None:
        if self._stats["state"] == SessionState.DISCONNECTED.value:
            return  # already reported for this attempt
        err = _translate(exc)
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
