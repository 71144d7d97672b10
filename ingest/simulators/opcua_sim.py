"""An OPC UA server that plays a field of wells, for tests, demos and capacity runs.

Address space: one object per well (``W001`` .. ``Wnnn``) under Objects, each holding Double
variables ``T001`` .. ``Tmmm`` whose string node ids are ``W001.T001`` in the namespace
``urn:scada-ingest:sim``; with ``string_tags`` each well also has a String variable ``W001.S001``.

Two modes:
- ``counting``: on every tick each tag is written with its next integer (1.0, 2.0, 3.0, ...; a
  string tag ``"v1"``, ``"v2"``, ...), so a tag whose count is N has published exactly 1..N. A
  client that received anything else lost or duplicated data. Before the first tick every tag
  holds 0.0 (``"v0"``), Good: the snapshot a new monitored item reports first is then never
  mistaken for a count. ``start_counts`` continues counting where a previous run stopped (a
  restarted device), the neutral 0.0 snapshot included.
- ``realistic``: plausible oilfield signals (tubing and casing pressure, temperature, oil and gas
  rate) with a slow cycle and measurement noise; string tags cycle through pump states.

Values are written server-side (``Server.write_attribute_value``) with SourceTimestamp =
ServerTimestamp = now (UTC) and status Good.

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
  transferred subscription never publishes again; the simulator completes the re-binding.

Security: ``security`` lists the (mode, policy) endpoints offered (default None/None only); a
secure endpoint uses the simulator's own certificate, made on first use in ``pki_dir``. Every
client certificate is accepted. ``users`` (name -> password) turns anonymous logins off.

Faults for tests: ``drop_sessions()`` cuts every client connection (sessions and subscriptions
stay), ``freeze(seconds)`` stops answering PublishRequests, ``stop()`` + a new simulator with
``start_counts`` is a restart. ``historize`` keeps every written value in asyncua's history
storage (in memory, or in SQLite at ``history_db`` so it survives a restart).

Command line (``python -m ingest.simulators.opcua_sim --help``): prints ``NODES <json list>``,
then ``READY <endpoint>`` once it accepts connections. SIGUSR1 resumes and SIGUSR2 pauses
publishing (``--start-paused`` starts paused). On SIGTERM / SIGINT or after ``--duration`` it stops
publishing, writes the summary ``{"published", "per_node", "endpoint"}`` to ``--summary-file``
and as the last stdout line, drains (``--drain-s``), then shuts the server down.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import hmac
import json
import logging
import math
import re
import signal
import socket
import sys
from collections.abc import Coroutine, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
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

__all__ = ["NAMESPACE_URI", "OpcUaSimulator", "SimulatorMode", "main"]

NAMESPACE_URI = "urn:scada-ingest:sim"
SERVER_APPLICATION_URI = "urn:scada-ingest:simulator"
DEFAULT_SIM_PKI_DIR = Path(__file__).resolve().parents[2] / ".local" / "pki-sim"

SimulatorMode = Literal["counting", "realistic"]
SecuritySpec = tuple[SecurityMode, SecurityPolicy]

# (name, base, cycle amplitude, noise sigma, cycle period s); a well's tags cycle through them.
_SIGNALS: tuple[tuple[str, float, float, float, float], ...] = (
    ("tubing_pressure_psi", 850.0, 40.0, 3.0, 300.0),
    ("casing_pressure_psi", 1200.0, 25.0, 2.0, 600.0),
    ("wellhead_temperature_degF", 165.0, 4.0, 0.3, 900.0),
    ("oil_rate_bbl_d", 420.0, 30.0, 8.0, 120.0),
    ("gas_rate_mcf_d", 900.0, 60.0, 15.0, 180.0),
)
_PUMP_STATES = ("running", "running", "running", "idle", "starting")

_GOOD = ua.StatusCode(ua.UInt32(StatusCodes.Good))


def _bare_name(node: str) -> str:
    """``ns=2;s=W001.T001`` -> ``W001.T001`` (bare names pass through)."""
    return node.split(";s=", 1)[1] if ";s=" in node else node


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
        """
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be 0..65535, got {port}")
        if wells < 1:
            raise ValueError(f"wells must be >= 1, got {wells}")
        if tags_per_well < 1:
            raise ValueError(f"tags_per_well must be >= 1, got {tags_per_well}")
        if interval_ms < 1:
            raise ValueError(f"interval_ms must be >= 1, got {interval_ms}")
        if mode not in ("counting", "realistic"):
            raise ValueError(f"mode must be 'counting' or 'realistic', got {mode!r}")
        if not name or "/" in name:
            raise ValueError(f"name must be a non-empty path segment, got {name!r}")
        if max_items_per_call < 1:
            raise ValueError(f"max_items_per_call must be >= 1, got {max_items_per_call}")
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
        self._names: list[str] = []
        self._is_text: list[bool] = []
        for w in range(1, wells + 1):
            for t in range(1, tags_per_well + 1):
                self._names.append(f"W{w:03d}.T{t:03d}")
                self._is_text.append(False)
            if string_tags:
                self._names.append(f"W{w:03d}.S001")
                self._is_text.append(True)
        start = {_bare_name(k): int(v) for k, v in (start_counts or {}).items()}
        unknown = set(start) - set(self._names)
        if unknown:
            raise ValueError(f"start_counts for unknown nodes: {sorted(unknown)[:5]}")
        self._counts = [start.get(n, 0) for n in self._names]
        if slow_every < 1 or not 0.0 <= slow_fraction <= 1.0:
            raise ValueError("slow_every must be >= 1 and slow_fraction within 0..1")
        self.slow_every = slow_every
        slow_per_well = round(slow_fraction * tags_per_well)
        self._slow = [
            not text and int(n.rsplit(".T", 1)[-1]) > tags_per_well - slow_per_well
            for n, text in zip(self._names, self._is_text, strict=True)
        ] if slow_per_well and slow_every > 1 else [False] * len(self._names)
        self._ticks = 0
        self._server: Server | None = None
        self._ns = 0
        self._ua_ids: list[ua.NodeId] = []
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self._running = asyncio.Event()
        if not paused:
            self._running.set()
        self._tick_lock = asyncio.Lock()
        self._rng = np.random.default_rng(seed)
        self._signal_params = _signal_params(len(self._names), wells, self._rng)
        self._t0 = 0.0
        self._faults: _Faults | None = None
        self._history: Any = None

    # --- public surface ---------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://{self.host}:{self.port}/{self.name}/"

    @property
    def total_published(self) -> int:
        return sum(self._counts)

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
        return dict(zip(self.node_ids(), self._counts, strict=True))

    def node_ids(self) -> list[str]:
        """Full string node ids in the namespace index the server actually registered."""
        if not self._ua_ids:
            raise RuntimeError("node ids are known once the simulator has started")
        return [f"ns={self._ns};s={n}" for n in self._names]

    def text_node_ids(self) -> list[str]:
        return [n for n, t in zip(self.node_ids(), self._is_text, strict=True) if t]

    async def start(self) -> None:
        if self._server is not None or self._stopped:
            raise RuntimeError("a simulator starts once; make a new one to restart")
        if self.port == 0:
            self.port = _free_port(self.host)
        server = Server(user_manager=_UserManager(self._users))  # type: ignore[arg-type]
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name(self.name)
        await server.set_application_uri(SERVER_APPLICATION_URI)
        await self._setup_security(server)
        self._ns = await server.register_namespace(NAMESPACE_URI)
        await server.write_attribute_value(
            ua.NodeId(ua.Int32(ObjectIds.Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall)),
            ua.DataValue(ua.Variant(self.max_items_per_call, ua.VariantType.UInt32)),
        )
        self._ua_ids = []
        objects = server.nodes.objects
        wells: dict[str, Any] = {}
        for name, is_text in zip(self._names, self._is_text, strict=True):
            well_name, tag_name = name.split(".")
            if well_name not in wells:
                wells[well_name] = await objects.add_object(
                    ua.NodeId(ua.String(well_name), ua.Int16(self._ns)), well_name
                )
            nid = ua.NodeId(ua.String(name), ua.Int16(self._ns))
            vtype = ua.VariantType.String if is_text else ua.VariantType.Double
            await wells[well_name].add_variable(nid, tag_name, "" if is_text else 0.0, vtype)
            self._ua_ids.append(nid)
        self._server = server
        if self.historize:
            await self._setup_history(server)
        # Initial values are not counted: 0.0 in counting mode, a first sample in realistic mode.
        initial = self._neutral() if self.mode == "counting" else self._next_values(0.0)
        await self._write_all(initial)
        self._faults = _Faults(server, self.max_items_per_call)
        await server.start()
        self._t0 = asyncio.get_running_loop().time()
        self._task = asyncio.create_task(self._publish_loop(), name=f"opcua-sim-{self.port}")

    async def _setup_security(self, server: Server) -> None:
        from ingest.device.opcua_security import PkiStore, server_policy_type

        server.set_security_policy([server_policy_type(m, p) for m, p in self.security])
        tokens: list[type] = [ua.UserNameIdentityToken, ua.X509IdentityToken]
        if self._users is None:
            tokens.insert(0, ua.AnonymousIdentityToken)
        server.set_identity_tokens(tokens)
        if any(m is not SecurityMode.NONE for m, _ in self.security):
            own = await asyncio.to_thread(
                PkiStore(self.pki_dir).own_certificate, SERVER_APPLICATION_URI, server=True
            )
            await server.load_certificate(str(own.cert_path))
            await server.load_private_key(own.key_path)

    async def _setup_history(self, server: Server) -> None:
        if self.history_db is not None:
            storage: Any = _SQLiteHistory(str(self.history_db))
        else:
            storage = HistoryDict()
        server.iserver.history_manager.set_storage(storage)
        await storage.init()
        # Values go to the storage from the write path itself (see _write_all), not through
        # asyncua's historizing subscription: that one saves with fire-and-forget tasks, so the
        # last values before a stop could be missing from history.
        for nid in self._ua_ids:
            node = server.get_node(nid)
            await node.write_attribute(
                AttributeIds.Historizing, ua.DataValue(ua.Variant(True, ua.VariantType.Boolean))
            )
            await node.set_attr_bit(AttributeIds.AccessLevel, ua.AccessLevel.HistoryRead)
            await node.set_attr_bit(AttributeIds.UserAccessLevel, ua.AccessLevel.HistoryRead)
            await storage.new_historized_node(nid, None, 0)
        self._history = storage

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
        self._ticks += 1
        due = None
        if self.slow_every > 1 and self._ticks % self.slow_every:
            due = [not slow for slow in self._slow]
        await self._write_all(self._next_values(now_s), count=True, due=due)

    async def _write_all(self, values: list[float | str], *, count: bool = False,
                         due: list[bool] | None = None) -> None:
        assert self._server is not None
        ts = ua.DateTime.now(UTC)  # the asyncua subtype, so the types line up
        write = self._server.write_attribute_value
        history = self._history if self.historize else None
        counts = self._counts
        for i, nid in enumerate(self._ua_ids):
            if due is not None and not due[i]:
                continue
            v = values[i]
            variant = ua.Variant(v, ua.VariantType.String if self._is_text[i] else ua.VariantType.Double)
            dv = ua.DataValue(Value=variant, StatusCode=_GOOD, SourceTimestamp=ts, ServerTimestamp=ts)
            await write(nid, dv)
            if history is not None:
                await history.save_node_value(nid, dv)
            if count:
                counts[i] += 1

    def _neutral(self) -> list[float | str]:
        return ["v0" if t else 0.0 for t in self._is_text]

    def _next_values(self, now_s: float) -> list[float | str]:
        if self.mode == "counting":
            return [f"v{c + 1}" if t else float(c + 1) for c, t in zip(self._counts, self._is_text, strict=True)]
        t = now_s - self._t0
        base, amp, sigma, period, phase = self._signal_params
        noise = self._rng.normal(0.0, sigma)
        v = np.maximum(base + amp * np.sin(2.0 * math.pi * t / period + phase) + noise, 0.0)
        out: list[float | str] = []
        for i, is_text in enumerate(self._is_text):
            if is_text:
                out.append(_PUMP_STATES[int(t / 30.0 + i) % len(_PUMP_STATES)])
            else:
                out.append(float(v[i]))
        return out


