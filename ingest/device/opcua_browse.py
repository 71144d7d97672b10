"""Browsing an OPC UA server's address space: one node's children a page at a time, and the
variables under a node whose browse path matches a pattern (discovery).

Each call opens its own short session with the connection's endpoint and security (the same
``configure_client`` as the streaming session: trust list, user identity) and closes it. The
server's operation limits are read first and respected: Browse and Read calls carry at most
MaxNodesPerBrowse / MaxNodesPerRead nodes, and continuation points (a server that returns a
node's references in parts) are followed with BrowseNext, at most MaxBrowseContinuationPoints
at a time. asyncua errors are translated here (``translate_error``): an unreachable server is
``DeviceUnreachable``, an unknown node ``InvalidDeviceSetting("node", ...)``.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIdNames, ObjectIds
from asyncua.ua.uaerrors import UaStatusCodeError

from ingest.core.errors import DeviceProtocolError, IngestError, InvalidDeviceSetting
from ingest.device import opcua_service as svc
from ingest.device.opcua import parse_node_id
from ingest.device.opcua_security import DEFAULT_PKI_DIR, OpcUaSecurity, PkiStore, configure_client

__all__ = ["BrowsePage", "BrowsedNode", "Discovery", "browse_children", "discover_variables", "tag_data_type"]

REQUEST_TIMEOUT_S = 10.0
_CAP_PER_CALL = 1000  # what we send per call whatever the server allows
_CAP_CONTINUATION_POINTS = 100
_HAS_PROPERTY = ua.NodeId(ua.Int32(ObjectIds.HasProperty))
_ACCESS = (("read", 0x01), ("write", 0x02), ("history_read", 0x04), ("history_write", 0x08))
# Built-in data types (by name) -> the data_type a tag registers with; others cannot be a tag.
_TAG_TYPES = {
    "Double": "Double",
    "Float": "Float",
    "Boolean": "Boolean",
    "String": "String",
    **{n: "Int" for n in ("SByte", "Byte", "Int16", "UInt16", "Int32", "UInt32", "Int64", "UInt64")},
}


@dataclass(frozen=True)
class BrowsedNode:
    node_id: str
    browse_name: str
    display_name: str
    node_class: str
    data_type: str | None = None  # variables: the DataType's name (or node id)
    access_level: tuple[str, ...] | None = None  # variables: read, write, history_read, ...


@dataclass(frozen=True)
class BrowsePage:
    node: str
    total: int
    offset: int
    children: list[BrowsedNode]


@dataclass
class Discovery:
    """Variables found under a root whose browse path (relative to it, ``/``-joined browse
    names) matches the pattern, and what the walk cost."""

    variables: list[tuple[str, BrowsedNode]] = field(default_factory=list)  # (path, node)
    nodes_browsed: int = 0
    browse_calls: int = 0
    read_calls: int = 0
    truncated: bool = False
    limits: dict[str, int] = field(default_factory=dict)


def tag_data_type(data_type: str | None) -> str | None:
    """The tag data_type of a variable's DataType (as ``BrowsedNode.data_type`` names it)."""
    return _TAG_TYPES.get(data_type or "")


# -- one short session -------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def _session(
    endpoint: str, security: OpcUaSecurity | None, pki_dir: Path, timeout_s: float
) -> AsyncIterator[Client]:
    client = Client(endpoint, timeout=timeout_s)
    security = security or OpcUaSecurity()
    try:
        await configure_client(client, security, PkiStore(pki_dir), endpoint)
        if security.username is not None:
            client.set_user(security.username)
            client.set_password(security.password or "")
        await client.connect()
    except Exception as exc:
        with contextlib.suppress(Exception):
            await client.disconnect()
        if isinstance(exc, UaStatusCodeError) and exc.code in svc.IDENTITY_CODES:
            who = f"user {security.username!r}" if security.username else "anonymous"
            raise DeviceProtocolError(f"{endpoint}: server refused the identity ({who}): {exc}") from exc
        raise svc.translate_error(exc) from exc
    try:
        yield client
    except IngestError:
        raise
    except Exception as exc:
        raise svc.translate_error(exc) from exc
    finally:
        with contextlib.suppress(Exception):
            await client.disconnect()


@dataclass
class _Limits:
    per_browse: int
    per_read: int
    continuation_points: int

    @classmethod
    async def read(cls, client: Client) -> _Limits:
        ids = ObjectIds
        return cls(
            await svc.operation_limit(
                client, ids.Server_ServerCapabilities_OperationLimits_MaxNodesPerBrowse, _CAP_PER_CALL
            ),
            await svc.operation_limit(
                client, ids.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead, _CAP_PER_CALL
            ),
            await svc.operation_limit(
                client, ids.Server_ServerCapabilities_MaxBrowseContinuationPoints, _CAP_CONTINUATION_POINTS
            ),
        )


