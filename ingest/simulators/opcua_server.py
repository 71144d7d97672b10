"""The simulated well field served over OPC UA (asyncua's server).

Values are written server-side (``Server.write_attribute_value``) with SourceTimestamp =
ServerTimestamp = now (UTC) and status Good; which tags and values: ``well_field``.

What asyncua 2.1's server does with the values between two publish responses (read in
``asyncua/server/monitored_item_service.py`` and ``internal_subscription.py``), which is what zero
loss rests on:
- every write calls each monitored item's ``datachange_callback``; it passes the item's trigger
  filter and ``enqueue_datachange_event`` appends it to a per-item list, dropping the *oldest*
  entry only once the revised queue size (``min(requested, 10 000)``) is full;
- the subscription loop publishes every publishing interval; without an outstanding
  PublishRequest the queue keeps growing until one arrives, and then *all* queued notifications
  go out in a single message;
- a sent NotificationMessage stays in a retransmission queue until acknowledged (Republish
  takes it out again), and a session whose socket dies is kept, with its subscriptions, until
  its session timeout, so a client can re-activate it on a new connection (Part 4 6.7).
  TransferSubscriptions in asyncua 2.1 re-binds only the response side of a subscription, so a
  transferred subscription never publishes again; the simulator completes the re-binding
  (``opcua_server_hooks``) unless ``transfer`` asks for asyncua's own (``"stock"``) or for no
  TransferSubscriptions at all (``"unsupported"``);
- a session whose client stopped talking is closed after its revised session timeout (asyncua's
  ``InternalSession._timeout_loop``, counting from the last request on any connection) and its
  subscriptions are deleted with it (``close_session(delete_subs=True)``). ``session_timeout_ms``
  caps that timeout, so an abandoned session goes away within seconds instead of asyncua's
  10-minute maximum.

Security: ``security`` lists the (mode, policy) endpoints offered (default None/None only); a
secure endpoint uses the simulator's own certificate, made on first use in ``pki_dir``. Every
client certificate is accepted. ``users`` (name -> password) turns anonymous logins off.

Faults for tests: ``drop_sessions()`` cuts every client connection (sessions and subscriptions
stay), ``freeze(seconds)`` stops answering PublishRequests, ``stop()`` + a new simulator with
``start_counts`` is a restart. ``historize`` keeps every written value in asyncua's history
storage (in memory, or in SQLite at ``history_db`` so it survives a restart).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from datetime import UTC
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.server.server import Server
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes

from ingest.core.models import SecurityMode, SecurityPolicy
from ingest.core.net import free_port
from ingest.simulators.opcua_server_hooks import (
    TRANSFER_MODES,
    ServerFaults,
    TransferMode,
    UserManager,
    add_browse_nodes,
    check_settings,
    setup_history,
    setup_security,
)
from ingest.simulators.well_field import SimulatorMode, WellField

__all__ = ["NAMESPACE_URI", "TRANSFER_MODES", "OpcUaSimulator", "SecuritySpec", "TransferMode", "free_port"]

NAMESPACE_URI = "urn:scada-ingest:sim"
SERVER_APPLICATION_URI = "urn:scada-ingest:simulator"
DEFAULT_SIM_PKI_DIR = Path(__file__).resolve().parents[2] / ".local" / "pki-sim"

SecuritySpec = tuple[SecurityMode, SecurityPolicy]

_GOOD = ua.StatusCode(ua.UInt32(StatusCodes.Good))


class OpcUaSimulator:
    """A simulated well field served over OPC UA."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 4840,
        wells: int = 2,
        tags_per_well: int = 5,
        interval_ms: int = 100,
        mode: SimulatorMode = "counting",
        name: str = "scada-sim",
        *,
        paused: bool = False,
        seed: int = 0,
        security: Sequence[SecuritySpec] | None = None,
        pki_dir: Path | None = None,
        users: dict[str, str] | None = None,
        string_tags: bool = False,
        historize: bool = False,
        history_db: Path | None = None,
        start_counts: dict[str, int] | None = None,
        max_items_per_call: int = 1000,
        slow_every: int = 1,
        slow_fraction: float = 0.0,
        extra_nodes: int = 0,
        max_nodes_per_browse: int = 0,
        transfer: TransferMode = "complete",
        session_timeout_ms: int | None = None,
    ) -> None:
        """``paused=True`` starts the server without publishing until ``resume()``.

        ``security``: the (mode, policy) endpoints to offer; None offers only None/None. Any
        secure endpoint makes the simulator use (and on first use create) its certificate in
        ``pki_dir`` (default ``<repo>/.local/pki-sim``). It accepts every client certificate.
        ``users``: username -> password; when given, anonymous logins are refused. X.509 user
        certificates are accepted when their signature checks out.
        ``max_items_per_call``: the server's MaxMonitoredItemsPerCall, enforced (a larger
        CreateMonitoredItems call is answered BadTooManyOperations).
        ``slow_fraction`` of each well's tags form the slow class: they publish only every
        ``slow_every``-th tick (tank levels beside fast pressures); counting stays exact per tag.
        ``extra_nodes`` static variables under Objects/Extra, for browsing (never published), and
        ``max_nodes_per_browse`` its OperationLimits value (0: none stated).
        ``transfer``: what TransferSubscriptions does. ``"complete"`` (default) moves a
        subscription to the calling session whole, so it publishes there; ``"stock"`` leaves
        asyncua 2.1 as it is: the transfer answers Good but the subscription never publishes to
        the new session; ``"unsupported"`` answers BadServiceUnsupported, like a server without
        the service.
        ``session_timeout_ms``: the longest session timeout granted (None: asyncua's own limits,
        5 s .. 10 min). A client asking for more gets this, so the session of a client that went
        away, and the subscriptions it owns, are deleted this long after its last request.
        """
        check_settings(port, interval_ms, name, max_items_per_call, transfer, session_timeout_ms)
        self.host = host
        self.port = port
        self.wells = wells
        self.tags_per_well = tags_per_well
        self.interval_ms = interval_ms
        self.mode: SimulatorMode = mode
        self.name = name
        self.security: list[SecuritySpec] = [
            (SecurityMode(m), SecurityPolicy(p))
            for m, p in (security or [(SecurityMode.NONE, SecurityPolicy.NONE)])
        ]
        self.pki_dir = pki_dir or DEFAULT_SIM_PKI_DIR
        self._users = dict(users) if users is not None else None
        self.historize = historize or history_db is not None
        self.history_db = history_db
        self.max_items_per_call = max_items_per_call
        self.transfer: TransferMode = transfer
        self.session_timeout_ms = session_timeout_ms
        self.extra_nodes, self.max_nodes_per_browse = extra_nodes, max_nodes_per_browse
        self._field = WellField(
            wells,
            tags_per_well,
            mode,
            string_tags=string_tags,
            seed=seed,
            start_counts=start_counts,
            slow_every=slow_every,
            slow_fraction=slow_fraction,
        )
        self.slow_every = slow_every
        self._server: Server | None = None
        self._ns = 0
        self._ua_ids: list[ua.NodeId] = []
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self._running = asyncio.Event()
        if not paused:
            self._running.set()
        self._tick_lock = asyncio.Lock()
        self._t0 = 0.0
        self._faults: ServerFaults | None = None
        self._history: Any = None

    # --- public surface ---------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://{self.host}:{self.port}/{self.name}/"

    @property
    def total_published(self) -> int:
        return sum(self._field.counts)

    @property
    def namespace_index(self) -> int:
        return self._ns

    @property
    def certificate_path(self) -> Path:
        """The server certificate (DER); exists once a secure simulator has started."""
        return self.pki_dir / "own" / "cert.der"

    def published_per_node(self) -> dict[str, int]:
        """Values written so far, keyed by full node id (``ns=2;s=W001.T001``).

        With ``start_counts`` this is the count reached, including the earlier run's values.
        """
        return dict(zip(self.node_ids(), self._field.counts, strict=True))

    def node_ids(self) -> list[str]:
        """Full string node ids in the namespace index the server actually registered."""
        if not self._ua_ids:
            raise RuntimeError("node ids are known once the simulator has started")
        return [f"ns={self._ns};s={n}" for n in self._field.names]

    def text_node_ids(self) -> list[str]:
        return [n for n, t in zip(self.node_ids(), self._field.is_text, strict=True) if t]

    async def start(self) -> None:
        if self._server is not None or self._stopped:
            raise RuntimeError("a simulator starts once; make a new one to restart")
        if self.port == 0:
            self.port = free_port(self.host)
        server = Server(user_manager=UserManager(self._users))  # type: ignore[arg-type]
        await server.init()
        if self.session_timeout_ms is not None:
            iserver = server.iserver
            iserver.max_session_timeout_ms = float(self.session_timeout_ms)
            iserver.min_session_timeout_ms = min(iserver.min_session_timeout_ms, float(self.session_timeout_ms))
        server.set_endpoint(self.endpoint)
        server.set_server_name(self.name)
        await server.set_application_uri(SERVER_APPLICATION_URI)
        await setup_security(
            server,
            self.security,
            anonymous=self._users is None,
            pki_dir=self.pki_dir,
            application_uri=SERVER_APPLICATION_URI,
        )
        self._ns = await server.register_namespace(NAMESPACE_URI)
        await server.write_attribute_value(
            ua.NodeId(ua.Int32(ObjectIds.Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall)),
            ua.DataValue(ua.Variant(self.max_items_per_call, ua.VariantType.UInt32)),
        )
        self._ua_ids = []
        objects = server.nodes.objects
        wells: dict[str, Any] = {}
        for name, is_text in zip(self._field.names, self._field.is_text, strict=True):
            well_name, tag_name = name.split(".")
            if well_name not in wells:
                wells[well_name] = await objects.add_object(
                    ua.NodeId(ua.String(well_name), ua.Int16(self._ns)), well_name
                )
            nid = ua.NodeId(ua.String(name), ua.Int16(self._ns))
            vtype = ua.VariantType.String if is_text else ua.VariantType.Double
            await wells[well_name].add_variable(nid, tag_name, "" if is_text else 0.0, vtype)
            self._ua_ids.append(nid)
        await add_browse_nodes(server, self._ns, self.extra_nodes, self.max_nodes_per_browse)
        self._server = server
        if self.historize:
            self._history = await setup_history(server, self._ua_ids, self.history_db)
        # Initial values are not counted: 0.0 in counting mode, a first sample in realistic mode.
        field = self._field
        initial = field.neutral() if self.mode == "counting" else field.next_values(0.0)
        await self._write_all(initial)
        self._faults = ServerFaults(server, self.max_items_per_call, self.transfer)
        await server.start()
        self._t0 = asyncio.get_running_loop().time()
        self._task = asyncio.create_task(self._publish_loop(), name=f"opcua-sim-{self.port}")

    async def pause(self) -> None:
        """Stop publishing; when this returns no further value is written until ``resume()``."""
        self._running.clear()
        async with self._tick_lock:  # waits for a tick in progress
            pass

    async def resume(self) -> None:
        self._running.set()

    async def stop(self) -> None:
        """Stop publishing, then shut the server down (connected clients see the socket close)."""
        if self._stopped:
            return
        self._stopped = True
        await self.pause()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._faults is not None:
            self._faults.close()
        if self._server is not None:
            await self._server.stop()

    def drop_sessions(self) -> int:
        """Cut every client connection abruptly; sessions and subscriptions stay on the server.

        Returns how many connections were cut.
        """
        if self._faults is None:
            raise RuntimeError("the simulator is not running")
        return self._faults.drop_connections()

    def freeze(self, seconds: float) -> None:
        """For ``seconds``, answer no PublishRequest (not even with a keep-alive).

        Values keep being written and queue up per monitored item, as on a server whose
        publishing has stalled; other services still answer.
        """
        if self._faults is None:
            raise RuntimeError("the simulator is not running")
        self._faults.freeze(seconds)

    @property
    def item_call_sizes(self) -> list[int]:
        """How many items each CreateMonitoredItems call asked for, in order."""
        return list(self._faults.item_call_sizes) if self._faults is not None else []

    @property
    def frozen(self) -> bool:
        """True while ``freeze()`` holds publishing back."""
        return self._faults is not None and self._faults.frozen

    async def drain(self, timeout_s: float = 3.0) -> bool:
        """Wait until every subscriber has been sent, and has acknowledged, what was published.

        Call after ``pause()`` and before ``stop()`` so the last values queued for a client are
        not thrown away with the server. Returns False if ``timeout_s`` passed first (a client
        that went away leaves its queue behind until its session times out).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._has_undelivered():
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    def _has_undelivered(self) -> bool:
        if self._server is None:
            return False
        # asyncua keeps no public view of this: read the per-subscription queues (see the module
        # docstring) and treat a layout we do not recognise as "nothing pending".
        subs = getattr(self._server.iserver.subscription_service, "subscriptions", {})
        return any(
            getattr(sub, "_triggered_datachanges", None) or getattr(sub, "_not_acknowledged_results", None)
            for sub in list(subs.values())
        )

    def summary(self) -> dict[str, object]:
        return {
            "published": self.total_published,
            "per_node": self.published_per_node(),
            "endpoint": self.endpoint,
        }

    # --- publishing ---------------------------------------------------------------------------

    async def _publish_loop(self) -> None:
        loop = asyncio.get_running_loop()
        period = self.interval_ms / 1000.0
        next_at = loop.time()
        while True:
            if not self._running.is_set():
                await self._running.wait()
                next_at = loop.time()
            async with self._tick_lock:
                if self._running.is_set():
                    await self._tick(loop.time())
            next_at += period
            delay = next_at - loop.time()
            if delay < -period:
                # Fell behind by more than a tick (server saturated): carry on from now instead of
                # bursting to catch up; every write is still counted, the rate is just lower.
                next_at = loop.time()
                delay = 0.0
            await asyncio.sleep(max(delay, 0.0))

    async def _tick(self, now_s: float) -> None:
        due = self._field.due()
        await self._write_all(self._field.next_values(now_s - self._t0), count=True, due=due)

    async def _write_all(
        self, values: list[float | str], *, count: bool = False, due: list[bool] | None = None
    ) -> None:
        assert self._server is not None
        ts = ua.DateTime.now(UTC)  # the asyncua subtype, so the types line up
        write = self._server.write_attribute_value
        history = self._history if self.historize else None
        counts, is_text = self._field.counts, self._field.is_text
        for i, nid in enumerate(self._ua_ids):
            if due is not None and not due[i]:
                continue
            v = values[i]
            variant = ua.Variant(v, ua.VariantType.String if is_text[i] else ua.VariantType.Double)
            dv = ua.DataValue(Value=variant, StatusCode=_GOOD, SourceTimestamp=ts, ServerTimestamp=ts)
            await write(nid, dv)
            if history is not None:
                await history.save_node_value(nid, dv)
            if count:
                counts[i] += 1
