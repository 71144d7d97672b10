"""The simulator's server abilities for failover scenarios: how TransferSubscriptions behaves
(``transfer``) and how long an abandoned session lives (``session_timeout_ms``).

Each test runs a real in-process simulator and raw asyncua clients that open their sessions step
by step (as ``ingest.device.opcua_connection`` does), so no client-side supervisor reconnects or
re-activates a session behind the test's back. Client A subscribes to a counting tag, takes one
publish and loses its socket without closing the session; client B, a new session, then tries to
take A's subscription over.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaStatusCodeError

from ingest.device import opcua_service as svc
from ingest.simulators import OpcUaSimulator
from ingest.simulators.opcua_server import TransferMode

PUBLISH_MS = 50.0
REQUEST_TIMEOUT_S = 5.0


@asynccontextmanager
async def simulator(
    transfer: TransferMode = "complete", session_timeout_ms: int | None = None
) -> AsyncIterator[OpcUaSimulator]:
    sim = OpcUaSimulator(
        port=0,  # a free port
        wells=1,
        tags_per_well=2,
        interval_ms=50,
        transfer=transfer,
        session_timeout_ms=session_timeout_ms,
    )
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


async def open_session(endpoint: str, requested_timeout_ms: int = 60_000) -> tuple[Client, ua.CreateSessionResult]:
    """A channel and an activated anonymous session, without ``Client.connect``'s supervisor."""
    client = Client(endpoint, timeout=REQUEST_TIMEOUT_S)
    client.session_timeout = requested_timeout_ms
    await client.connect_socket()
    try:
        await client.send_hello()
        await client.open_secure_channel()
        created = await client.create_session()
        await client.activate_session()
    except BaseException:
        client.disconnect_socket()
        raise
    return client, created


@dataclass
class Abandoned:
    """What client A left behind: its subscription and the sequence numbers it never acked."""

    subscription_id: int
    unacked: list[int]


async def subscribe_and_abandon(sim: OpcUaSimulator) -> Abandoned:
    """Client A: a subscription on a counting tag, one publish with data, then its socket drops."""
    client, _ = await open_session(sim.endpoint)
    try:
        sub = await svc.create_subscription(client, PUBLISH_MS, keepalive_every_s=1.0, lifetime_s=60.0)
        item = ua.MonitoredItemCreateRequest(
            ItemToMonitor=ua.ReadValueId(
                NodeId=ua.NodeId.from_string(sim.node_ids()[0]), AttributeId=AttributeIds.Value
            ),
            MonitoringMode=ua.MonitoringMode.Reporting,
            RequestedParameters=ua.MonitoringParameters(
                ClientHandle=1, SamplingInterval=0.0, QueueSize=100, DiscardOldest=True
            ),
        )
        results = await client.uaclient.create_monitored_items(
            ua.CreateMonitoredItemsParameters(
                SubscriptionId=sub.id, TimestampsToReturn=ua.TimestampsToReturn.Both, ItemsToCreate=[item]
            )
        )
        assert results[0].StatusCode.is_good()
        received = await publish_for(client, sub.id, [], within_s=REQUEST_TIMEOUT_S, stop_at_data=True)
        assert received, "client A got no data before its socket dropped"
        unacked = [int(r.NotificationMessage.SequenceNumber) for r in received]
    finally:
        client.disconnect_socket()  # no CloseSession: the session stays on the server
    return Abandoned(sub.id, unacked)


