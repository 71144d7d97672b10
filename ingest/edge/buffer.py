"""The edge agent's store-and-forward buffer: SQLite in WAL mode, every reading on disk before it
is sent, sent oldest first, deleted only after the cluster's 2xx, bounded by bytes and by age.

Tables, in the order a reading passes through them:
- ``staged``: micro-batches as the device sessions cut them (columns blob, ``encode.pack``),
  written every ``batch_interval_ms``; ``last_seen`` (newest reading per tag) in the same
  transaction, for the session-start gap check after a restart.
- ``sealed``: the push bodies, each with its Idempotency-Key, cut from the oldest staged rows
  (and any pending gaps) just before sending. The body is kept, not rebuilt, so a resend after a
  restart is byte-identical and the cluster answers it again instead of writing it twice.
- ``gaps``: what the bounds dropped, one open gap per tag (first time, readings lost), until the
  next seal carries it to the cluster as a ``DATA_LOST`` marker. Dropping oldest-first extends
  a tag's open gap, so a long outage costs one marker per tag, not one per dropped batch.
- ``rejected``: bodies the cluster refused for good (a 4xx other than 401/403/429); kept on disk
  for the operator, their readings recorded as gaps.

Durability: ``synchronous=FULL``. In WAL mode NORMAL keeps the file consistent but may roll back
the last commits after a power cut; here a commit is the only copy of readings the device has
already moved past, so each commit (about ten a second) waits for its fsync.

Not thread-safe: the agent calls it from one worker thread.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ingest.core.batch import ReadingBatch, per_tag
from ingest.core.models import GAP_QUALITY
from ingest.edge.encode import (
    Gap,
    PushedTag,
    as_gaps,
    decode_gaps,
    encode_gaps,
    pack,
    push_body,
    unpack,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tags (
    id INTEGER PRIMARY KEY, well TEXT NOT NULL, name TEXT NOT NULL, unit TEXT, UNIQUE (well, name));
CREATE TABLE IF NOT EXISTS staged (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, created_s REAL NOT NULL, rows INTEGER NOT NULL,
    bytes INTEGER NOT NULL, cols BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS sealed (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE, created_s REAL NOT NULL,
    rows INTEGER NOT NULL, markers INTEGER NOT NULL, bytes INTEGER NOT NULL, body BLOB NOT NULL,
    dropped BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS gaps (tag_id INTEGER PRIMARY KEY, first_us INTEGER NOT NULL, lost REAL);
CREATE TABLE IF NOT EXISTS rejected (
    seq INTEGER PRIMARY KEY, key TEXT NOT NULL, at_s REAL NOT NULL, status INTEGER NOT NULL,
    answer TEXT NOT NULL, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS last_seen (tag_id INTEGER PRIMARY KEY, time_us INTEGER NOT NULL);
"""
_ROW_OVERHEAD = 64  # bytes a buffered batch costs beyond its payload (row, index entry), roughly


@dataclass(frozen=True)
class Sealed:
    seq: int
    key: str  # the Idempotency-Key
    rows: int  # points in the body, gap markers included
    markers: int
    body: bytes  # gzipped JSON


@dataclass
class BufferStats:
    rows: int
    bytes: int
    oldest_age_s: float
    file_bytes: int
    sealed: int
    open_gaps: int
    gap_readings: float  # readings recorded as lost, since the buffer file was created
    gap_markers: int


