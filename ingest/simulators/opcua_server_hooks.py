"""What the simulator adds to asyncua's server: its security and history set-up, SQLite history
that takes string node ids, a user list, and fault hooks (freeze publishing, cut connections,
enforce MaxMonitoredItemsPerCall, complete, leave as is or refuse TransferSubscriptions).
Instance-level wrappers only, nothing global.
"""

from __future__ import annotations

import asyncio
import copy
import hmac
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, get_args

from asyncua import ua
from asyncua.common.utils import ServiceError
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.history import HistoryDict
from asyncua.server.history_sql import HistorySQLite
from asyncua.server.internal_server import InternalServer
from asyncua.server.internal_subscription import InternalSubscription
from asyncua.server.server import Server
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes

from ingest.core.models import SecurityMode, SecurityPolicy

__all__ = [
    "TRANSFER_MODES",
    "SQLiteHistory",
    "ServerFaults",
    "TransferMode",
    "UserManager",
    "check_settings",
    "setup_history",
    "setup_security",
]

TransferMode = Literal["complete", "stock", "unsupported"]
"""What TransferSubscriptions does: ``complete`` moves the subscription whole (responses and
PublishRequests to the new session); ``stock`` is asyncua 2.1 as it is (answers Good, then the
subscription never publishes to the new session); ``unsupported`` answers BadServiceUnsupported."""
TRANSFER_MODES: tuple[TransferMode, ...] = get_args(TransferMode)


def _plain(ts: datetime | None) -> datetime | None:
    if ts is None:
        return None
    return datetime(*ts.timetuple()[:6], ts.microsecond, tzinfo=ts.tzinfo)


class SQLiteHistory(HistorySQLite):
    """asyncua's SQLite history, with table names that work for string node ids.

    asyncua names a node's table ``f"{ns}_{identifier!r}"``, so a string identifier brings its
    quotes along and the table-name check refuses it.
    """

    async def save_node_value(self, node_id: ua.NodeId, datavalue: ua.DataValue) -> None:
        # sqlite3 adapts datetime, not asyncua's DateTime subclass: store plain datetimes.
        dv = copy.copy(datavalue)
        dv.SourceTimestamp = _plain(dv.SourceTimestamp)  # type: ignore[assignment]
        dv.ServerTimestamp = _plain(dv.ServerTimestamp)  # type: ignore[assignment]
        await super().save_node_value(node_id, dv)

    def _get_table_name(self, node_id: ua.NodeId) -> str:
        return f"{node_id.NamespaceIndex}_{re.sub(r'[^A-Za-z0-9_.-]', '_', str(node_id.Identifier))}"


