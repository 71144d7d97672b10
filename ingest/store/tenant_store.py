"""One tenant's database: connections, tag mappings and reading queries."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from ingest.core.errors import Conflict, ConnectionNotFound, TagNotFound
from ingest.core.models import ConnectionSpec, Protocol, SecurityMode, SecurityPolicy, Tenant
from ingest.core.translate import translated, translated_methods
from ingest.device.session_inputs import check_tags, tag_spec
from ingest.store import migrations, quotas
from ingest.store.registration import (
    ConnectionCreate,
    ConnectionUpdate,
    TagCreate,
    TagUpdate,
    check_connection_edit,
    check_tag_edit,
)
from ingest.store.secrets import SecretBox

_CONN_COLS = (
    "id, name, protocol, endpoint, security_mode, security_policy, auto_accept_server_cert, "
    "username, publishing_interval_ms, enabled, state, state_changed_at, last_connected_at, "
    "last_error, created_at, updated_at"
)
TAG_COLS = (
    "tag_id, connection_id, name, node_id, modbus_unit, modbus_register, modbus_address, "
    'modbus_data_type, byte_order, data_type, unit, scaling_factor, "offset", valid_min, '
    "valid_max, deadband, out_of_range, zscore_threshold, modbus_bit, modbus_length, well_id, "
    "sampling_interval_ms, queue_size, discard_oldest, deadband_type, deadband_value"
)


def _jsonable(r: asyncpg.Record) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in r.items():
        if isinstance(v, datetime):
            out[k] = v.isoformat()
        elif v is not None and k in ("id", "connection_id", "well_id"):
            out[k] = str(v)
        else:
            out[k] = v
    return out


async def well_ids(conn: asyncpg.Connection, names: set[str]) -> dict[str, Any]:
    """The id of each named well, made if it does not exist yet."""
    out: dict[str, Any] = {}
    for name in sorted(names):
        out[name] = await conn.fetchval(
            "SELECT id FROM wells WHERE name = $1 AND deleted_at IS NULL", name
        ) or await conn.fetchval("INSERT INTO wells (name) VALUES ($1) RETURNING id", name)
    return out


@translated_methods
class TenantStore:
    def __init__(self, pool: asyncpg.Pool, box: SecretBox) -> None:
        self.pool = pool
        self.box = box

    @classmethod
    @translated
    async def connect(cls, dsn: str, box: SecretBox, max_size: int = 4, *, migrate: bool = False) -> TenantStore:
        """``migrate``: apply the tenant migrations first (idempotent, under an advisory lock): a
        database that was away when the cluster started is brought up to date when it is back."""
        if migrate:
            conn = await asyncpg.connect(dsn)
            try:
                await migrations.apply(conn, "tenant")
            finally:
                await conn.close()
        return cls(await asyncpg.create_pool(dsn, min_size=0, max_size=max_size), box)

    async def close(self) -> None:
        await self.pool.close()

    # -- registration ------------------------------------------------------------------------
    async def create_connection(
        self, c: ConnectionCreate, *, max_tags: int | None = None, max_connections: int | None = None
    ) -> dict[str, Any]:
        """``max_tags`` / ``max_connections``: the tenant's quotas (``QuotaExceeded`` past them)."""
        async with self.pool.acquire() as conn, conn.transaction():
            await quotas.lock_quotas(conn)
            if await conn.fetchval(
                "SELECT 1 FROM scada_connections WHERE name = $1 AND deleted_at IS NULL", c.name
            ):
                raise Conflict("name", f"a connection named {c.name!r} exists already")
            r = await conn.fetchrow(
                f"""INSERT INTO scada_connections (name, protocol, endpoint, security_mode,
                        security_policy, auto_accept_server_cert, username, password_enc,
                        publishing_interval_ms, enabled)
                    VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10) RETURNING {_CONN_COLS}""",
                c.name,
                c.protocol.value,
                c.endpoint,
                c.security_mode.value,
                c.security_policy.value,
                c.auto_accept_server_cert,
                c.username,
                self.box.encrypt(c.password) if c.password else None,
                c.publishing_interval_ms,
                c.enabled,
            )
            out = _jsonable(r)
            out["tags"] = await self.insert_tags(conn, r["id"], c.tags)
            await quotas.enforce(conn, max_tags=max_tags, max_connections=max_connections)
        return out

    async def add_tags(
        self, connection_id: str, tags: list[TagCreate], *, max_tags: int | None = None
    ) -> list[dict[str, Any]]:
        async with self.pool.acquire() as conn, conn.transaction():
            await quotas.lock_quotas(conn)
            r = await conn.fetchrow(
                "SELECT id, protocol FROM scada_connections WHERE id = $1::uuid AND deleted_at IS NULL FOR UPDATE",
                connection_id,
            )
            if r is None:
                raise ConnectionNotFound(f"connection {connection_id} not found")
            check_tags(Protocol(r["protocol"]), [t.model_dump() for t in tags])
            taken = {
                x["name"]
                for x in await conn.fetch(
                    "SELECT name FROM tag_mappings WHERE connection_id = $1 "
                    "AND deleted_at IS NULL AND name = ANY($2::text[])",
                    r["id"],
                    [t.name for t in tags],
                )
            }
            if taken:
                raise Conflict("tags.name", f"tags exist already: {sorted(taken)}")
            rows = await self.insert_tags(conn, r["id"], tags)
            await quotas.enforce(conn, max_tags=max_tags)
            await conn.execute("UPDATE scada_connections SET updated_at = now() WHERE id = $1", r["id"])
            return rows

    async def insert_tags(
        self, conn: asyncpg.Connection, connection_id: Any, tags: list[TagCreate]
    ) -> list[dict[str, Any]]:
        if not tags:
            return []
        wells = await well_ids(conn, {t.well for t in tags if t.well})
        rows = await conn.fetch(
            f"""INSERT INTO tag_mappings (connection_id, well_id, name, node_id, modbus_unit,
                    modbus_register, modbus_address, modbus_data_type, byte_order, data_type,
                    unit, scaling_factor, "offset", valid_min, valid_max, deadband, out_of_range,
                    zscore_threshold, modbus_bit, modbus_length, sampling_interval_ms, queue_size,
                    discard_oldest, deadband_type, deadband_value)
                SELECT $1, * FROM unnest($2::uuid[], $3::text[], $4::text[], $5::int[],
                    $6::text[], $7::int[], $8::text[], $9::text[], $10::text[], $11::text[],
                    $12::float8[], $13::float8[], $14::float8[], $15::float8[], $16::float8[],
                    $17::text[], $18::float8[], $19::int[], $20::int[], $21::float8[], $22::int[],
                    $23::bool[], $24::text[], $25::float8[])
                RETURNING {TAG_COLS}, (SELECT name FROM wells w WHERE w.id = well_id) AS well""",
            connection_id,
            [wells.get(t.well) if t.well else None for t in tags],
            [t.name for t in tags],
            [t.node_id for t in tags],
            [t.modbus_unit for t in tags],
            [t.modbus_register for t in tags],
            [t.modbus_address for t in tags],
            [t.modbus_data_type for t in tags],
            [t.byte_order for t in tags],
            [t.data_type for t in tags],
            [t.unit for t in tags],
            [t.scaling_factor for t in tags],
            [t.offset for t in tags],
            [t.valid_min for t in tags],
            [t.valid_max for t in tags],
            [t.deadband for t in tags],
            [t.out_of_range for t in tags],
            [t.zscore_threshold for t in tags],
            [t.modbus_bit for t in tags],
            [t.modbus_length for t in tags],
            [t.sampling_interval_ms for t in tags],
            [t.queue_size for t in tags],
            [t.discard_oldest for t in tags],
            [t.deadband_type for t in tags],
            [t.deadband_value for t in tags],
        )
        return [_jsonable(r) for r in rows]

    async def list_connections(self) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            f"SELECT {_CONN_COLS}, (SELECT count(*) FROM tag_mappings t WHERE t.connection_id = c.id"
            " AND t.deleted_at IS NULL) AS tag_count FROM scada_connections c "
            "WHERE deleted_at IS NULL ORDER BY created_at"
        )
        return [_jsonable(r) for r in rows]

    async def connection_protocol(self, connection_id: str) -> Protocol:
        p = await self.pool.fetchval(
            "SELECT protocol FROM scada_connections WHERE id = $1::uuid AND deleted_at IS NULL", connection_id
        )
        if p is None:
            raise ConnectionNotFound(f"connection {connection_id} not found")
        return Protocol(p)

    async def get_connection(self, connection_id: str) -> dict[str, Any]:
        r = await self.pool.fetchrow(
            f"SELECT {_CONN_COLS} FROM scada_connections WHERE id = $1::uuid AND deleted_at IS NULL",
            connection_id,
        )
        if r is None:
            raise ConnectionNotFound(f"connection {connection_id} not found")
        out = _jsonable(r)
        out["tags"] = await self.list_tags(connection_id)
        return out

    async def delete_connection(self, connection_id: str) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            done = await conn.execute(
                "UPDATE scada_connections SET deleted_at = now(), enabled = false "
                "WHERE id = $1::uuid AND deleted_at IS NULL",
                connection_id,
            )
            if done.endswith(" 0"):
                raise ConnectionNotFound(f"connection {connection_id} not found")
            await conn.execute(
                "UPDATE tag_mappings SET deleted_at = now() WHERE connection_id = $1::uuid AND deleted_at IS NULL",
                connection_id,
            )

    async def update_connection(self, connection_id: str, u: ConnectionUpdate) -> dict[str, Any]:
        fields = u.model_dump(exclude_unset=True)
        sets, args = [], []
        for k, v in fields.items():
            if k == "password":
                k, v = "password_enc", (self.box.encrypt(v) if v else None)
            elif hasattr(v, "value"):
                v = v.value
            args.append(v)
            sets.append(f"{k} = ${len(args) + 1}")
        async with self.pool.acquire() as conn, conn.transaction():
            r = await conn.fetchrow(
                f"SELECT {_CONN_COLS}, password_enc IS NOT NULL AS has_password "
                "FROM scada_connections WHERE id = $1::uuid AND deleted_at IS NULL FOR UPDATE",
                connection_id,
            )
            if r is None:
                raise ConnectionNotFound(f"connection {connection_id} not found")
            check_connection_edit(r, r["has_password"], u)
            if u.name is not None and u.name != r["name"]:
                if await conn.fetchval(
                    "SELECT 1 FROM scada_connections WHERE name = $1 AND deleted_at IS NULL", u.name
                ):
                    raise Conflict("name", f"a connection named {u.name!r} exists already")
            if sets:
                await conn.execute(
                    f"UPDATE scada_connections SET {', '.join(sets)}, updated_at = now() WHERE id = $1::uuid",
                    connection_id,
                    *args,
                )
        return await self.get_connection(connection_id)

    async def update_tag(self, tag_id: int, u: TagUpdate) -> dict[str, Any]:
        """Change a tag in place: its ``tag_id`` stays, so readings before and after an edit of
        its well, address or data type stay one series."""
        fields = u.model_dump(exclude_unset=True)
        async with self.pool.acquire() as conn, conn.transaction():
            stored = await conn.fetchrow(
                f"SELECT {TAG_COLS}, (SELECT protocol FROM scada_connections c "
                "WHERE c.id = connection_id) AS protocol FROM tag_mappings "
                "WHERE tag_id = $1 AND deleted_at IS NULL FOR UPDATE",
                tag_id,
            )
            if stored is None:
                raise TagNotFound(f"tag {tag_id} not found")
            check_tag_edit(Protocol(stored["protocol"]), stored, u)
            if "name" in fields and fields["name"] != stored["name"]:
                if await conn.fetchval(
                    "SELECT 1 FROM tag_mappings WHERE connection_id = $1 AND name = $2 AND deleted_at IS NULL",
                    stored["connection_id"],
                    fields["name"],
                ):
                    raise Conflict("name", f"the connection has a tag named {fields['name']!r} already")
            if "well" in fields:
                well = fields.pop("well")
                fields["well_id"] = (await well_ids(conn, {well}))[well] if well else None
            cols = [('"offset"' if k == "offset" else k) for k in fields]
            sets = [f"{c} = ${i + 2}" for i, c in enumerate(cols)]
            r = await conn.fetchrow(
                f"UPDATE tag_mappings SET {', '.join(sets + ['updated_at = now()'])} "
                f"WHERE tag_id = $1 RETURNING {TAG_COLS}, "
                "(SELECT name FROM wells w WHERE w.id = well_id) AS well",
                tag_id,
                *fields.values(),
            )
            await conn.execute("UPDATE scada_connections SET updated_at = now() WHERE id = $1", r["connection_id"])
        return _jsonable(r)

    async def delete_tag(self, tag_id: int) -> None:
        done = await self.pool.execute(
            "UPDATE tag_mappings SET deleted_at = now() WHERE tag_id = $1 AND deleted_at IS NULL",
            tag_id,
        )
        if done.endswith(" 0"):
            raise TagNotFound(f"tag {tag_id} not found")

    async def list_tags(self, connection_id: str | None = None) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            f"SELECT {TAG_COLS}, (SELECT name FROM wells w WHERE w.id = well_id) AS well "
            "FROM tag_mappings WHERE deleted_at IS NULL "
            "AND ($1::uuid IS NULL OR connection_id = $1::uuid) ORDER BY tag_id",
            connection_id,
        )
        return [_jsonable(r) for r in rows]

    async def record_connection_state(self, connection_id: str, state: str, error: str | None) -> None:
        """The session's state as the cluster sees it; ``last_error`` keeps the newest error
        (it is not cleared by a reconnect), ``last_connected_at`` the newest connect."""
        await self.pool.execute(
            "UPDATE scada_connections SET state = $2, state_changed_at = now(), "
            "last_error = coalesce($3, last_error), "
            "last_connected_at = CASE WHEN $2 = 'connected' THEN now() ELSE last_connected_at END "
            "WHERE id = $1::uuid",
            connection_id,
            state,
            error,
        )

    # -- what the coordinator hands out ---------------------------------------------------------
    async def load_specs(self, tenant: Tenant, connection_id: str | None = None) -> list[ConnectionSpec]:
        """Every enabled, live connection of the tenant with its live tags; or the one connection
        ``connection_id`` (enabled or not, without its tags: what browsing its server needs)."""
        conns = await self.pool.fetch(
            "SELECT id, protocol, endpoint, security_mode, security_policy, username, "
            "password_enc, publishing_interval_ms, auto_accept_server_cert FROM scada_connections "
            # Pushed values arrive over HTTP: no session to run for a push connection.
            "WHERE deleted_at IS NULL AND protocol <> 'push' AND "
            "CASE WHEN $1::uuid IS NULL THEN enabled ELSE id = $1::uuid END ORDER BY id",
            connection_id,
        )
        tags = (
            []
            if connection_id
            else await self.pool.fetch(
                "SELECT connection_id, tag_id, name, node_id, modbus_register, modbus_unit, "
                "modbus_address, modbus_data_type, byte_order, modbus_bit, modbus_length, data_type, "
                'scaling_factor, "offset", sampling_interval_ms, queue_size, discard_oldest, deadband_type, '
                "deadband_value FROM tag_mappings WHERE deleted_at IS NULL ORDER BY tag_id"
            )
        )
        by_conn: dict[Any, list[asyncpg.Record]] = {}
        for t in tags:
            by_conn.setdefault(t["connection_id"], []).append(t)
        return [
            ConnectionSpec(
                tenant_id=tenant.id,
                tenant_slug=tenant.slug,
                connection_id=str(c["id"]),
                protocol=Protocol(c["protocol"]),
                endpoint=c["endpoint"],
                publishing_interval_ms=c["publishing_interval_ms"],
                security_mode=SecurityMode(c["security_mode"]),
                security_policy=SecurityPolicy(c["security_policy"]),
                username=c["username"],
                password=self.box.decrypt(c["password_enc"]) if c["password_enc"] else None,
                auto_accept_server_cert=c["auto_accept_server_cert"],
                # The address each tag is read at comes from session_inputs, which registration
                # also runs: a tag it accepted is a tag this session can read.
                tags=tuple(tag_spec(Protocol(c["protocol"]), t) for t in by_conn.get(c["id"], [])),
            )
            for c in conns
        ]

    # -- queries -------------------------------------------------------------------------------
    async def tag_rules(self) -> list[dict[str, Any]]:
        """Validation settings of every live tag (the writer's input)."""
        rows = await self.pool.fetch(
            "SELECT tag_id, valid_min, valid_max, out_of_range, deadband, zscore_threshold "
            "FROM tag_mappings WHERE deleted_at IS NULL"
        )
        return [dict(r) for r in rows]

    async def rules_version(self) -> str:
        r = await self.pool.fetchrow(
            "SELECT count(*) AS n, max(updated_at) AS u, max(deleted_at) AS d FROM tag_mappings"
        )
        return f"{r['n']}|{r['u']}|{r['d']}"

    async def last_times(self, tag_ids: list[int], before_us: list[int]) -> dict[int, int]:
        """Newest stored source time (µs since the Unix epoch) of each tag strictly before the
        given time; one index probe each. Tags with nothing stored before it are left out."""
        rows = await self.pool.fetch(
            "SELECT t, (SELECT (extract(epoch FROM max(time)) * 1e6)::int8 FROM scada_readings "
            "WHERE tag_id = t AND time < 'epoch'::timestamptz + b * interval '1 microsecond') "
            "AS last FROM unnest($1::int[], $2::int8[]) AS u(t, b)",
            tag_ids,
            before_us,
        )
        return {int(r["t"]): int(r["last"]) for r in rows if r["last"] is not None}