class EdgeBuffer:
    def __init__(
        self,
        path: str | Path,
        tenant: str,
        *,
        max_bytes: int,
        max_age_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.tenant = tenant
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self._clock = clock
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA)
        with self._tx():
            row = self.db.execute("SELECT v FROM meta WHERE k = 'agent_id'").fetchone()
            if row is None:
                # Names this buffer's keys; a new file (a new agent) never reuses an old key.
                self.agent_id = secrets.token_hex(6)
                self.db.execute("INSERT INTO meta VALUES ('agent_id', ?)", (self.agent_id,))
            else:
                self.agent_id = str(row[0])
        self._tags: dict[int, PushedTag] = {}
        self._load_tags()
        self.bytes = self._sum("bytes")
        self.rows = self._sum("rows")

    def close(self) -> None:
        self.db.close()

    def _tx(self) -> sqlite3.Connection:
        # isolation_level=None: we open transactions ourselves; `with db:` commits or rolls back.
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def _sum(self, col: str) -> int:
        a = self.db.execute(f"SELECT coalesce(sum({col}), 0) FROM staged").fetchone()[0]
        b = self.db.execute(f"SELECT coalesce(sum({col}), 0) FROM sealed").fetchone()[0]
        return int(a) + int(b)

    def _counter(self, k: str) -> float:
        row = self.db.execute("SELECT v FROM meta WHERE k = ?", (k,)).fetchone()
        return float(row[0]) if row else 0.0

    def _bump(self, k: str, by: float) -> None:
        self.db.execute(
            "INSERT INTO meta VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = CAST(v AS REAL) + ?", (k, by, by)
        )

    # -- tags ---------------------------------------------------------------------------------
    def register_tags(self, tags: list[PushedTag]) -> dict[tuple[str, str], int]:
        """Stable local ids for (well, name): kept in the file, so buffered readings of a tag
        removed from the config are still sent under its name after a restart."""
        with self._tx():
            for t in tags:
                self.db.execute(
                    "INSERT INTO tags (well, name, unit) VALUES (?, ?, ?) "
                    "ON CONFLICT (well, name) DO UPDATE SET unit = excluded.unit",
                    (t.well, t.name, t.unit),
                )
        self._load_tags()
        return {(t.well, t.name): i for i, t in self._tags.items()}

    def _load_tags(self) -> None:
        rows = self.db.execute("SELECT id, well, name, unit FROM tags").fetchall()
        self._tags = {int(r[0]): PushedTag(r[1], r[2], r[3]) for r in rows}

    def last_seen(self) -> dict[int, int]:
        return {int(t): int(us) for t, us in self.db.execute("SELECT tag_id, time_us FROM last_seen")}

    # -- in -----------------------------------------------------------------------------------
    def append(self, b: ReadingBatch) -> float:
        """Keep a batch (durably, once this returns); returns readings dropped at the bounds."""
        if len(b) == 0:
            return 0.0
        blob = pack(b)
        now = self._clock()
        live = b.quality != GAP_QUALITY
        with self._tx():
            self.db.execute(
                "INSERT INTO staged (created_s, rows, bytes, cols) VALUES (?, ?, ?, ?)",
                (now, len(b), len(blob) + _ROW_OVERHEAD, blob),
            )
            if live.any():
                last, _ = per_tag(b.tag_id[live], b.time_us[live], last=True)
                pairs = zip(b.tag_id[live][last].tolist(), b.time_us[live][last].tolist(), strict=True)
                self.db.executemany(
                    "INSERT INTO last_seen VALUES (?, ?) ON CONFLICT (tag_id) "
                    "DO UPDATE SET time_us = max(time_us, excluded.time_us)",
                    list(pairs),
                )
        self.bytes += len(blob) + _ROW_OVERHEAD
        self.rows += len(b)
        return self.enforce_bounds()

    def record_gaps(self, gaps: list[Gap]) -> None:
        """Readings lost before they reached the buffer (e.g. text values the push cannot carry)."""
        with self._tx():
            self._add_gaps(gaps)

    def _add_gaps(self, gaps: list[Gap]) -> None:
        for tag, first_us, lost, new in gaps:
            # A tag's open gap grows: earliest start, counts added; unknown (NULL) stays unknown.
            self.db.execute(
                "INSERT INTO gaps VALUES (?, ?, ?) ON CONFLICT (tag_id) DO UPDATE SET "
                "first_us = min(first_us, excluded.first_us), lost = lost + excluded.lost",
                (tag, first_us, lost),
            )
            if new:
                self._bump("gap_markers", 1)
                if lost is not None:
                    self._bump("gap_readings", lost)

    # -- bounds -------------------------------------------------------------------------------
    def enforce_bounds(self) -> float:
        """Drop the oldest batches while over ``max_bytes`` or older than ``max_age_s``; what is
        dropped becomes a gap. Returns the readings dropped."""
        dropped = 0.0
        cutoff = self._clock() - self.max_age_s
        while True:
            victim = self._oldest()
            if victim is None:
                break
            table, seq, created, rows, nbytes = victim
            if self.bytes <= self.max_bytes and created >= cutoff:
                break
            with self._tx():
                if table == "sealed":
                    blob = self.db.execute("SELECT dropped FROM sealed WHERE seq = ?", (seq,)).fetchone()[0]
                    gaps = decode_gaps(blob)
                else:
                    (cols,) = self.db.execute("SELECT cols FROM staged WHERE seq = ?", (seq,)).fetchone()
                    gaps = as_gaps(unpack(cols, rows))
                self.db.execute(f"DELETE FROM {table} WHERE seq = ?", (seq,))
                self._add_gaps(gaps)
            self.bytes -= nbytes
            self.rows -= rows
            dropped += sum(g[2] or 0.0 for g in gaps if g[3])
        return dropped

    def _oldest(self) -> tuple[str, int, float, int, int] | None:
        # Sealed batches were cut from the oldest staged rows, so they go first.
        r = self.db.execute("SELECT seq, created_s, rows, bytes FROM sealed ORDER BY seq LIMIT 1").fetchone()
        if r is not None:
            return ("sealed", int(r[0]), float(r[1]), int(r[2]), int(r[3]))
        r = self.db.execute("SELECT seq, created_s, rows, bytes FROM staged ORDER BY seq LIMIT 1").fetchone()
        if r is not None:
            return ("staged", int(r[0]), float(r[1]), int(r[2]), int(r[3]))
        return None

    # -- out ----------------------------------------------------------------------------------
    def next_batch(self, max_points: int, due_s: float, skip: frozenset[int] = frozenset()) -> Sealed | None:
        """The oldest sealed batch not in ``skip`` (those in flight); else, once something has
        waited ``due_s`` (or a full batch is there), a new one sealed from the oldest staged
        rows and the open gaps."""
        rows = self.db.execute(
            "SELECT seq, key, rows, markers, body FROM sealed ORDER BY seq LIMIT ?", (len(skip) + 1,)
        )
        for r in rows.fetchall():
            if int(r[0]) not in skip:
                return Sealed(int(r[0]), str(r[1]), int(r[2]), int(r[3]), bytes(r[4]))
        # By seq, the oldest first; staged readings are the held ones not sealed.
        first = self.db.execute("SELECT created_s FROM staged ORDER BY seq LIMIT 1").fetchone()
        n_gaps = self.db.execute("SELECT count(*) FROM gaps").fetchone()[0]
        if first is None and not n_gaps:
            return None
        staged = self.rows - int(self.db.execute("SELECT coalesce(sum(rows), 0) FROM sealed").fetchone()[0])
        oldest = float(first[0]) if first is not None else float("inf")
        if staged < max_points and self._clock() - oldest < due_s and not n_gaps:
            return None
        return self._seal(max_points)

    def _seal(self, max_points: int) -> Sealed:
        parts: list[ReadingBatch] = []
        created = self._clock()
        with self._tx():
            gap_rows = self.db.execute(
                "SELECT tag_id, first_us, lost FROM gaps ORDER BY tag_id LIMIT ?", (max_points,)
            ).fetchall()
            if gap_rows:
                self.db.executemany("DELETE FROM gaps WHERE tag_id = ?", [(int(g[0]),) for g in gap_rows])
                n = len(gap_rows)
                parts.append(
                    ReadingBatch(
                        "gaps",
                        np.array([g[1] for g in gap_rows], np.int64),
                        np.array([g[0] for g in gap_rows], np.int32),
                        np.array([np.nan if g[2] is None else g[2] for g in gap_rows], np.float64),
                        np.full(n, GAP_QUALITY, np.int32),
                    )
                )
            room = max_points - len(gap_rows)
            freed_bytes = freed_rows = 0
            for seq, created_s, rows, nbytes, cols in self._oldest_staged(room):
                if room <= 0:
                    break
                b = unpack(cols, rows)
                created = min(created, float(created_s))
                if rows <= room:
                    parts.append(b)
                    self.db.execute("DELETE FROM staged WHERE seq = ?", (seq,))
                    freed_bytes, freed_rows, room = freed_bytes + nbytes, freed_rows + rows, room - rows
                    continue
                head, tail = _split(b, room)
                parts.append(head)
                rest = pack(tail)
                self.db.execute(
                    "UPDATE staged SET rows = ?, bytes = ?, cols = ? WHERE seq = ?",
                    (len(tail), len(rest) + _ROW_OVERHEAD, rest, seq),
                )
                freed_bytes += nbytes - len(rest) - _ROW_OVERHEAD
                freed_rows += room
                room = 0
            batch = ReadingBatch.concat("sealed", parts) if len(parts) > 1 else parts[0]
            body, markers = push_body(self.tenant, batch, self._tags)
            dropped = encode_gaps(as_gaps(batch))
            seq = int(self._counter("next_seal")) + 1  # never reused, even after the row is gone
            key = f"edge-{self.agent_id}-{seq}"
            nbytes = len(body) + len(dropped) + _ROW_OVERHEAD
            self.db.execute(
                "INSERT INTO sealed (seq, key, created_s, rows, markers, bytes, body, dropped) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (seq, key, created, len(batch), markers, nbytes, body, dropped),
            )
            self.db.execute(
                "INSERT INTO meta VALUES ('next_seal', ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v", (seq,)
            )
        self.bytes += nbytes - freed_bytes
        self.rows += len(batch) - freed_rows
        return Sealed(seq, key, len(batch), markers, body)

    def _oldest_staged(self, rows: int) -> list[tuple[int, float, int, int, bytes]]:
        """The oldest staged batches holding at least ``rows`` readings (a few, never the table:
        after a week offline it holds millions)."""
        out: list[tuple[int, float, int, int, bytes]] = []
        after, have = 0, 0
        while have < rows:
            chunk = self.db.execute(
                "SELECT seq, created_s, rows, bytes, cols FROM staged WHERE seq > ? ORDER BY seq LIMIT 64",
                (after,),
            ).fetchall()
            if not chunk:
                break
            for r in chunk:
                out.append((int(r[0]), float(r[1]), int(r[2]), int(r[3]), bytes(r[4])))
                have += int(r[2])
                if have >= rows:
                    break
            after = out[-1][0]
        return out

    def delivered(self, s: Sealed) -> None:
        """The cluster answered 2xx: the batch is landed, forget it."""
        with self._tx():
            cur = self.db.execute("DELETE FROM sealed WHERE seq = ? RETURNING rows, bytes", (s.seq,))
            row = cur.fetchone()
        if row is not None:
            self.rows -= int(row[0])
            self.bytes -= int(row[1])

    def refused(self, s: Sealed, status: int, answer: str) -> None:
        """The cluster refused the batch for good: keep it aside, record its readings as gaps."""
        with self._tx():
            row = self.db.execute("SELECT rows, bytes, dropped FROM sealed WHERE seq = ?", (s.seq,)).fetchone()
            if row is None:
                return
            self.db.execute(
                "INSERT OR REPLACE INTO rejected VALUES (?, ?, ?, ?, ?, ?)",
                (s.seq, s.key, self._clock(), status, answer[:4000], s.body),
            )
            self.db.execute("DELETE FROM sealed WHERE seq = ?", (s.seq,))
            self._add_gaps(decode_gaps(row[2]))
        self.rows -= int(row[0])
        self.bytes -= int(row[1])

    def stats(self) -> BufferStats:
        firsts = [
            r[0]
            for t in ("sealed", "staged")
            if (r := self.db.execute(f"SELECT created_s FROM {t} ORDER BY seq LIMIT 1").fetchone()) is not None
        ]
        oldest = min(firsts) if firsts else None
        page = (
            self.db.execute("PRAGMA page_size").fetchone()[0] * self.db.execute("PRAGMA page_count").fetchone()[0]
        )
        wal = self.path.with_name(self.path.name + "-wal")
        return BufferStats(
            rows=self.rows,
            bytes=self.bytes,
            oldest_age_s=max(0.0, self._clock() - oldest) if oldest is not None else 0.0,
            file_bytes=int(page) + (wal.stat().st_size if wal.exists() else 0),
            sealed=int(self.db.execute("SELECT count(*) FROM sealed").fetchone()[0]),
            open_gaps=int(self.db.execute("SELECT count(*) FROM gaps").fetchone()[0]),
            gap_readings=self._counter("gap_readings"),
            gap_markers=int(self._counter("gap_markers")),
        )


def _split(b: ReadingBatch, n: int) -> tuple[ReadingBatch, ReadingBatch]:
    def cut(s: slice) -> ReadingBatch:
        return ReadingBatch(b.batch_id, b.time_us[s], b.tag_id[s], b.value[s], b.quality[s])

    return cut(slice(0, n)), cut(slice(n, None))
