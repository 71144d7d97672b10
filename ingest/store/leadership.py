"""One active coordinator per master database: a PostgreSQL advisory lock held by a session.

Two clusters pointed at one master database (a benchmark's own Ray beside a running ``up``, a
second deployment by mistake) would each read the same desired state and each poll every device:
every reading stored twice, by two writers whose ledgers know nothing of each other. The
coordinator therefore acts only while it holds this lock; another one stands by (it reconciles
nothing, and says who holds the lock) and takes over when the holder's session ends.

The lock lives as long as the holder's database session: a coordinator whose process ends (Ray
restarts it, the node goes) releases it with its socket, so its successor takes over on its next
pass. A holder whose session is lost while it lives (the database restarted or away) learns it on
its next check and acts on nothing until it holds the lock again; it stops what it runs only when
it sees another holder (``holder``), so a master database outage does not stop ingestion. (The
price: were the database reachable by another cluster and not by this one, both would run until
this one reached it again.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Literal

import asyncpg

log = logging.getLogger(__name__)

# pg_try_advisory_lock(int4, int4): shows in pg_locks as classid / objid with objsubid 2.
LOCK_SPACE = 0x5CADA
LOCK_COORDINATOR = 1
_CHECK_TIMEOUT_S = 5.0

_HOLDER_SQL = """
SELECT a.pid, a.application_name, host(a.client_addr) AS client_addr, a.backend_start
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.database = (SELECT oid FROM pg_database
      WHERE datname = current_database())
  AND l.classid = $1 AND l.objid = $2 AND l.objsubid = 2
"""


class Leadership:
    """The coordinator's claim on one master database (see the module docstring)."""

    def __init__(self, dsn: str, identity: str) -> None:
        self._dsn = dsn
        self.identity = identity[:63]  # PostgreSQL keeps 63 bytes of application_name
        self._conn: asyncpg.Connection | None = None
        self.held = False
        self.standby: dict[str, Any] | None = None  # who holds the lock while this one waits

    async def decide(self) -> Literal["lead", "standby", "unknown"]:
        """``lead`` while this instance holds the lock; ``standby`` while another one does
        (``standby`` says who and since when: its holder runs what this one ran); ``unknown``
        while the database cannot tell (what runs keeps running, nothing new is decided)."""
        if await self.hold():
            if self.standby is not None:
                log.warning("coordinator lock taken over: this coordinator acts from now on")
            self.standby = None
            return "lead"
        holder = await self.holder()
        if holder is None:
            return "unknown"
        if self.standby is None or self.standby["holder"] != holder:
            log.warning(
                "another coordinator holds this master database's lock (%s): standing by, nothing "
                "is polled from this cluster until it lets go",
                holder,
            )
        self.standby = {"holder": holder, "since": (self.standby or {}).get("since", time.time())}
        return "standby"

    async def hold(self) -> bool:
        """True while this instance holds the lock: checks the session is alive, else tries to take
        the lock (again). Never raises: a database it cannot reach means not holding."""
        try:
            if self._conn is None or self._conn.is_closed():
                self.held = False
                self._conn = await asyncpg.connect(
                    self._dsn,
                    timeout=_CHECK_TIMEOUT_S,
                    server_settings={"application_name": self.identity},
                )
            if self.held:
                # The lock is the session's: a live session still holds it.
                await asyncio.wait_for(self._conn.fetchval("SELECT 1"), _CHECK_TIMEOUT_S)
            else:
                self.held = bool(
                    await asyncio.wait_for(
                        self._conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", LOCK_SPACE, LOCK_COORDINATOR),
                        _CHECK_TIMEOUT_S,
                    )
                )
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            if self.held:
                log.warning("coordinator lock lost with its database session: %s", type(e).__name__)
            self.held = False
            await self._drop()
        return self.held

    async def holder(self) -> dict[str, Any] | None:
        """Who holds the lock now (its database session), or None when nobody does or the
        database cannot tell."""
        try:
            if self._conn is None or self._conn.is_closed():
                return None
            row = await asyncio.wait_for(
                self._conn.fetchrow(_HOLDER_SQL, LOCK_SPACE, LOCK_COORDINATOR), _CHECK_TIMEOUT_S
            )
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return None
        if row is None:
            return None
        return {
            "application_name": row["application_name"],
            "client_addr": row["client_addr"],
            "since": row["backend_start"].isoformat() if row["backend_start"] else None,
            "backend_pid": row["pid"],
        }

    async def release(self) -> None:
        """Give the lock up (ends the session that holds it)."""
        self.held = False
        await self._drop()

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), _CHECK_TIMEOUT_S)
            except Exception:
                conn.terminate()
