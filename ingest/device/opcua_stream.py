"""The publish loop of one subscription: sequence numbers, Republish, backfill, hand-over.

One PublishRequest is outstanding at a time; it carries the acknowledgements of every
NotificationMessage handled so far whose acknowledgement the server has not yet taken. A gap in
the sequence numbers (a message sent on a connection that died) is fetched again with Republish
before anything newer is handed over, so every tag sees its values in order. A message the
server can no longer send opens a gap for every tag (``GapTracker``): each tag's next value says
where its gap ends; ``_backfill`` reads the interval back with HistoryRead where the node keeps
history, and whatever is left is reported through ``on_gap``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaError, UaStatusCodeError

from ingest.core.errors import DeviceUnreachable
from ingest.device import opcua_service as svc
from ingest.device.opcua_values import (
    GAP_CAUSES,
    UNSEEN,
    GapFind,
    GapTracker,
    Readings,
    decode_history,
    decode_notifications,
    from_us,
    now_us,
)
from ingest.device.takeover import AckLedger

__all__ = ["NotificationStream"]

_log = logging.getLogger(__name__)

I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]
ValuesCallback = Callable[[I32, I64, npt.NDArray[np.float64], I32], None]
TextCallback = Callable[[I32, I64, list[str], I32], None]
GapCallback = Callable[[I32, I64, I64], None]
_BAD = 0x80000000


class NotificationStream:
    """Turns one subscription's publish responses into callback calls; outlives connections."""

    def __init__(
        self,
        endpoint: str,
        items: Sequence[svc.ItemSpec],
        tag_ids: I32,
        on_values: ValuesCallback,
        on_text: TextCallback | None,
        on_gap: GapCallback | None,
        stats: dict[str, Any],
        *,
        history_backfill: bool,
    ) -> None:
        self.endpoint = endpoint
        self._items = items
        self._tag_ids = tag_ids
        self._on_values = on_values
        self._on_text = on_text
        self._on_gap = on_gap
        self._stats = stats
        self._history_backfill = history_backfill
        self.gaps = GapTracker(len(items))
        self.historized: npt.NDArray[np.bool_] | None = None  # per tag; None = not read yet
        self.last_response = time.monotonic()  # the server last answered us (stall detection)
        self.progress = False  # a response for our subscription arrived (per connection)
        self._gap_warned = False
        # Acknowledge a message only once its values are committed (and recorded): a new owner
        # of the subscription can then Republish whatever this process had not stored.
        self.ack_gate: AckLedger | None = None
        # Per handle: the newest time already stored (from the tenant database), while a tag has
        # not gone past it: values at or before it are duplicates of stored ones.
        self._floor: I64 | None = None

    def set_floors(self, newest: dict[int, int]) -> None:
        """The newest stored time of each tag (by tag id): where its history in our database ends.

        A taken-over subscription re-sends what was committed but not yet acknowledged, and a
        new monitored item re-sends the current value: both are dropped against these. A gap
        opened later starts there too, so HistoryRead and markers cover exactly what is missing.
        """
        floor = np.full(len(self._items), UNSEEN, dtype=np.int64)
        for h, tag in enumerate(self._tag_ids.tolist()):
            t = newest.get(int(tag))
            if t is not None:
                floor[h] = t
        np.maximum(self.gaps.last_time, floor, out=self.gaps.last_time)
        self._floor = floor if (floor != UNSEEN).any() else None

    def _above_floor(self, r: Readings) -> Readings:
        floor = self._floor
        if floor is None or not len(r):
            return r
        keep = r.times > floor[r.handles]
        if not keep.all():
            self._stats["duplicates_dropped"] += int((~keep).sum())
            r = r.select(keep)
        known = floor != UNSEEN
        if (self.gaps.last_time[known] > floor[known]).all():
            self._floor = None  # every tag has gone past what was stored
        return r

    async def run(self, client: Client, sub: svc.SubscriptionState) -> None:
        """The publish loop; returns never, raises when the connection or subscription is lost."""
        while True:
            acks = sorted(sub.unacked)
            if self.ack_gate is not None:
                limit = self.ack_gate.ackable(sub.id)
                acks = [a for a in acks if a <= limit]
            try:
                response = await client.uaclient.publish(
                    [ua.SubscriptionAcknowledgement(SubscriptionId=sub.id, SequenceNumber=s) for s in acks]
                )
            except UaStatusCodeError as exc:
                if exc.code in (StatusCodes.BadTimeout, StatusCodes.BadTooManyPublishRequests):
                    continue  # the server let this request go; send another
                raise
            sub.unacked.difference_update(acks)
            self.last_response = time.monotonic()
            self._stats["publishes_received"] += 1
            result = response.Parameters
            if result.SubscriptionId == 0:
                raise DeviceUnreachable("server reports no subscription for this session")
            if result.SubscriptionId != sub.id:
                # One we gave up on (or that a failed connect left half made): it would share
                # our PublishRequests for as long as it lives, so delete it.
                with contextlib.suppress(UaError):
                    await client.uaclient.delete_subscriptions([result.SubscriptionId])
                continue
            self.progress = True
            status = await self._handle(client, sub, result)
            if status is not None:
                # BadTimeout: the server dropped the subscription. The next connection finds it
                # gone and re-creates it.
                raise DeviceUnreachable(f"subscription status {status}")

    async def _handle(
        self, client: Client, sub: svc.SubscriptionState, result: ua.PublishResult
    ) -> ua.StatusCode | None:
        """Check the sequence number, fetch what is missing, then hand everything over.

        Everything that waits on the server (Republish, HistoryRead) comes first; delivery and
        bookkeeping follow without a pause, so a cancelled task never half-delivers a message.
        Returns a Bad subscription status if the server sent one.
        """
        msg = result.NotificationMessage
        seq = int(msg.SequenceNumber)
        has_data = bool(msg.NotificationData)
        expected = sub.next_seq
        if has_data and seq < expected:
            sub.unacked.add(seq)  # handled already (it came again after a Republish)
            return None
        # A keep-alive carries the next sequence number, a message its own: both show a gap.
        messages: list[tuple[int, ua.NotificationMessage]] = []
        lost = 0
        available = set(result.AvailableSequenceNumbers or ())
        for missing in range(expected, seq):
            again: ua.NotificationMessage | None = None
            if missing in available:
                with contextlib.suppress(UaStatusCodeError):  # BadMessageNotAvailable
                    again = await client.uaclient.session.republish(sub.id, missing)
                self.last_response = time.monotonic()
            if again is not None and again.NotificationData:
                messages.append((missing, again))
            else:
                lost += 1
        if has_data:
            messages.append((seq, msg))
        if lost:
            _log.warning("opcua %s: %d notification messages lost", self.endpoint, lost)
            self._stats["lost_messages"] += lost
            self.gaps.open_all("messages_unavailable")
        parts: list[Readings] = []
        status: ua.StatusCode | None = None
        for _, message in messages:
            for notif in message.NotificationData or ():
                if isinstance(notif, ua.DataChangeNotification) and notif.MonitoredItems:
                    parts.append(decode_notifications(notif.MonitoredItems, text=self._on_text is not None))
                elif isinstance(notif, ua.StatusChangeNotification):
                    if notif.Status is not None and not notif.Status.is_good():
                        status = notif.Status
        readings = self._above_floor(self._known(Readings.concat(parts)))
        found = self.gaps.find(readings)
        backfill, gap_idx = await self._backfill(client, found)
        # --- no awaits from here on ---
        self.deliver(backfill)
        self._report_gaps(found, gap_idx)
        kept = readings.select(found.keep)
        self._stats["duplicates_dropped"] += len(readings) - len(kept)
        self.deliver(kept)
        self.gaps.close(found.closing)
        self.gaps.observe(backfill)
        self.gaps.observe(kept)
        sub.unacked.update(m for m, _ in messages)
        if self.ack_gate is not None:
            for m, _ in messages:
                self.ack_gate.delivered(m)
        self._stats["republished"] += len(messages) - int(has_data)
        sub.next_seq = max(expected, seq + 1 if has_data else seq)
        return status

    def _known(self, r: Readings) -> Readings:
        known = (r.handles >= 0) & (r.handles < len(self._items))
        if known.all():
            return r
        _log.warning("opcua %s: %d values for unknown handles", self.endpoint, int((~known).sum()))
        return r.select(known)

    async def _backfill(self, client: Client, found: GapFind) -> tuple[Readings, I64]:
        """History for the gaps of nodes that keep it: (values, indices of the gaps left)."""
        left = np.arange(len(found.handles), dtype=np.int64)
        if not len(left) or not self._history_backfill:
            return Readings.empty(), left
        try:
            if self.historized is None:
                readable = await svc.read_history_readable(client, [it.node_id for it in self._items])
                self.historized = np.array(readable, dtype=np.bool_)
            candidates = left[self.historized[found.handles]]
            if not len(candidates):
                return Readings.empty(), left
            requests = [
                (
                    self._items[int(found.handles[i])].node_id,
                    from_us(int(found.from_us[i])),
                    from_us(int(found.to_us[i])),
                )
                for i in candidates
            ]
            results = await svc.history_read_raw(client, requests, self._alive)
        except UaStatusCodeError as exc:
            # The server said no; a broken connection on the other hand propagates, and the
            # message is handled again (Republish, or a fresh gap) on the next connection.
            _log.warning("opcua %s: history read failed (%s); reporting gaps", self.endpoint, exc)
            return Readings.empty(), left
        finally:
            self.last_response = time.monotonic()
        parts: list[Readings] = []
        done = np.zeros(len(left), dtype=np.bool_)
        for i, (dvs, code) in zip(candidates.tolist(), results, strict=True):
            if code & _BAD:
                continue
            r = decode_history(int(found.handles[i]), dvs, text=self._on_text is not None)
            parts.append(r.select((r.times > found.from_us[i]) & (r.times < found.to_us[i])))
            done[i] = True
        backfill = Readings.concat(parts)
        self._stats["backfilled"] += len(backfill)
        return backfill, left[~done]

    def _alive(self) -> None:
        self.last_response = time.monotonic()

    # --- handing over --------------------------------------------------------------------------

    def report_failed_items(self, failed: list[tuple[int, int]]) -> None:
        """A tag the server will not monitor (unknown node, access denied) becomes one visible
        Bad reading with the server's status, instead of silently never reporting."""
        self._stats["failed_items"] += len(failed)
        for h, code in failed[:10]:
            _log.warning(
                "opcua %s: cannot monitor tag %s (%s): %s",
                self.endpoint,
                int(self._tag_ids[h]),
                self._items[h].node_id.to_string(),
                ua.StatusCode(ua.UInt32(code)),
            )
        n = len(failed)
        handles = np.fromiter((h for h, _ in failed), dtype=np.int64, count=n)
        self.gaps.close(handles)
        self.emit_values(
            self._tag_ids[handles],
            np.full(n, now_us(), dtype=np.int64),
            np.full(n, np.nan, dtype=np.float64),
            np.fromiter((c for _, c in failed), dtype=np.uint32, count=n).view(np.int32),
        )

    def deliver(self, r: Readings) -> None:
        if not len(r):
            return
        self._stats["bad_values"] += int(((r.quality & _BAD) != 0).sum())
        if r.is_text.any():
            t = r.select(r.is_text)
            r = r.select(~r.is_text)
            texts = [s or "" for s in t.texts]
            self._emit_text(self._tag_ids[t.handles], t.times, texts, t.quality.view(np.int32))
        if len(r):
            self.emit_values(self._tag_ids[r.handles], r.times, r.values, r.quality.view(np.int32))

    def _report_gaps(self, found: GapFind, idx: I64) -> None:
        if not len(idx):
            return
        self._stats["gaps"] += len(idx)
        causes = np.bincount(self.gaps.cause[found.handles[idx]], minlength=len(GAP_CAUSES))
        for name, n in zip(GAP_CAUSES, causes.tolist(), strict=True):
            self._stats[f"gaps_{name}"] += n
        if self._on_gap is None:
            if not self._gap_warned:
                _log.warning("opcua %s: readings lost and no on_gap consumer", self.endpoint)
                self._gap_warned = True
            return
        try:
            self._on_gap(self._tag_ids[found.handles[idx]], found.from_us[idx], found.to_us[idx])
        except Exception:
            self._stats["callback_errors"] += 1
            _log.exception("opcua %s: on_gap raised", self.endpoint)

    def emit_values(self, tag_ids: I32, times: I64, values: npt.NDArray[np.float64], quality: I32) -> None:
        self._stats["values_received"] += int(tag_ids.shape[0])
        try:
            self._on_values(tag_ids, times, values, quality)
        except Exception:
            # The consumer failed on this chunk; count it loudly. Reconnecting would not help.
            self._stats["callback_errors"] += 1
            _log.exception("opcua %s: on_values raised", self.endpoint)

    def _emit_text(self, tag_ids: I32, times: I64, texts: list[str], quality: I32) -> None:
        assert self._on_text is not None
        self._stats["text_values"] += len(texts)
        try:
            self._on_text(tag_ids, times, texts, quality)
        except Exception:
            self._stats["callback_errors"] += 1
            _log.exception("opcua %s: on_text raised", self.endpoint)
