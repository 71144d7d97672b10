"""API credentials in the master database: created, listed, revoked, expired, checked.

Only a SHA-256 of a key's secret part is stored; a key is shown once, when it is made.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from ingest.core.errors import AuthError, KeyNotFound
from ingest.core.keys import hash_secret, new_api_key, secret_matches, split_api_key
from ingest.core.translate import translated_methods

ALL_TENANT_SCOPES = ("read", "ingest", "admin")


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key id, its tenant (None for the cluster admin) and its scopes."""

    key_id: str
    tenant_id: str | None
    scopes: frozenset[str]
    expires_at: datetime | None = None

    def valid_at(self, now: datetime) -> bool:
        """For a cache: a key remembered as valid stops being so at its expiry."""
        return self.expires_at is None or now < self.expires_at

    @property
    def is_cluster_admin(self) -> bool:
        return "cluster-admin" in self.scopes


# A key's last use is written at most this often (a read per request, a write per minute).
LAST_USED_EVERY_S = 60

_KEY_COLS = "key_id, name, scopes, created_at, expires_at, revoked_at, last_used_at"


@translated_methods
class Credentials:
    """The credential half of ``MasterStore`` (which supplies ``pool``)."""

    pool: asyncpg.Pool

    async def _insert_key(
        self, conn: asyncpg.Connection, tenant_id: str | None, name: str, scopes: tuple[str, ...]
    ) -> str:
        key, key_id, digest = new_api_key("sk")
        await conn.execute(
            "INSERT INTO api_credentials (key_id, tenant_id, name, secret_hash, scopes) "
            "VALUES ($1, $2::uuid, $3, $4, $5)",
            key_id,
            tenant_id,
            name,
            digest,
            list(scopes),
        )
        return key

    async def create_api_key(
        self, tenant_id: str, name: str, scopes: tuple[str, ...], expires_at: datetime | None = None
    ) -> str:
        async with self.pool.acquire() as conn, conn.transaction():
            key = await self._insert_key(conn, tenant_id, name, scopes)
            if expires_at is not None:
                await conn.execute(
                    "UPDATE api_credentials SET expires_at = $2 WHERE key_id = $1",
                    split_api_key(key)[0],
                    expires_at,
                )
            return key

    async def list_keys(self, tenant_id: str) -> list[dict[str, Any]]:
        """The tenant's keys, revoked and expired ones included; never a secret or its hash."""
        rows = await self.pool.fetch(
            f"SELECT {_KEY_COLS} FROM api_credentials WHERE tenant_id = $1::uuid ORDER BY created_at, key_id",
            tenant_id,
        )
        return [dict(r) for r in rows]

    async def revoke_key(self, tenant_id: str, key_id: str) -> dict[str, Any]:
        """Revoke at once (a second revoke keeps the first time)."""
        r = await self.pool.fetchrow(
            f"UPDATE api_credentials SET revoked_at = coalesce(revoked_at, now()) "
            f"WHERE key_id = $1 AND tenant_id = $2::uuid RETURNING {_KEY_COLS}",
            key_id,
            tenant_id,
        )
        if r is None:
            raise KeyNotFound(f"key {key_id!r} not found")
        return dict(r)

    async def ensure_admin_key(self, admin_key: str) -> None:
        """Register the cluster admin key (from the local secrets or the environment)."""
        key_id, secret = split_api_key(admin_key)
        await self.pool.execute(
            """INSERT INTO api_credentials (key_id, tenant_id, name, secret_hash, scopes)
               VALUES ($1, NULL, 'cluster admin', $2, ARRAY['cluster-admin'])
               ON CONFLICT (key_id) DO UPDATE SET secret_hash = excluded.secret_hash""",
            key_id,
            hash_secret(secret),
        )

    async def authenticate(self, key: str) -> Principal:
        try:
            key_id, secret = split_api_key(key)
        except ValueError as e:
            raise AuthError("malformed API key") from e
        # Revoked, expired, or of a deleted tenant: the same refusal as an unknown key.
        r = await self.pool.fetchrow(
            "SELECT c.tenant_id, c.secret_hash, c.scopes, c.expires_at, "
            f"c.last_used_at IS NULL OR c.last_used_at < now() - interval '{LAST_USED_EVERY_S} seconds' AS stale "
            "FROM api_credentials c LEFT JOIN tenants t ON t.id = c.tenant_id "
            "WHERE c.key_id = $1 AND c.revoked_at IS NULL AND (c.expires_at IS NULL OR c.expires_at > now()) "
            "AND (c.tenant_id IS NULL OR t.deleted_at IS NULL)",
            key_id,
        )
        if r is None or not secret_matches(secret, r["secret_hash"]):
            raise AuthError("invalid API key")
        if r["stale"]:
            await self.pool.execute("UPDATE api_credentials SET last_used_at = now() WHERE key_id = $1", key_id)
        tid = str(r["tenant_id"]) if r["tenant_id"] else None
        return Principal(key_id, tid, frozenset(r["scopes"]), r["expires_at"])