class UserManager:
    """Logins the simulator accepts: a user list, or anyone when there is none."""

    def __init__(self, users: dict[str, str] | None) -> None:
        self._users = users

    def get_user(
        self,
        iserver: InternalServer,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        # asyncua passes the channel's certificate along with every token, so ``certificate``
        # does not tell an X.509 login from an anonymous one. Anonymous tokens are refused
        # before this point once there is a user list (see ``set_identity_tokens``), and an
        # X.509 token's signature is checked before it, so: check names, accept the rest.
        if username is None:
            return User(role=UserRole.User, name="x509" if certificate is not None else None)
        if self._users is None:
            return User(role=UserRole.User, name=username)
        expected = self._users.get(username)
        given = (password or "").encode()
        if expected is not None and hmac.compare_digest(expected.encode(), given):
            return User(role=UserRole.User, name=username)
        return None


class ServerFaults:
    """Fault hooks on a running asyncua server (instance-level wrappers, nothing global)."""

    def __init__(self, server: Server, max_items_per_call: int, transfer: TransferMode = "complete") -> None:
        if transfer not in TRANSFER_MODES:
            raise ValueError(f"transfer must be one of {', '.join(TRANSFER_MODES)}, got {transfer!r}")
        self._server = server
        self._frozen_until = 0.0
        self._loop = asyncio.get_running_loop()
        self.item_call_sizes: list[int] = []  # items asked for per CreateMonitoredItems call
        service = server.iserver.subscription_service
        create_items = service.create_monitored_items
        create_sub = service.create_subscription

        async def limited_create_items(params: ua.CreateMonitoredItemsParameters) -> Any:
            # asyncua publishes MaxMonitoredItemsPerCall but does not enforce it; we do, so a
            # client that ignores the limit is caught.
            self.item_call_sizes.append(len(params.ItemsToCreate))
            if len(params.ItemsToCreate) > max_items_per_call:
                raise ServiceError(StatusCodes.BadTooManyOperations)
            return await create_items(params)

        async def freezable_create_sub(*args: Any, **kwargs: Any) -> Any:
            result = await create_sub(*args, **kwargs)
            sub = service.subscriptions.get(result.SubscriptionId)
            if sub is not None:
                self._make_freezable(sub)
            return result

        stock_transfer = service.transfer_subscriptions

        async def complete_transfer(
            params: ua.TransferSubscriptionsParameters, session_id: ua.NodeId, callback: Any
        ) -> list[ua.TransferResult]:
            # asyncua 2.1 re-binds only where a transferred subscription sends its responses,
            # not where it takes PublishRequests from (still the old connection), so it never
            # publishes again. Bind both, as the spec means it.
            results = await stock_transfer(params, session_id, callback)
            processor = getattr(callback, "__self__", None)
            for sub_id, res in zip(params.SubscriptionIds, results, strict=True):
                sub = service.subscriptions.get(int(sub_id))
                if res.StatusCode.is_good() and sub is not None and processor is not None:
                    sub.pub_request_callback = processor.get_publish_request
            return results

        async def unsupported_transfer(
            params: ua.TransferSubscriptionsParameters, session_id: ua.NodeId, callback: Any
        ) -> list[ua.TransferResult]:
            # A server without the service: the processor turns this into a ServiceFault.
            raise ServiceError(StatusCodes.BadServiceUnsupported)

        service.create_monitored_items = limited_create_items  # type: ignore[method-assign]
        service.create_subscription = freezable_create_sub  # type: ignore[method-assign]
        if transfer == "complete":
            service.transfer_subscriptions = complete_transfer  # type: ignore[method-assign]
        elif transfer == "unsupported":
            service.transfer_subscriptions = unsupported_transfer  # type: ignore[method-assign]
        # "stock": asyncua's own transfer_subscriptions stays.

    def _make_freezable(self, sub: InternalSubscription) -> None:
        publish = sub.publish_results

        async def publish_results(requestdata: Any = None) -> bool:
            # While frozen a client-facing subscription publishes nothing, not even keep-alives,
            # and its publish cycle count stands still (so it does not expire meanwhile).
            if sub.pub_request_callback is not None and self._loop.time() < self._frozen_until:
                return False
            return await publish(requestdata)

        sub.publish_results = publish_results  # type: ignore[method-assign]

    @property
    def frozen(self) -> bool:
        return self._loop.time() < self._frozen_until

    def freeze(self, seconds: float) -> None:
        self._frozen_until = max(self._frozen_until, self._loop.time() + seconds)

    def drop_connections(self) -> int:
        transports = list(self._server.iserver.asyncio_transports)
        for transport in transports:
            transport.abort()
        return len(transports)

    def close(self) -> None:
        self._frozen_until = 0.0


_BROWSE_TYPES = (
    (ua.VariantType.Double, 0.0),
    (ua.VariantType.Int32, 0),
    (ua.VariantType.Boolean, False),
    (ua.VariantType.String, ""),
)


BROWSE_GROUP = 100


async def add_browse_nodes(server: Server, ns: int, count: int, max_nodes_per_browse: int = 0) -> None:
    """``count`` static variables for browsing and discovery (never published), in folders of
    ``BROWSE_GROUP``: ``Objects/Extra/G001/X00001`` (node id ``ns=<ns>;s=Extra.X00001``) ...; of
    Double, Int32, Boolean and String in turn, every other one writable. Folders, because
    asyncua's AddNodes scans every reference of the parent for each node added: one flat folder
    of 5,000 took over a minute. ``max_nodes_per_browse`` > 0 is published as the server's
    OperationLimits/MaxNodesPerBrowse (what a client must respect; asyncua does not enforce it)."""
    if max_nodes_per_browse > 0:
        await server.write_attribute_value(
            ua.NodeId(ua.Int32(ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerBrowse)),
            ua.DataValue(ua.Variant(max_nodes_per_browse, ua.VariantType.UInt32)),
        )
    if count <= 0:
        return
    extra = await server.nodes.objects.add_folder(ua.NodeId(ua.String("Extra"), ua.Int16(ns)), "Extra")
    session: Any = server.nodes.objects.session
    items = []
    folder: Any = None
    for i in range(1, count + 1):
        if (i - 1) % BROWSE_GROUP == 0:
            group = f"G{(i - 1) // BROWSE_GROUP + 1:03d}"
            folder = await extra.add_folder(ua.NodeId(ua.String(f"Extra.{group}"), ua.Int16(ns)), group)
        vtype, value = _BROWSE_TYPES[i % len(_BROWSE_TYPES)]
        name = f"X{i:05d}"
        attrs = ua.VariableAttributes(
            DisplayName=ua.LocalizedText(name),
            Description=ua.LocalizedText(name),
            DataType=ua.NodeId(ua.Int32(vtype.value)),  # built-in type ids equal their VariantType
            Value=ua.Variant(value, vtype),
            ValueRank=ua.ValueRank.Scalar,
            AccessLevel=ua.AccessLevel.CurrentRead.mask | (ua.AccessLevel.CurrentWrite.mask if i % 2 else 0),
        )
        attrs.UserAccessLevel = attrs.AccessLevel
        items.append(
            ua.AddNodesItem(
                ParentNodeId=folder.nodeid,
                ReferenceTypeId=ua.NodeId(ua.Int32(ObjectIds.HasComponent)),
                RequestedNewNodeId=ua.NodeId(ua.String(f"Extra.{name}"), ua.Int16(ns)),
                BrowseName=ua.QualifiedName(name, ns),
                NodeClass=ua.NodeClass.Variable,
                NodeAttributes=attrs,
                TypeDefinition=ua.NodeId(ua.Int32(ObjectIds.BaseDataVariableType)),
            )
        )
    for start in range(0, len(items), 1000):
        for res in await session.add_nodes(items[start : start + 1000]):
            res.StatusCode.check()


async def setup_security(
    server: Server,
    endpoints: Sequence[tuple[SecurityMode, SecurityPolicy]],
    *,
    anonymous: bool,
    pki_dir: Path,
    application_uri: str,
) -> None:
    """The (mode, policy) endpoints offered, the identity tokens taken (anonymous unless a user
    list is given), and, for any secure endpoint, the simulator's own certificate from
    ``pki_dir`` (made on first use)."""
    from ingest.device.opcua_security import PkiStore, server_policy_type

    server.set_security_policy([server_policy_type(m, p) for m, p in endpoints])
    tokens: list[type] = [ua.UserNameIdentityToken, ua.X509IdentityToken]
    if anonymous:
        tokens.insert(0, ua.AnonymousIdentityToken)
    server.set_identity_tokens(tokens)
    if any(m is not SecurityMode.NONE for m, _ in endpoints):
        own = await asyncio.to_thread(PkiStore(pki_dir).own_certificate, application_uri, server=True)
        await server.load_certificate(str(own.cert_path))
        await server.load_private_key(own.key_path)


async def setup_history(server: Server, node_ids: Sequence[ua.NodeId], history_db: Path | None) -> Any:
    """History storage for the nodes (SQLite at ``history_db``, else in memory), returned for the
    write path to save into: values go there from the simulator's writes themselves, not through
    asyncua's historizing subscription, which saves with fire-and-forget tasks, so the last
    values before a stop could be missing from history."""
    storage: Any = SQLiteHistory(str(history_db)) if history_db is not None else HistoryDict()
    server.iserver.history_manager.set_storage(storage)
    await storage.init()
    for nid in node_ids:
        node = server.get_node(nid)
        await node.write_attribute(
            AttributeIds.Historizing, ua.DataValue(ua.Variant(True, ua.VariantType.Boolean))
        )
        await node.set_attr_bit(AttributeIds.AccessLevel, ua.AccessLevel.HistoryRead)
        await node.set_attr_bit(AttributeIds.UserAccessLevel, ua.AccessLevel.HistoryRead)
        await storage.new_historized_node(nid, None, 0)
    return storage


def check_settings(
    port: int, interval_ms: int, name: str, max_items_per_call: int, transfer: str, session_timeout_ms: int | None
) -> None:
    """The simulator's settings, refused with a ValueError naming the one that is wrong."""
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be 0..65535, got {port}")
    if interval_ms < 1:
        raise ValueError(f"interval_ms must be >= 1, got {interval_ms}")
    if not name or "/" in name:
        raise ValueError(f"name must be a non-empty path segment, got {name!r}")
    if max_items_per_call < 1:
        raise ValueError(f"max_items_per_call must be >= 1, got {max_items_per_call}")
    if transfer not in TRANSFER_MODES:
        raise ValueError(f"transfer must be one of {', '.join(TRANSFER_MODES)}, got {transfer!r}")
    if session_timeout_ms is not None and (
        isinstance(session_timeout_ms, bool) or not isinstance(session_timeout_ms, int) or session_timeout_ms < 1
    ):
        raise ValueError(
            f"session_timeout_ms must be a positive whole number of ms or None, got {session_timeout_ms!r}"
        )
