"""One flush transaction: a ledger row per new batch id, the binary COPY of the numeric readings
and the insert of the string readings, committed together or not at all.

Numeric and text batches share this transaction, and only the writer's flush task runs it (see
ingest.write.writer). That is a rule, not a convenience: asyncpg turns a ``conn.transaction()`` opened
while the connection already has one into a SAVEPOINT, whose "commit" is a RELEASE that makes
nothing durable, because the outer transaction may still roll back. When string readings had a
transaction of their own on the same connection, some were acknowledged that way and then lost
with the outer one (issue 17).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import asyncpg
import numpy as np

from ingest.core.batch import Batch, ReadingBatch, TextBatch
from ingest.core.errors import BatchRejected, IngestError, StorageError, StorageUnavailable
from ingest.core.models import GAP_QUALITY
from ingest.core.translate import TRANSIENT
from ingest.write.copy_binary import encode_buffer
from ingest.write.speculative import restore, snapshot

if TYPE_CHECKING:
    from ingest.write.validation import ValidationOutcome, Validator

COLUMNS = ["time", "tag_id", "value", "quality"]
# Flushes of fewer rows fold into the validator on the loop, before their COPY; larger ones on a
# worker thread while the server copies (ingest.write.speculative).
FOLD_INLINE_ROWS = 2_000

_LEDGER_INSERT = """
    INSERT INTO ingest_ledger (batch_id, rows, received, min_time, max_time)
    SELECT b, w, n, to_timestamp(lo / 1e6), to_timestamp(hi / 1e6)
    FROM unnest($1::text[], $2::int[], $3::int[], $4::int8[], $5::int8[]) AS u(b, w, n, lo, hi)
    ON CONFLICT (batch_id) DO NOTHING RETURNING batch_id"""
# String readings are few, so a plain insert is enough; the server turns the microsecond
# timestamps into timestamptz exactly and refuses out-of-range ones like the numeric COPY does.
_TEXT_INSERT = """
    INSERT INTO scada_readings_text (time, tag_id, value, quality)
    SELECT timestamptz 'epoch' + t * interval '1 microsecond', g, v, q
    FROM unnest($1::int8[], $2::int4[], $3::text[], $4::int4[]) AS u(t, g, v, q)"""


class LedgerRace(Exception):
    """Another writer committed one of our batch ids between our check and our insert."""


@dataclass
class Flushed:
    """What one committed flush wrote, for the bookkeeping that follows the commit."""

    seen: set[str]  # ids the ledger held already: acknowledged as duplicates, not written
    new_batches: int
    numeric: ReadingBatch | None  # the numeric rows written, sorted by (tag, time)
    text_rows: int
    merged: ReadingBatch | None  # the new numeric rows as received, before validation
    outcome: ValidationOutcome | None
    texts: list[TextBatch] = field(default_factory=list)  # the new text batches written


def _validated(
    new: list[ReadingBatch], validator: Validator | None
) -> tuple[ReadingBatch, ReadingBatch, ValidationOutcome | None, list[int]]:
    """The new numeric rows merged, the rows to write, the outcome, rows kept per batch."""
    merged = ReadingBatch.concat("flush", new) if len(new) > 1 else new[0]
    keep = np.ones(len(merged), bool)
    quality = merged.quality
    outcome = None
    if validator is not None:
        markers = merged.quality == GAP_QUALITY
        outcome = validator.check(merged.time_us, merged.tag_id, merged.value, merged.quality)
        keep = outcome.keep | markers
        quality = np.where(markers, merged.quality, outcome.quality).astype(np.int32)
    owner = np.repeat(np.arange(len(new)), [len(b) for b in new])
    kept_per_batch = np.bincount(owner, weights=keep, minlength=len(new))
    # Rows go in sorted by (tag, time): the (tag_id, time DESC) index then grows in runs instead
    # of at a thousand scattered places, which about doubles COPY speed on a 1,000-tag flush
    # (measured: README, "Writer figures"). The validator sorted every row of a known tag that
    # way already (rule indexes ascend with tag ids); only a flush with unknown tags sorts again.
    plan = outcome._plan if outcome is not None else None
    if plan is not None and plan.order.size == len(merged):
        kept = plan.order[keep[plan.order]]
    else:
        kept = np.flatnonzero(keep)
        kept = kept[np.lexsort((merged.time_us[kept], merged.tag_id[kept]))]
    rows_out = ReadingBatch(
        merged.batch_id, merged.time_us[kept], merged.tag_id[kept], merged.value[kept], quality[kept]
    )
    return merged, rows_out, outcome, [int(k) for k in kept_per_batch]


async def commit_once(
    conn: asyncpg.Connection,
    batches: Sequence[Batch],
    validator: Validator | None,
    during_copy: Callable[[], None] | None = None,
) -> Flushed:
    """One transaction. The validator has folded the written rows in when this returns; if the
    transaction fails, its state is as before (the fold runs while the COPY does, see
    ingest.write.speculative). ``during_copy`` runs once the COPY's rows are handed to the
    connection, while the server works through them (the writer's bookkeeping of the flush
    before); it is not called when this flush copies nothing."""
    # The same id twice in one flush (a resend racing its original) is written once.
    unique: dict[str, Batch] = {}
    for b in batches:
        unique.setdefault(b.batch_id, b)
    ids = list(unique)
    merged = rows_out = outcome = None
    before = None
    try:
        async with conn.transaction():
            seen = {
                r[0]
                for r in await conn.fetch(
                    "SELECT batch_id FROM ingest_ledger WHERE batch_id = ANY($1::text[])", ids
                )
            }
            new = [unique[i] for i in ids if i not in seen]
            numeric = [b for b in new if isinstance(b, ReadingBatch)]
            texts = [b for b in new if isinstance(b, TextBatch)]
            written = {b.batch_id: len(b) for b in texts}
            if numeric:
                merged, rows_out, outcome, kept = _validated(numeric, validator)
                written.update(zip([b.batch_id for b in numeric], kept, strict=True))
            if new:
                inserted = await conn.fetch(
                    _LEDGER_INSERT,
                    [b.batch_id for b in new],
                    [written[b.batch_id] for b in new],
                    [len(b) for b in new],
                    [int(b.time_us.min()) if len(b) else None for b in new],
                    [int(b.time_us.max()) if len(b) else None for b in new],
                )
                if len(inserted) != len(new):
                    raise LedgerRace()
            fold = None
            if merged is not None and outcome is not None and validator is not None:
                before = snapshot(validator)
                m = merged
                if len(m) < FOLD_INLINE_ROWS:
                    # A device tick's flush: the hand-off to a worker thread and back (two wake-ups
                    # across threads) costs more than the fold itself.
                    validator.commit(m.time_us, m.tag_id, m.value, m.quality, outcome)
                else:
                    fold = asyncio.ensure_future(
                        asyncio.to_thread(validator.commit, m.time_us, m.tag_id, m.value, m.quality, outcome)
                    )
            try:
                if rows_out is not None and len(rows_out):
                    buf = encode_buffer(rows_out.time_us, rows_out.tag_id, rows_out.value, rows_out.quality)
                    copy = asyncio.ensure_future(
                        conn.copy_to_table("scada_readings", source=buf.data, columns=COLUMNS, format="binary")
                    )
                    try:
                        if during_copy is not None:
                            # One turn of the loop: asyncpg writes the statement and all the rows
                            # into the connection's buffer before it first waits (for the result).
                            await asyncio.sleep(0)
                            during_copy()
                        await copy
                    finally:
                        if not copy.done():  # the flush ends (cancelled, or failed) before its COPY
                            copy.cancel()
                            await asyncio.wait([copy])
                if any(len(b) for b in texts):
                    await conn.execute(
                        _TEXT_INSERT,
                        np.concatenate([b.time_us for b in texts]).tolist(),
                        np.concatenate([b.tag_id for b in texts]).tolist(),
                        [v for b in texts for v in b.value],
                        np.concatenate([b.quality for b in texts]).tolist(),
                    )
            finally:
                if fold is not None:
                    # Never leave while the thread still changes the state: a restore or the
                    # next check must see it finished.
                    await asyncio.shield(fold)
    except BaseException:
        if before is not None and validator is not None:
            restore(validator, before)
        raise
    return Flushed(seen, len(new), rows_out, sum(len(b) for b in texts), merged, outcome, texts)


def _translate(e: BaseException) -> IngestError:
    """A failed commit's asyncpg or socket error -> ours: StorageUnavailable (retriable: the
    database is away, spool and retry) or BatchRejected (not: isolate and quarantine)."""
    detail = f"{type(e).__name__}: {e}"
    return StorageUnavailable(detail) if isinstance(e, TRANSIENT) else BatchRejected(detail)


async def commit_flush(
    connection: Callable[[], Awaitable[asyncpg.Connection]],
    batches: Sequence[Batch],
    validator: Validator | None,
    during_copy: Callable[[], None] | None = None,
) -> Flushed:
    """``commit_once`` on the writer's connection, again after a ledger race (up to three
    times), asyncpg's errors translated into ours where they enter."""
    for _ in range(3):
        try:
            return await commit_once(await connection(), batches, validator, during_copy)
        except LedgerRace:
            continue
        except (*TRANSIENT, asyncpg.PostgresError) as e:
            raise _translate(e) from e
    raise StorageError("ledger kept changing under this writer (two writers for one tenant?)")
