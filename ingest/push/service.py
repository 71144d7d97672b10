"""One push, in the order it happens: decode, tenant check, idempotency key claimed with the
volume charged (one Redis call), tags (created on first sight when the tenant allows), units, the
writer, the answer, then the answer kept for retries and the audit row (side by side).

The writer and the audit log are handed in as callables, so this module knows nothing of Ray
(the Serve layer passes the writer actor's call) and is tested with a real writer or a fake one.
The request limit and the body size are decided before this runs (they need no body).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from ingest.core.batch import ReadingBatch
from ingest.core.errors import QuotaExceeded
from ingest.push.batch import Prepared, prepare_batch
from ingest.push.errors import PayloadInvalid, PushError, PushQuotaExceeded, TenantMismatch
from ingest.push.idempotency import IdempotencyStore, body_digest
from ingest.push.limits import PushLimiter, PushSettings
from ingest.push.payload import decode_payload
from ingest.push.tags import Pair, PushTag, PushTagCreate, PushTagMap
from ingest.push.units import UnitError, check_unit

log = logging.getLogger(__name__)

Stored = Literal["committed", "spooled", "none"]
# The writer: lands the batch (committed, or durably spooled) or raises PushError (503).
WriteFn = Callable[[ReadingBatch], Awaitable[Stored]]
AuditFn = Callable[[str, dict[str, Any]], Awaitable[None]]  # (action, detail)


@dataclass(frozen=True)
class PushContext:
    tenant_id: str
    tenant_slug: str
    key_id: str
    source_address: str | None


@dataclass(frozen=True)
class PushAnswer:
    status: int
    body: dict[str, Any]
    replayed: bool = False


def new_ingestion_id(now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return f"ing_{now:%Y%m%d_%H%M%S}_{secrets.token_hex(6)}"


class PushService:
    def __init__(self, limiter: PushLimiter, idempotency: IdempotencyStore) -> None:
        self.limiter = limiter
        self.idempotency = idempotency

    async def push(
        self,
        ctx: PushContext,
        settings: PushSettings,
        body: bytes,
        idempotency_key: str | None,
        tags: PushTagMap,
        write: WriteFn,
        audit: AuditFn,
    ) -> PushAnswer:
        started = time.perf_counter()
        payload = decode_payload(body, settings.max_points)
        if payload.tenant_id not in (ctx.tenant_slug, ctx.tenant_id):
            raise TenantMismatch(
                "Token tenant_id does not match request tenant_id",
                [{"field": "tenant_id", "error": "not this key's tenant"}],
            )
        if (
            idempotency_key is not None
            and payload.ingestion_id is not None
            and idempotency_key != payload.ingestion_id
        ):
            raise PayloadInvalid(
                "Idempotency-Key and ingestion_id differ",
                [{"field": "ingestion_id", "error": "must equal the Idempotency-Key header"}],
            )
        key = idempotency_key or payload.ingestion_id
        digest = body_digest(body) if key else ""
        charge = self.limiter.volume_charge(ctx.tenant_id, len(body), settings)
        if key is None:
            await self.limiter.charge(charge)
        else:  # the key claimed and the bytes charged in one round trip; a retry is not charged
            first = await self.idempotency.begin(ctx.tenant_id, key, digest, charge)
            if first is not None:
                return PushAnswer(first.status, first.body, replayed=True)
        try:
            answer = await self._land(ctx, settings, payload, key, tags, write, audit, started)
        except BaseException:
            if key is not None:
                await self.idempotency.abandon(ctx.tenant_id, key)
            raise

        async def audit_row() -> None:
            try:
                await audit(
                    "push.ingest",
                    {
                        "ingestion_id": answer.body["ingestion_id"],
                        "accepted": answer.body["accepted_count"],
                        "rejected": answer.body["rejected_count"],
                        "stored": answer.body["stored"],
                        "source": ctx.source_address,
                        "bytes": len(body),
                    },
                )
            except Exception:  # the readings are landed; a lost audit row must not make it a 500
                log.exception("audit row for a push not written")

        if key is None:
            await audit_row()
        else:  # the answer kept and the audit row written side by side (Redis and PostgreSQL)
            await asyncio.gather(
                self.idempotency.finish(ctx.tenant_id, key, digest, answer.status, answer.body), audit_row()
            )
        return answer

    async def _land(
        self,
        ctx: PushContext,
        settings: PushSettings,
        payload: Any,
        key: str | None,
        tags: PushTagMap,
        write: WriteFn,
        audit: AuditFn,
        started: float,
    ) -> PushAnswer:
        points = payload.data_points
        ingestion_id = key or new_ingestion_id()
        now_us = time.time_ns() // 1000

        def prepare(known: dict[Pair, PushTag], registered: bool = False) -> Prepared:
            return prepare_batch(f"push:{ingestion_id}", points, known, now_us, settings.max_future_s, registered)

        known = await tags.current()
        prepared = prepare(known)
        if prepared.unknown:  # some pairs name no tag: create them, or look again (bounded)
            if settings.auto_register:
                prepared = prepare(await self._register(tags, points, prepared.unknown, audit), True)
            elif (again := await tags.current(missing=True)) is not known:
                prepared = prepare(again)
        stored: Stored = "none"
        if prepared.batch is not None:
            stored = await write(prepared.batch)
        status = "success" if prepared.rejected_count == 0 else "partial" if prepared.accepted else "rejected"
        body_out = {
            "status": status,
            "message": f"Ingested {prepared.accepted} data points"
            + (f", rejected {prepared.rejected_count}" if prepared.rejected_count else ""),
            "tenant_id": payload.tenant_id,
            "ingestion_id": ingestion_id,
            "accepted_count": prepared.accepted,
            "rejected_count": prepared.rejected_count,
            "processing_time_ms": round((time.perf_counter() - started) * 1000, 3),
            "rejected": [r.as_dict() for r in prepared.rejected],
            "stored": stored,
        }
        return PushAnswer(200, body_out)

    async def _register(
        self, tags: PushTagMap, points: Any, missing: set[Pair], audit: AuditFn
    ) -> dict[Pair, PushTag]:
        """Create the unknown pairs' tags, each with the first (readable) unit seen for it."""
        first_unit: dict[tuple[str, str], str] = {}
        for p in points:
            pair = (p.well_id, p.parameter_name)
            if pair in missing and pair not in first_unit:
                try:
                    check_unit(p.unit)
                except UnitError:
                    continue  # no tag for a unit nobody can read: the point is rejected
                first_unit[pair] = p.unit
        if first_unit:
            try:
                created = await tags.register(
                    [PushTagCreate(w, name, unit) for (w, name), unit in first_unit.items()]
                )
            except QuotaExceeded as e:
                raise PushQuotaExceeded(
                    f"registering {len(first_unit)} new tags would exceed the tenant's quota: {e.message}",
                    [{"field": e.quota, "error": e.message}],
                ) from e
            new = [c for c in created if c["created"]]
            if new:
                await audit(
                    "tag.create",
                    {
                        "by": "auto_register",
                        "count": len(new),
                        "tags": [{k: c[k] for k in ("tag_id", "well", "parameter", "unit")} for c in new[:100]],
                    },
                )
        return await tags.current()


def error_answer(e: PushError) -> PushAnswer:
    return PushAnswer(e.status, e.body())