def _plain(ts: datetime | None) -> datetime | None:
    if ts is None:
        return None
    return datetime(*ts.timetuple()[:6], ts.microsecond, tzinfo=ts.tzinfo)


class _SQLiteHistory(HistorySQLite):
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


class _UserManager:
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


class _Faults:
    """Fault hooks on a running asyncua server (instance-level wrappers, nothing global)."""

    def __init__(self, server: Server, max_items_per_call: int) -> None:
        self._server = server
        self._frozen_until = 0.0
        self._loop = asyncio.get_running_loop()
        service = server.iserver.subscription_service
        create_items = service.create_monitored_items
        create_sub = service.create_subscription

        async def limited_create_items(params: ua.CreateMonitoredItemsParameters) -> Any:
            # asyncua publishes MaxMonitoredItemsPerCall but does not enforce it; we do, so a
            # client that ignores the limit is caught.
            if len(params.ItemsToCreate) > max_items_per_call:
                raise ServiceError(StatusCodes.BadTooManyOperations)
            return await create_items(params)

        async def freezable_create_sub(*args: Any, **kwargs: Any) -> Any:
            result = await create_sub(*args, **kwargs)
            sub = service.subscriptions.get(result.SubscriptionId)
            if sub is not None:
                self._make_freezable(sub)
            return result

        transfer = service.transfer_subscriptions

        async def complete_transfer(
            params: ua.TransferSubscriptionsParameters, session_id: ua.NodeId, callback: Any
        ) -> list[ua.TransferResult]:
            # asyncua 2.1 re-binds only where a transferred subscription sends its responses,
            # not where it takes PublishRequests from (still the old connection), so it never
            # publishes again. Bind both, as the spec means it.
            results = await transfer(params, session_id, callback)
            processor = getattr(callback, "__self__", None)
            for sub_id, res in zip(params.SubscriptionIds, results, strict=True):
                sub = service.subscriptions.get(int(sub_id))
                if res.StatusCode.is_good() and sub is not None and processor is not None:
                    sub.pub_request_callback = processor.get_publish_request
            return results

        service.create_monitored_items = limited_create_items  # type: ignore[method-assign]
        service.create_subscription = freezable_create_sub  # type: ignore[method-assign]
        service.transfer_subscriptions = complete_transfer  # type: ignore[method-assign]

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