def _describe(node_id: ua.NodeId) -> ua.BrowseDescription:
    return ua.BrowseDescription(
        NodeId=node_id,
        BrowseDirection=ua.BrowseDirection.Forward,
        ReferenceTypeId=ua.NodeId(ua.Int32(ObjectIds.HierarchicalReferences)),
        IncludeSubtypes=True,
        NodeClassMask=0,  # every class
        ResultMask=ua.BrowseResultMask.All,
    )


async def _browse(
    client: Client, node_ids: Sequence[ua.NodeId], limits: _Limits, stats: Discovery
) -> list[list[ua.ReferenceDescription] | None]:
    """Forward hierarchical references of each node (None: the server refused that node)."""
    out: list[list[ua.ReferenceDescription] | None] = [[] for _ in node_ids]
    for start in range(0, len(node_ids), limits.per_browse):
        chunk = node_ids[start : start + limits.per_browse]
        stats.browse_calls += 1
        results = await client.uaclient.browse(
            ua.BrowseParameters(RequestedMaxReferencesPerNode=0, NodesToBrowse=[_describe(n) for n in chunk])
        )
        pending: list[tuple[int, bytes]] = []
        for i, res in enumerate(results):
            pending += _take(out, start + i, res)
        while pending:
            batch, pending = pending[: limits.continuation_points], pending[limits.continuation_points :]
            stats.browse_calls += 1
            more = await client.uaclient.browse_next(
                ua.BrowseNextParameters(
                    ReleaseContinuationPoints=False, ContinuationPoints=[cp for _, cp in batch]
                )
            )
            for (index, _), res in zip(batch, more, strict=True):
                pending += _take(out, index, res)
    return out


def _take(
    out: list[list[ua.ReferenceDescription] | None], index: int, res: ua.BrowseResult
) -> list[tuple[int, bytes]]:
    if not res.StatusCode.is_good():
        out[index] = None
        return []
    refs = out[index]
    if refs is not None:
        refs.extend(res.References)
    return [(index, res.ContinuationPoint)] if res.ContinuationPoint else []


