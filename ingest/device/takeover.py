"""What lets another actor carry on an OPC UA subscription after its node is lost.

A connection's subscription lives on the server, not in our process: the server keeps it, with
every NotificationMessage we have not acknowledged, until the session times out. So the state a new
owner needs is small, and is kept in Redis as a ``TakeoverRecord`` (endpoint, connection
fingerprint, subscription id, server start time, and ``acked_through``: every message up to it is
committed and acknowledged, none after it is).

That last number is only true because of the order kept here (``AckLedger``): a message's values
are handed to the tenant's batch builder, committed by the writer (``BatchSender`` marks), the
record saying so is written, and only then is the message acknowledged to the server. Whatever a
lost actor held and had not committed is therefore still on the server for the next owner to
Republish; whatever it committed but had not yet acknowledged comes again and is dropped against
the newest stored time of each tag (the "floors" the new owner reads from the tenant database).
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass

import redis.asyncio as aioredis

__all__ = ["AckLedger", "TakeoverHooks", "TakeoverRecord", "TakeoverStore"]

log = logging.getLogger(__name__)

KEY = "scada:takeover:{connection_id}"
TTL_S = 600  # well past any session timeout we ask for: after it the subscription is gone anyway


@dataclass(frozen=True)
class TakeoverRecord:
    connection_id: str
    fingerprint: str  # the connection as configured: an edited one is not taken over
    endpoint: str
    subscription_id: int
    publishing_interval_ms: float
    keepalive_count: int
    acked_through: int  # every NotificationMessage <= this is committed and acknowledged
    server_start_us: int | None  # ServerStatus.StartTime: another value means the server restarted
    owner: str  # which host wrote it (for people reading Redis)
    at: float  # wall time written

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> TakeoverRecord:
        return cls(**json.loads(text))


class TakeoverStore:
    """The records in Redis: one key per connection, written in one pipeline per host tick."""

    def __init__(self, redis_url: str) -> None:
        self._redis = aioredis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)

    async def load(self, connection_id: str) -> TakeoverRecord | None:
        raw = await self._redis.get(KEY.format(connection_id=connection_id))
        return TakeoverRecord.from_json(raw) if raw else None

    async def save(self, records: list[TakeoverRecord]) -> None:
        if not records:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for r in records:
                pipe.set(KEY.format(connection_id=r.connection_id), r.to_json(), ex=TTL_S)
            await pipe.execute()

    async def close(self) -> None:
        await self._redis.aclose()


class AckLedger:
    """One connection's messages between hand-over and acknowledgement.

    ``mark()`` is the host's number of the batch tick that will carry what is handed over now;
    the host calls ``advance`` with the newest tick whose batches are all committed, then saves
    ``pending_record()`` and calls ``saved``. ``ackable`` is what the publish loop may acknowledge.
    With no store (``recorded`` False) committed is enough.
    """

    def __init__(
        self,
        connection_id: str,
        fingerprint: str,
        endpoint: str,
        owner: str,
        mark: Callable[[], int],
        *,
        recorded: bool,
    ) -> None:
        self.connection_id = connection_id
        self.fingerprint = fingerprint
        self.endpoint = endpoint
        self.owner = owner
        self._mark = mark
        self._recorded = recorded
        self._pending: deque[tuple[int, int]] = deque()  # (sequence number, mark), in hand-over order
        self.subscription_id = 0
        self._interval_ms = 0.0
        self._keepalive = 0
        self._server_start_us: int | None = None
        self.committed_through = 0
        self.recorded_through = 0
        self._saved: TakeoverRecord | None = None

    def subscribed(
        self, subscription_id: int, interval_ms: float, keepalive: int, next_seq: int, server_start_us: int | None
    ) -> None:
        """The session works with this subscription now (created, resumed or taken over)."""
        if subscription_id != self.subscription_id:
            self._pending.clear()
            self.committed_through = self.recorded_through = next_seq - 1
            self._saved = None
        self.subscription_id = subscription_id
        self._interval_ms, self._keepalive = interval_ms, keepalive
        self._server_start_us = server_start_us

    def delivered(self, seq: int) -> None:
        self._pending.append((seq, self._mark()))

    def advance(self, committed_mark: int) -> None:
        while self._pending and self._pending[0][1] <= committed_mark:
            seq, _ = self._pending.popleft()
            self.committed_through = max(self.committed_through, seq)

    def ackable(self, subscription_id: int) -> int:
        """Messages of this subscription up to this sequence number may be acknowledged."""
        if subscription_id != self.subscription_id:
            return 0
        return self.recorded_through if self._recorded else self.committed_through

    def pending_record(self) -> TakeoverRecord | None:
        """The record to save, if it says something the saved one does not."""
        if not self.subscription_id:
            return None
        saved = self._saved
        if (
            saved is not None
            and saved.subscription_id == self.subscription_id
            and saved.acked_through == self.committed_through
            and time.time() - saved.at < TTL_S / 3
        ):
            return None
        return TakeoverRecord(
            self.connection_id,
            self.fingerprint,
            self.endpoint,
            self.subscription_id,
            self._interval_ms,
            self._keepalive,
            self.committed_through,
            self._server_start_us,
            self.owner,
            time.time(),
        )

    def has_record(self) -> bool:
        """A record of the current subscription is saved (the next owner can find it)."""
        return self._saved is not None and self._saved.subscription_id == self.subscription_id != 0

    def saved(self, record: TakeoverRecord) -> None:
        self._saved = record
        if record.subscription_id == self.subscription_id:
            self.recorded_through = max(self.recorded_through, record.acked_through)


@dataclass
class TakeoverHooks:
    """What an OPC UA session gets from its host to carry on another owner's subscription."""

    ledger: AckLedger
    # The record left by the connection's previous owner, if it matches this connection.
    load: Callable[[], Awaitable[TakeoverRecord | None]]
    # Tag id -> newest stored time (µs); None when the tenant database cannot say now.
    newest_stored: Callable[[], Awaitable[dict[int, int] | None]]