def _signal_params(n: int, wells: int, rng: np.random.Generator) -> tuple[npt.NDArray[np.float64], ...]:
    """Per tag: base, cycle amplitude, noise sigma, period and phase (each well a bit different)."""
    kinds = np.arange(n) % len(_SIGNALS)
    table = np.array([s[1:] for s in _SIGNALS], dtype=np.float64)
    well_scale = rng.uniform(0.7, 1.3, wells)[np.arange(n) * wells // n]
    phase = rng.uniform(0.0, 2.0 * math.pi, n)
    return (
        table[kinds, 0] * well_scale,
        table[kinds, 1] * well_scale,
        table[kinds, 2],
        table[kinds, 3],
        phase,
    )


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# --- command line -------------------------------------------------------------------------------


def _security_arg(text: str) -> SecuritySpec:
    mode, _, policy = text.partition(":")
    try:
        spec = (SecurityMode(mode), SecurityPolicy(policy or "None"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected Mode:Policy (e.g. SignAndEncrypt:Basic256Sha256 or None), got {text!r}"
        ) from None
    return spec


def _user_arg(text: str) -> tuple[str, str]:
    name, sep, password = text.partition(":")
    if not name or not sep:
        raise argparse.ArgumentTypeError("expected name:password")
    return name, password


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ingest.simulators.opcua_sim", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=4840, help="0 picks a free port")
    p.add_argument("--wells", type=int, default=2)
    p.add_argument("--tags", type=int, default=5, help="tags per well")
    p.add_argument("--interval-ms", type=int, default=100)
    p.add_argument("--mode", choices=["counting", "realistic"], default="counting")
    p.add_argument("--name", default="scada-sim")
    p.add_argument("--duration", type=float, default=None, help="seconds; default: until signal")
    p.add_argument("--summary-file", type=Path, default=None)
    p.add_argument(
        "--drain-s",
        type=float,
        default=3.0,
        help="after the summary, keep serving up to this long until every subscriber has "
        "received and acknowledged what was published (0: shut down at once)",
    )
    p.add_argument(
        "--start-paused",
        action="store_true",
        help="serve but publish nothing until SIGUSR1 (SIGUSR2 pauses again)",
    )
    p.add_argument(
        "--security",
        type=_security_arg,
        action="append",
        default=None,
        help="endpoint to offer, Mode:Policy (repeatable; default None). Modes: None, Sign, "
        "SignAndEncrypt; policies: Basic256Sha256, Aes128_Sha256_RsaOaep, Aes256_Sha256_RsaPss",
    )
    p.add_argument("--pki-dir", type=Path, default=None, help="server certificate folder")
    p.add_argument(
        "--user",
        type=_user_arg,
        action="append",
        default=None,
        help="name:password (repeatable); when given, anonymous logins are refused",
    )
    p.add_argument("--string-tags", action="store_true", help="one String tag per well")
    p.add_argument("--historize", action="store_true", help="keep history of every tag")
    p.add_argument("--history-db", type=Path, default=None, help="SQLite file for the history")
    p.add_argument("--slow-fraction", type=float, default=0.0,
                   help="share of each well's tags in the slow class (0..1)")
    p.add_argument("--slow-every", type=int, default=10,
                   help="slow tags publish every this many ticks")
    p.add_argument("--count", type=int, default=1,
                   help="simulator servers to run, one process each, each on its own port "
                        "(needs --port 0); every one prints its own NODES/READY lines")
    return p.parse_args(argv)


async def _run(args: argparse.Namespace) -> dict[str, object]:
    sim = OpcUaSimulator(
        host=args.host,
        port=args.port,
        wells=args.wells,
        tags_per_well=args.tags,
        interval_ms=args.interval_ms,
        mode=args.mode,
        name=args.name,
        paused=args.start_paused,
        security=args.security,
        pki_dir=args.pki_dir,
        users=dict(args.user) if args.user else None,
        string_tags=args.string_tags,
        historize=args.historize,
        history_db=args.history_db,
        slow_every=args.slow_every,
        slow_fraction=args.slow_fraction,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    pending: set[asyncio.Task[None]] = set()

    def later(coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        pending.add(task)
        task.add_done_callback(pending.discard)

    loop.add_signal_handler(signal.SIGUSR1, lambda: later(sim.resume()))
    loop.add_signal_handler(signal.SIGUSR2, lambda: later(sim.pause()))
    await sim.start()
    try:
        print(f"NODES {json.dumps(sim.node_ids())}", flush=True)
        print(f"READY {sim.endpoint}", flush=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=args.duration)
        # Freeze the counts before reporting them, and report before closing the server so a
        # client can still drain what was published.
        await sim.pause()
        summary = sim.summary()
        line = json.dumps(summary)
        if args.summary_file is not None:
            args.summary_file.write_text(line + "\n")
        print(line, flush=True)
        if args.drain_s > 0:
            await sim.drain(args.drain_s)
    finally:
        await sim.stop()
    return summary


def _run_many(argv: list[str], count: int) -> int:
    """Start ``count`` simulator processes, pass their lines through, stop them all on a signal."""
    import subprocess
    import threading

    child_argv = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--count":
            skip = True
            continue
        if a.startswith("--count="):
            continue
        child_argv.append(a)
    procs = [subprocess.Popen([sys.executable, "-m", "ingest.simulators.opcua_sim", *child_argv],
                              stdout=subprocess.PIPE, text=True) for _ in range(count)]

    def relay(proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()

    threads = [threading.Thread(target=relay, args=(p,), daemon=True) for p in procs]
    for t in threads:
        t.start()

    def forward(signum: int, _frame: object) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, forward)
    codes = [p.wait() for p in procs]
    for t in threads:
        t.join(5)
    return max(codes)


def main(argv: list[str] | None = None) -> int:
    from ingest.core.logging_json import configure_json_logging

    configure_json_logging(logging.WARNING)
    raw = list(sys.argv[1:] if argv is None else argv)
    args = _parse_args(raw)
    if args.count > 1:
        if args.port != 0:
            raise SystemExit("--count > 1 needs --port 0 (each server takes a free port)")
        return _run_many(raw, args.count)
    asyncio.run(_run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