async def _variable_attributes(
    client: Client, node_ids: Sequence[ua.NodeId], limits: _Limits, stats: Discovery
) -> list[tuple[object, object]]:
    """(DataType, AccessLevel) of each variable, read in calls of at most MaxNodesPerRead / 2."""
    out: list[tuple[object, object]] = []
    per_call = max(1, limits.per_read // 2)
    for start in range(0, len(node_ids), per_call):
        chunk = list(node_ids[start : start + per_call])
        stats.read_calls += 1
        params = ua.ReadParameters(
            NodesToRead=[
                ua.ReadValueId(NodeId=n, AttributeId=a)
                for n in chunk
                for a in (AttributeIds.DataType, AttributeIds.AccessLevel)
            ],
            TimestampsToReturn=ua.TimestampsToReturn.Neither,
        )
        values = await client.uaclient.read(params)
        for k in range(len(chunk)):
            dtype, access = values[2 * k], values[2 * k + 1]
            out.append((_good_value(dtype), _good_value(access)))
    return out


def _good_value(dv: ua.DataValue) -> object:
    if dv.StatusCode is not None and not dv.StatusCode.is_good():
        return None
    return dv.Value.Value if dv.Value is not None else None


def _node(ref: ua.ReferenceDescription, dtype: object = None, access: object = None) -> BrowsedNode:
    type_name = None
    if isinstance(dtype, ua.NodeId):
        ident = dtype.Identifier
        known = ObjectIdNames.get(ident) if dtype.NamespaceIndex == 0 and isinstance(ident, int) else None
        type_name = known if isinstance(known, str) else dtype.to_string()
    levels = tuple(name for name, bit in _ACCESS if access & bit) if isinstance(access, int) else None
    return BrowsedNode(
        node_id=ref.NodeId.to_string(),
        browse_name=ref.BrowseName.Name or "",
        display_name=ref.DisplayName.Text or "",
        node_class=ref.NodeClass.name,
        data_type=type_name,
        access_level=levels,
    )


async def _decorate(
    client: Client, refs: Sequence[ua.ReferenceDescription], limits: _Limits, stats: Discovery
) -> list[BrowsedNode]:
    variables = [i for i, r in enumerate(refs) if r.NodeClass == ua.NodeClass.Variable]
    attrs = await _variable_attributes(client, [refs[i].NodeId for i in variables], limits, stats)
    by_index = dict(zip(variables, attrs, strict=True))
    return [_node(r, *by_index.get(i, (None, None))) for i, r in enumerate(refs)]


# -- the two calls -----------------------------------------------------------------------------
def _root(node: str) -> ua.NodeId:
    try:
        return parse_node_id(node)
    except InvalidDeviceSetting as e:
        raise InvalidDeviceSetting("node", e.reason) from None


async def browse_children(
    endpoint: str,
    security: OpcUaSecurity | None,
    node: str,
    offset: int,
    limit: int,
    *,
    pki_dir: Path = DEFAULT_PKI_DIR,
    timeout_s: float = REQUEST_TIMEOUT_S,
) -> BrowsePage:
    """The children of ``node`` (forward hierarchical references) from ``offset``, at most
    ``limit``; data type and access level are read for the variables of this page only."""
    root = _root(node)
    stats = Discovery()
    async with _session(endpoint, security, pki_dir, timeout_s) as client:
        limits = await _Limits.read(client)
        (refs,) = await _browse(client, [root], limits, stats)
        if refs is None:
            raise InvalidDeviceSetting("node", f"the server has no node {node!r}")
        page = refs[offset : offset + limit]
        children = await _decorate(client, page, limits, stats)
    return BrowsePage(node=root.to_string(), total=len(refs), offset=offset, children=children)


def _pattern(glob: str) -> re.Pattern[str]:
    """A browse-path glob: ``*`` and ``?`` stay within one path segment, ``**`` crosses them,
    ``[...]`` is a character class (``[!...]`` negated)."""
    parts = []
    for token in re.split(r"(\*\*|\*|\?|\[!?[^\]/]+\])", glob):
        if token == "**":
            parts.append(".*")
        elif token == "*":
            parts.append("[^/]*")
        elif token == "?":
            parts.append("[^/]")
        elif token.startswith("[") and token.endswith("]") and len(token) > 2:
            body = token[1:-1]
            body = "^" + body[1:] if body.startswith("!") else body
            parts.append("[" + body.replace("\\", "\\\\") + "]")
        else:
            parts.append(re.escape(token))
    try:
        return re.compile("".join(parts) + r"\Z")
    except re.error as e:
        raise InvalidDeviceSetting("pattern", f"not a browse-path pattern: {e}") from None


async def discover_variables(
    endpoint: str,
    security: OpcUaSecurity | None,
    root_node: str,
    pattern: str,
    *,
    max_nodes: int = 100_000,
    max_depth: int = 16,
    pki_dir: Path = DEFAULT_PKI_DIR,
    timeout_s: float = REQUEST_TIMEOUT_S,
) -> Discovery:
    """Walk the hierarchy under ``root_node`` breadth first, level by level (one batched Browse
    per level), and keep the variables whose browse path matches ``pattern`` (a glob, see
    ``_pattern``). Properties (HasProperty: EURange, EngineeringUnits...) are not variables to
    read, and variables are not descended into. At most ``max_nodes`` nodes are visited."""
    root = _root(root_node)
    match = _pattern(pattern)
    found = Discovery()
    seen = {root.to_string()}
    async with _session(endpoint, security, pki_dir, timeout_s) as client:
        limits = await _Limits.read(client)
        found.limits = {
            "max_nodes_per_browse": limits.per_browse,
            "max_nodes_per_read": limits.per_read,
            "max_browse_continuation_points": limits.continuation_points,
        }
        level: list[tuple[str, ua.NodeId]] = [("", root)]
        matched: list[tuple[str, ua.ReferenceDescription]] = []
        for _ in range(max_depth):
            if not level:
                break
            results = await _browse(client, [n for _, n in level], limits, found)
            if results[0] is None and level[0][1] == root:
                raise InvalidDeviceSetting("node", f"the server has no node {root_node!r}")
            found.nodes_browsed += len(level)
            next_level: list[tuple[str, ua.NodeId]] = []
            for (path, _), refs in zip(level, results, strict=True):
                for ref in refs or []:
                    key = ref.NodeId.to_string()
                    if key in seen or ref.ReferenceTypeId == _HAS_PROPERTY:
                        continue
                    seen.add(key)
                    child = f"{path}/{ref.BrowseName.Name}" if path else str(ref.BrowseName.Name)
                    if ref.NodeClass == ua.NodeClass.Variable:
                        if match.match(child):
                            matched.append((child, ref))
                    elif ref.NodeClass in (ua.NodeClass.Object, ua.NodeClass.View):
                        next_level.append((child, ref.NodeId))
            if len(seen) > max_nodes:
                found.truncated = True
                break
            level = next_level
        else:
            found.truncated = bool(level)
        nodes = await _decorate(client, [r for _, r in matched], limits, found)
    found.variables = [(path, n) for (path, _), n in zip(matched, nodes, strict=True)]
    return found
