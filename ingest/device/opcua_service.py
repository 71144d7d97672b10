"""Thin wrappers over the OPC UA services the session uses, on asyncua's raw (UaClient) layer.

The raw layer, because asyncua's high-level ``Subscription`` runs its own publish loop,
stale-subscription watchdog and re-creation logic; the session needs to see sequence numbers,
send its own acknowledgements, Republish, and decide itself between resuming a subscription and
re-creating it. Everything here is a public asyncua API.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.ua_binary import struct_from_binary
from asyncua.ua.uaerrors import UaError, UaStatusCodeError

from ingest.core.errors import DeviceProtocolError, DeviceUnreachable, IngestError

__all__ = [
    "ItemSpec",
    "SubscriptionState",
    "create_items",
    "create_subscription",
    "history_read_raw",
    "operation_limit",
    "read_history_readable",
    "server_start_time",
    "subscription_alive",
    "transfer_subscription",
    "translate_error",
]

MAX_ITEMS_PER_CALL = 1000  # spec-level cap we apply whatever the server says
_MAX_NODES_PER_READ = 1000
_MAX_NODES_PER_HISTORY_READ = 100
_MAX_HISTORY_ROUNDS = 1000  # continuation points followed per node before giving up

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
IDENTITY_CODES = frozenset(
    (
        StatusCodes.BadUserAccessDenied,
        StatusCodes.BadIdentityTokenInvalid,
        StatusCodes.BadIdentityTokenRejected,
    )
)


def translate_error(exc: BaseException) -> IngestError:
    """asyncua and socket errors -> ours, so nothing above this package sees asyncua types."""
    if isinstance(exc, IngestError):
        return exc
    if isinstance(exc, UaStatusCodeError):
        code = getattr(exc, "code", None)
        cls = DeviceUnreachable if code in _UNREACHABLE_CODES else DeviceProtocolError
        return cls(f"server answered {exc}")
    if isinstance(exc, OSError | TimeoutError | EOFError):
        return DeviceUnreachable(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
    if isinstance(exc, UaError):
        return DeviceProtocolError(f"{type(exc).__name__}: {exc}")
    return DeviceProtocolError(f"unexpected {type(exc).__name__}: {exc}")


_FILTER_REFUSED_CODES = frozenset(
    (
        StatusCodes.BadFilterNotAllowed,
        StatusCodes.BadMonitoredItemFilterUnsupported,
        StatusCodes.BadMonitoredItemFilterInvalid,
        StatusCodes.BadDeadbandFilterInvalid,
    )
)
_DEADBAND = {
    None: ua.DeadbandType.None_,
    "absolute": ua.DeadbandType.Absolute,
    "percent": ua.DeadbandType.Percent,
}


@dataclass
class SubscriptionState:
    """What outlives one connection: enough to resume the subscription on the next."""

    id: int
    publishing_interval_ms: float
    keepalive_count: int
    next_seq: int = 1  # sequence number of the next NotificationMessage we expect
    unacked: set[int] = field(default_factory=set)  # processed, acknowledgement not confirmed

    @property
    def stall_timeout_s(self) -> float:
        """No publish response (not even a keep-alive) for this long means the session is stuck."""
        return 3.0 * self.publishing_interval_ms / 1000.0 * self.keepalive_count


@dataclass(frozen=True)
class ItemSpec:
    """One monitored item as requested (per-tag settings already merged with the defaults)."""

    handle: int
    node_id: ua.NodeId
    sampling_interval_ms: float
    queue_size: int
    discard_oldest: bool
    deadband_type: Literal["absolute", "percent"] | None
    deadband_value: float


async def create_subscription(
    client: Client, publishing_interval_ms: float, keepalive_every_s: float, lifetime_s: float
) -> SubscriptionState:
    keepalive = max(1, math.ceil(keepalive_every_s * 1000.0 / publishing_interval_ms))
    params = ua.CreateSubscriptionParameters(
        RequestedPublishingInterval=publishing_interval_ms,
        RequestedLifetimeCount=max(3 * keepalive, math.ceil(lifetime_s * 1000.0 / publishing_interval_ms)),
        RequestedMaxKeepAliveCount=keepalive,
        MaxNotificationsPerPublish=0,  # 0 = no limit; the item queues bound what piles up
        PublishingEnabled=True,
        Priority=0,
    )
    # Sent through the transport directly: UaClient.create_subscription would also start
    # asyncua's publish loop, and this session runs its own.
    protocol = client.uaclient.protocol
    if protocol is None:
        raise ConnectionError("connection is not open")
    data = await protocol.send_request(ua.CreateSubscriptionRequest(Parameters=params))
    response = struct_from_binary(ua.CreateSubscriptionResponse, data)
    response.ResponseHeader.ServiceResult.check()
    result = response.Parameters
    return SubscriptionState(
        id=int(result.SubscriptionId),
        publishing_interval_ms=max(float(result.RevisedPublishingInterval), 1.0),
        keepalive_count=max(int(result.RevisedMaxKeepAliveCount), 1),
    )


async def create_items(
    client: Client, subscription_id: int, items: Sequence[ItemSpec], per_call: int
) -> tuple[list[tuple[int, int]], int]:
    """Create monitored items in calls of at most ``per_call``.

    Returns ``(failed, calls)``: ``(handle, status code)`` of items the server refused, and how
    many CreateMonitoredItems calls were made. Items whose DataChangeFilter the server refuses
    are created again without one (default trigger; no deadband).
    """
    failed: list[tuple[int, int]] = []
    calls = 0
    pending = list(items)
    for use_filter in (True, False):
        refused: list[ItemSpec] = []
        for start in range(0, len(pending), per_call):
            chunk = pending[start : start + per_call]
            calls += 1
            results = await client.uaclient.create_monitored_items(
                ua.CreateMonitoredItemsParameters(
                    SubscriptionId=subscription_id,
                    TimestampsToReturn=ua.TimestampsToReturn.Both,
                    ItemsToCreate=[_create_request(it, use_filter) for it in chunk],
                )
            )
            for it, res in zip(chunk, results, strict=True):
                code = res.StatusCode.value
                if res.StatusCode.is_good():
                    continue
                if use_filter and code in _FILTER_REFUSED_CODES:
                    refused.append(it)
                else:
                    failed.append((it.handle, code))
        if not refused:
            break
        pending = refused
    return failed, calls


def _create_request(it: ItemSpec, use_filter: bool) -> ua.MonitoredItemCreateRequest:
    flt = None
    if use_filter:
        # StatusValueTimestamp: a repeated value with a new source timestamp is still a reading
        # (the default trigger StatusValue would hide it).
        flt = ua.DataChangeFilter(
            Trigger=ua.DataChangeTrigger.StatusValueTimestamp,
            DeadbandType=_DEADBAND[it.deadband_type],
            DeadbandValue=float(it.deadband_value) if it.deadband_type else 0.0,
        )
    return ua.MonitoredItemCreateRequest(
        ItemToMonitor=ua.ReadValueId(NodeId=it.node_id, AttributeId=AttributeIds.Value),
        MonitoringMode=ua.MonitoringMode.Reporting,
        RequestedParameters=ua.MonitoringParameters(
            ClientHandle=it.handle,
            SamplingInterval=float(it.sampling_interval_ms),
            QueueSize=it.queue_size,
            DiscardOldest=it.discard_oldest,
            Filter=flt,
        ),
    )


async def operation_limit(client: Client, object_id: int, cap: int) -> int:
    """A server OperationLimits value, capped; 0 or absent means "no limit" (so: ``cap``)."""
    node = client.get_node(ua.NodeId(ua.Int32(object_id)))
    try:
        value = await node.read_value()
    except (UaError, TimeoutError):
        return cap  # the node is optional
    if isinstance(value, int) and value > 0:
        return min(cap, value)
    return cap


async def server_start_time(client: Client) -> datetime | None:
    """ServerStatus.StartTime: changes when the server restarts (its subscriptions are gone)."""
    node = client.get_node(ua.NodeId(ua.Int32(ObjectIds.Server_ServerStatus_StartTime)))
    try:
        value = await node.read_value()
    except (UaError, TimeoutError):
        return None
    return value if isinstance(value, datetime) else None


async def subscription_alive(client: Client, subscription_id: int) -> bool:
    """Does the (re-activated) session still hold the subscription?

    SetPublishingMode(enabled) changes nothing on a live subscription and answers
    BadSubscriptionIdInvalid for a gone one; it needs no monitored item ids.
    """
    results = await client.uaclient.set_publishing_mode(
        ua.SetPublishingModeParameters(PublishingEnabled=True, SubscriptionIds=[subscription_id])
    )
    return bool(results) and results[0].is_good()


async def transfer_subscription(client: Client, subscription_id: int) -> bool:
    """TransferSubscriptions to the current (new) session; True if the server moved it."""
    results = await client.uaclient.transfer_subscriptions(
        ua.TransferSubscriptionsParameters(SubscriptionIds=[subscription_id], SendInitialValues=False)
    )
    return bool(results) and results[0].StatusCode.is_good()


async def read_history_readable(client: Client, node_ids: Sequence[ua.NodeId]) -> list[bool]:
    """Per node: does its AccessLevel allow HistoryRead (the server keeps history for it)?"""
    per_call = await operation_limit(
        client,
        ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead,
        _MAX_NODES_PER_READ,
    )
    out: list[bool] = []
    for start in range(0, len(node_ids), per_call):
        chunk = list(node_ids[start : start + per_call])
        dvs = await client.uaclient.read_attributes(chunk, AttributeIds.AccessLevel)
        for dv in dvs:
            good = dv.StatusCode is None or dv.StatusCode.is_good()
            level = dv.Value.Value if good and dv.Value is not None else 0
            out.append(bool(isinstance(level, int) and level & ua.AccessLevel.HistoryRead.mask))
    return out


async def history_read_raw(
    client: Client,
    requests: Sequence[tuple[ua.NodeId, datetime, datetime]],
    on_response: Callable[[], None] = lambda: None,
) -> list[tuple[list[ua.DataValue], int]]:
    """Raw history of each ``(node, start, end)``, both ends inclusive, following continuation
    points to the end.

    Returns per request ``(values, status code)``; a Bad code means the values may be
    incomplete. One HistoryRead carries one time window for all its nodes, so requests are
    sorted by start and sent in groups over the group's widest window: the caller keeps what
    lies inside each node's own window. ``on_response`` is called after every answer (the
    caller's stall detection counts them as signs of life).
    """
    per_call = await operation_limit(
        client,
        ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerHistoryReadData,
        _MAX_NODES_PER_HISTORY_READ,
    )
    out: list[tuple[list[ua.DataValue], int]] = [([], StatusCodes.Good) for _ in requests]
    order = sorted(range(len(requests)), key=lambda i: requests[i][1])
    for start in range(0, len(order), per_call):
        group = order[start : start + per_call]
        details = ua.ReadRawModifiedDetails(
            IsReadModified=False,
            StartTime=min(requests[i][1] for i in group),
            EndTime=max(requests[i][2] for i in group),
            NumValuesPerNode=0,
            ReturnBounds=False,
        )
        pending: dict[int, bytes | None] = {i: None for i in group}
        for _ in range(_MAX_HISTORY_ROUNDS):
            if not pending:
                break
            ids = list(pending)
            results = await client.uaclient.history_read(
                ua.HistoryReadParameters(
                    HistoryReadDetails=details,
                    TimestampsToReturn=ua.TimestampsToReturn.Both,
                    ReleaseContinuationPoints=False,
                    NodesToRead=[
                        ua.HistoryReadValueId(NodeId=requests[i][0], ContinuationPoint=pending[i]) for i in ids
                    ],
                )
            )
            on_response()
            pending = {}
            for i, res in zip(ids, results, strict=True):
                values, _code = out[i]
                if not res.StatusCode.is_good():
                    out[i] = (values, res.StatusCode.value)
                    continue
                values += list(getattr(res.HistoryData, "DataValues", None) or [])
                if res.ContinuationPoint:
                    pending[i] = res.ContinuationPoint
        for i in pending:
            out[i] = (out[i][0], StatusCodes.BadContinuationPointInvalid)
    return out