async def publish_for(
    client: Client,
    subscription_id: int,
    acks: list[int],
    *,
    within_s: float,
    stop_at_data: bool = False,
) -> list[ua.PublishResult]:
    """PublishRequests for ``within_s``; the results carrying data for ``subscription_id``.

    ``acks`` go with the first request. Responses for other subscriptions and keep-alives are
    skipped; a request still unanswered when time is up is abandoned.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    pending = [ua.SubscriptionAcknowledgement(SubscriptionId=subscription_id, SequenceNumber=s) for s in acks]
    got: list[ua.PublishResult] = []
    while (left := deadline - loop.time()) > 0:
        try:
            response = await asyncio.wait_for(client.uaclient.publish(pending), timeout=left)
        except TimeoutError:
            break
        except UaStatusCodeError as exc:
            if exc.code == StatusCodes.BadTimeout:
                continue
            raise
        pending = []
        result = response.Parameters
        if result.SubscriptionId == subscription_id and result.NotificationMessage.NotificationData:
            got.append(result)
            pending = [
                ua.SubscriptionAcknowledgement(
                    SubscriptionId=subscription_id, SequenceNumber=result.NotificationMessage.SequenceNumber
                )
            ]
            if stop_at_data:
                break
    return got


async def transfer(client: Client, subscription_id: int) -> ua.TransferResult:
    results = await client.uaclient.transfer_subscriptions(
        ua.TransferSubscriptionsParameters(SubscriptionIds=[subscription_id], SendInitialValues=False)
    )
    assert len(results) == 1
    return results[0]


def counts_in(results: list[ua.PublishResult]) -> list[float]:
    values: list[float] = []
    for r in results:
        for data in r.NotificationMessage.NotificationData:
            assert isinstance(data, ua.DataChangeNotification)
            values.extend(float(m.Value.Value.Value) for m in data.MonitoredItems)
    return values


async def test_complete_transfer_moves_the_subscription_and_it_publishes_to_the_new_session() -> None:
    async with simulator("complete") as sim:
        a = await subscribe_and_abandon(sim)
        client, _ = await open_session(sim.endpoint)
        try:
            res = await transfer(client, a.subscription_id)
            assert res.StatusCode.is_good(), res.StatusCode
            assert sorted(res.AvailableSequenceNumbers) == sorted(a.unacked)
            got = await publish_for(client, a.subscription_id, a.unacked, within_s=3.0, stop_at_data=True)
            assert got, "the transferred subscription published nothing to the new session"
            assert got[0].NotificationMessage.SequenceNumber > max(a.unacked)
            assert counts_in(got) and max(counts_in(got)) >= 1.0
        finally:
            client.disconnect_socket()


async def test_stock_transfer_answers_good_but_the_subscription_stays_silent() -> None:
    async with simulator("stock") as sim:
        a = await subscribe_and_abandon(sim)
        client, _ = await open_session(sim.endpoint)
        try:
            res = await transfer(client, a.subscription_id)
            assert res.StatusCode.is_good(), res.StatusCode
            got = await publish_for(client, a.subscription_id, a.unacked, within_s=2.0)
            assert got == [], "stock asyncua is expected never to publish a transferred subscription"
            assert sim.total_published > 0  # values kept coming meanwhile
        finally:
            client.disconnect_socket()


async def test_unsupported_transfer_is_refused_with_bad_service_unsupported() -> None:
    async with simulator("unsupported") as sim:
        a = await subscribe_and_abandon(sim)
        client, _ = await open_session(sim.endpoint)
        try:
            with pytest.raises(UaStatusCodeError) as caught:
                await transfer(client, a.subscription_id)
            assert caught.value.code == StatusCodes.BadServiceUnsupported
        finally:
            client.disconnect_socket()


async def test_session_timeout_caps_the_granted_timeout_and_deletes_the_abandoned_subscription() -> None:
    async with simulator(session_timeout_ms=1000) as sim:
        probe, created = await open_session(sim.endpoint, requested_timeout_ms=60_000)
        try:
            assert created.RevisedSessionTimeout == 1000
            assert probe.session_timeout == 1000
        finally:
            await probe.close_session()
            probe.disconnect_socket()
        a = await subscribe_and_abandon(sim)
        await asyncio.sleep(3.0)
        client, _ = await open_session(sim.endpoint)
        try:
            res = await transfer(client, a.subscription_id)
            assert res.StatusCode.value == StatusCodes.BadSubscriptionIdInvalid, res.StatusCode
        finally:
            client.disconnect_socket()


def test_simulator_refuses_bad_transfer_and_session_timeout_values() -> None:
    with pytest.raises(ValueError, match="transfer must be one of complete, stock, unsupported"):
        OpcUaSimulator(transfer="bogus")  # type: ignore[arg-type]
    for bad in (0, -5, 1.5, True):
        with pytest.raises(ValueError, match="session_timeout_ms"):
            OpcUaSimulator(session_timeout_ms=bad)  # type: ignore[arg-type]


def test_command_line_transfer_and_session_timeout_options() -> None:
    from ingest.simulators.opcua_sim import _parse_args

    args = _parse_args([])
    assert args.transfer == "complete" and args.session_timeout_ms is None
    args = _parse_args(["--transfer", "unsupported", "--session-timeout-ms", "1500"])
    assert args.transfer == "unsupported" and args.session_timeout_ms == 1500
    for bad in (["--transfer", "bogus"], ["--session-timeout-ms", "0"], ["--session-timeout-ms", "soon"]):
        with pytest.raises(SystemExit):
            _parse_args(bad)
