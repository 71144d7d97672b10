"""What outlives a TCP connection: the server-side session and its subscription.

``SessionKeeper.connect`` opens a (secured) channel and then, in this order of preference:
1. re-activates the previous session on the new channel (Part 4 6.7): the server kept it, with
   its subscription and queued values, for the session timeout after the socket died;
2. creates a session and moves the old subscription to it with TransferSubscriptions, if the
   server did not restart (its ServerStatus.StartTime is unchanged);
3. creates a session and a new subscription, opening a gap for every tag (see
   ``NotificationStream``): values the old subscription still held are backfilled or reported.
A session that starts on a new actor (its node lost, its actor restarted, or the connection
passed on to it) reads where each tag's stored history ends and the record its previous owner
left (``ingest.device.takeover``) while it opens its channel and session, and so tries 2. on the
previous owner's subscription: Republish then returns what that owner never
committed. A server that answers the transfer but then sends nothing for the subscription (stock
asyncua) is given up on after ``TRANSFER_PROOF_S``, and 3. follows.
``watch`` then runs the publish loop and the channel renewal until stop() or a loss: a dead
socket, a Bad subscription status, or no publish response (not even a keep-alive) for three
keep-alive periods (at least 5 s), which recycles a stalled session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from asyncua.client.client import Client
from asyncua.client.ua_client import UaClientState
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.uaerrors import UaError, UaStatusCodeError

from ingest.core.errors import DeviceProtocolError, DeviceUnreachable
from ingest.device import opcua_service as svc
from ingest.device.opcua_security import OpcUaSecurity, PkiStore, configure_client
from ingest.device.opcua_stream import NotificationStream
from ingest.device.opcua_values import now_us, to_us
from ingest.device.takeover import TakeoverHooks, TakeoverRecord

__all__ = ["SessionKeeper"]

_log = logging.getLogger(__name__)

KEEPALIVE_EVERY_S = 1.0  # ask for a keep-alive at least this often when nothing changes
LIFETIME_S = 60.0  # server drops our subscription after this long without a PublishRequest
SESSION_TIMEOUT_MS = 60_000  # ... and our session: the window in which a resume is possible
MIN_STALL_TIMEOUT_S = 5.0
TRANSFER_PROOF_S = 2.5  # a transferred subscription must answer (data or keep-alive) within this
REQUEST_TIMEOUT_S = 10.0
DISCONNECT_TIMEOUT_S = 3.0


class SessionKeeper:
    """One server session and subscription, carried across connections where possible."""

    def __init__(
        self,
        endpoint: str,
        security: OpcUaSecurity,
        pki: PkiStore,
        items: Sequence[svc.ItemSpec],
        publishing_interval_ms: float,
        stream: NotificationStream,
        stats: dict[str, Any],
        stop: asyncio.Event,
        takeover: TakeoverHooks | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._takeover = takeover
        self._first_connect = True
        self._floors_known = False  # the stream knows where each tag's stored history ends
        self._transferred = False  # this connection carries on a subscription moved to it
        self._security = security
        self._pki = pki
        self._items = items
        self._publishing_interval_ms = publishing_interval_ms
        self._stream = stream
        self._stats = stats
        self._stop = stop
        # The asyncua client is kept: it holds the session token and the server nonce a
        # re-activation needs.
        self._client: Client | None = None
        self._sub: svc.SubscriptionState | None = None
        self._server_start: int | None = None  # ServerStatus.StartTime, µs
        self._subscribed_before = False
        self._kept = False  # this connection carried on an existing subscription
        self._resume_ok = True  # a resume may be tried (the last one made progress)
        self._dead: str | None = None  # why the current connection is considered lost
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    # --- connecting -----------------------------------------------------------------------------

    async def connect(self) -> svc.SubscriptionState:
        """A channel, an activated session and a subscription ready to publish."""
        self._dead = None
        self._wake.clear()
        self._stream.progress = self._kept = self._transferred = False
        # A first connection here reads the floors and the previous owner's record while it
        # opens its channel and session (both only matter once it subscribes).
        prep: asyncio.Task[TakeoverRecord | None] | None = None
        if self._first_connect:
            self._first_connect = False
            if self._takeover is not None:
                prep = asyncio.create_task(self._prepare_takeover(self._takeover), name="opcua-takeover-prep")
        if self._client is None:
            self._client = Client(self.endpoint, timeout=REQUEST_TIMEOUT_S)
            self._client.session_timeout = SESSION_TIMEOUT_MS
        try:
            resumed = await self._open_session(self._client)
        except asyncio.CancelledError:
            if prep is not None:
                prep.cancel()
            raise
        except BaseException:
            if prep is not None:  # the next connection carries on from it
                self._take_over(await prep)
            raise
        if prep is not None:
            self._take_over(await prep)
        return await self._subscription(self._client, resumed)

    async def _prepare_takeover(self, hooks: TakeoverHooks) -> TakeoverRecord | None:
        """Where each tag's stored history ends, and the record of the subscription a previous
        owner left (None: start afresh)."""
        t0 = time.monotonic()
        floors = await hooks.newest_stored()
        self._stats["floors_ms"] = round((time.monotonic() - t0) * 1000.0, 1)
        if floors is None:
            return None  # without them a takeover could store twice: start afresh (the host checks gaps)
        self._stream.set_floors(floors)
        self._floors_known = True
        try:
            return await hooks.load()
        except Exception as exc:  # Redis away: start afresh; the floors still bound every gap
            _log.warning("opcua %s: takeover record unavailable (%s)", self.endpoint, type(exc).__name__)
            return None

    def _take_over(self, record: TakeoverRecord | None) -> None:
        """Carry on the previous owner's subscription from its record, unless the server has
        restarted since (its StartTime differs: the subscription is gone)."""
        if record is None or self._takeover is None:
            return
        self._stats["takeover_attempts"] += 1
        now, then = self._server_start, record.server_start_us
        if now is not None and then is not None and now != then:
            self._lose_subscription("server restarted since the previous owner left", "server_restarted")
            return
        self._sub = svc.SubscriptionState(
            record.subscription_id,
            record.publishing_interval_ms,
            record.keepalive_count,
            next_seq=record.acked_through + 1,
        )
        if now is None:  # not read yet (the connection failed): the next one compares
            self._server_start = then
        self._takeover.ledger.subscribed(
            record.subscription_id,
            record.publishing_interval_ms,
            record.keepalive_count,
            record.acked_through + 1,
            record.server_start_us,
        )

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
            await self._new_session(client)
        start_time = await svc.server_start_time(client)
        start = to_us(start_time) if start_time is not None else None
        restarted = self._server_start is not None and start is not None and start != self._server_start
        if resumed and restarted:
            # asyncua servers number their session tokens from a counter that restarts with the
            # process, so "our" token on a restarted server is someone else's session. Leave it
            # alone (no CloseSession) and start a session of our own.
            _log.warning("opcua %s: server restarted; not resuming the old session", self.endpoint)
            client.disconnect_socket()
            await self._open_channel(client)
            await self._new_session(client)
            resumed = False
        if restarted and self._sub is not None:
            self._lose_subscription("server restarted", "server_restarted")
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

    async def _new_session(self, client: Client) -> None:
        client.uaclient.session.reset_authentication_token()
        await client.create_session()
        await self._activate(client)

    async def _activate(self, client: Client) -> None:
        try:
            await client.activate_session(
                username=self._security.username,
                password=self._security.password,
                certificate=client.user_certificate,
            )
        except UaStatusCodeError as exc:
            if exc.code in svc.IDENTITY_CODES:
                who = (
                    f"user {self._security.username!r}"
                    if self._security.username
                    else ("the user certificate" if client.user_certificate else "anonymous")
                )
                raise DeviceProtocolError(f"{self.endpoint}: server refused the identity ({who}): {exc}") from exc
            raise

    def _lose_subscription(self, why: str, cause: str) -> None:
        """The subscription is gone: values it still held may be lost; find out per tag."""
        _log.info("opcua %s: subscription lost (%s); re-creating", self.endpoint, why)
        self._stream.gaps.open_all(cause)
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
                self._transferred = kept
            if kept:
                self._kept = True
                self._subscribed(old)
                return old
            if resumed and not self._resume_ok:
                self._lose_subscription("it published nothing", "not_publishing")
            else:
                self._lose_subscription("not on the server any more", "subscription_gone")
        elif not self._subscribed_before and self._floors_known:
            # A first subscription here, after readings stored by an earlier session: what was
            # published in between is read back (HistoryRead) or reported, per tag, from where
            # its stored history ends.
            self._stream.gaps.open_all("session_start")
        per_call = await svc.operation_limit(
            client,
            ObjectIds.Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall,
            svc.MAX_ITEMS_PER_CALL,
        )
        sub = await svc.create_subscription(client, self._publishing_interval_ms, KEEPALIVE_EVERY_S, LIFETIME_S)
        self._stream.historized = None  # the server may have changed what it keeps
        self._stream.gaps.mark_subscribed(np.arange(len(self._items), dtype=np.int64), now_us())
        failed, calls = await svc.create_items(client, sub.id, self._items, per_call)
        self._stats["item_create_calls"] += calls
        # Kept for resuming only once every item exists; a half-made one is deleted by the
        # publish loop of a later connection when it shows up.
        self._sub = sub
        self._subscribed(sub)
        if self._subscribed_before:
            self._stats["resubscribed"] += 1
        self._subscribed_before = True
        if failed:
            self._stream.report_failed_items(failed)
        return sub

    def _subscribed(self, sub: svc.SubscriptionState) -> None:
        if self._takeover is not None:
            self._takeover.ledger.subscribed(
                sub.id, sub.publishing_interval_ms, sub.keepalive_count, sub.next_seq, self._server_start
            )

    # --- connected ------------------------------------------------------------------------------

    async def watch(self, sub: svc.SubscriptionState) -> None:
        """Publish until stop() (returns) or the connection is lost or stalls (raises)."""
        assert self._client is not None
        client = self._client
        stall_timeout = max(sub.stall_timeout_s, MIN_STALL_TIMEOUT_S)
        self._stream.last_response = time.monotonic()
        tasks = [
            asyncio.create_task(self._stream.run(client, sub), name="opcua-publish"),
            asyncio.create_task(self._renew_channel(client), name="opcua-renew"),
        ]
        for task in tasks:
            task.add_done_callback(self._on_task_done)
        try:
            await self._watch(client, stall_timeout)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task

    async def _watch(self, client: Client, stall_timeout: float) -> None:
        tick = min(1.0, stall_timeout / 4.0, TRANSFER_PROOF_S / 5.0)
        since = time.monotonic()
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
            if self._transferred and not self._stream.progress and time.monotonic() - since > TRANSFER_PROOF_S:
                # The server moved the subscription to us but publishes it nowhere (asyncua's
                # own TransferSubscriptions): give it up; the next connection makes a new one.
                self._stats["transfers_silent"] += 1
                self._dead = f"transferred subscription silent for {TRANSFER_PROOF_S} s"
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
            err = svc.translate_error(exc)
            if self._dead is None:
                self._dead = f"{task.get_name()}: {type(err).__name__}: {err}"
            self._wake.set()

    # --- leaving --------------------------------------------------------------------------------

    def drop_connection(self) -> None:
        """After a loss: drop only the transport. The server keeps our session (and
        subscription) for SESSION_TIMEOUT_MS, so the next connect can re-activate it.
        A resume that never got a publish response through is not tried twice in a row."""
        self._resume_ok = self._stream.progress or not self._kept
        if self._client is not None:
            self._client.disconnect_socket()

    def can_pass_on(self) -> bool:
        """Connected, with a subscription that has answered on this connection: one another
        session can take over."""
        client = self._client
        return (
            client is not None
            and client.uaclient.state is UaClientState.CONNECTED
            and self._sub is not None
            and self._stream.progress
        )

    async def close(self) -> None:
        """End the session (and with it the subscription on the server), best effort."""
        client = self._client
        if client is None:
            return
        try:
            if client.uaclient.state is UaClientState.CONNECTED:
                await asyncio.wait_for(client.disconnect(), timeout=DISCONNECT_TIMEOUT_S)
        except Exception as exc:  # on a wedged server the timeout cuts it short
            _log.debug("opcua %s: disconnect failed: %r", self.endpoint, exc)
        with contextlib.suppress(Exception):
            client.disconnect_socket()
