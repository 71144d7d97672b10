"""One sealed batch -> ``POST /v1/ingest/realtime``, and what the answer means for it.

The answer is sorted into four outcomes, so the agent's loop is one rule per outcome:
- DELIVERED (2xx): landed (committed or durably spooled); the buffer forgets the batch.
  Points the cluster named as rejected are counted; the rest landed.
- RETRY: the link is down, the answer was lost, or the cluster said "later" (429/503 with
  Retry-After, 5xx, 408, a 409 for a first request still running). The same body goes again
  with the same Idempotency-Key, so a batch whose answer was lost is never written twice.
- REFUSED: a 4xx no resend can change (a 400 on this batch's content, 404...): kept aside on
  disk, recorded as a gap.
- STOPPED (401/403): the key is wrong, revoked or lacks the ingest scope. Retrying would change
  nothing and hammer the cluster's auth; pushing stops and says so until the agent restarts.
  Batches bigger than the tenant's limits (413, or 400 on the point count) stop it the same way:
  every batch would be refused alike, and turning the buffer into gaps would lose it all.
"""

from __future__ import annotations

import enum
import ssl
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from ingest.edge.buffer import Sealed
from ingest.edge.encode import NO_UNIT, PushedTag

PUSH_PATH = "/v1/ingest/realtime"


class Outcome(enum.Enum):
    DELIVERED = "delivered"
    RETRY = "retry"
    REFUSED = "refused"
    STOPPED = "stopped"


@dataclass(frozen=True)
class PushResult:
    outcome: Outcome
    status: int | None  # None: no HTTP answer (connect error, timeout, connection dropped)
    message: str
    retry_after_s: float | None = None
    accepted: int = 0
    rejected: int = 0
    rejected_reasons: tuple[str, ...] = ()
    answer: str = ""


def retry_after(headers: httpx.Headers, body: Any) -> float | None:
    """Seconds from ``Retry-After`` (seconds or an HTTP date), else the body's retry_after_seconds."""
    raw = headers.get("retry-after")
    if raw:
        try:
            return max(0.0, float(raw))
        except ValueError:
            try:
                return max(0.0, parsedate_to_datetime(raw).timestamp() - time.time())
            except (TypeError, ValueError):
                pass
    if isinstance(body, dict) and isinstance(body.get("retry_after_seconds"), int | float):
        return float(body["retry_after_seconds"])
    return None


def classify(r: httpx.Response) -> PushResult:
    try:
        body: Any = r.json()
    except ValueError:
        body = None
    text = r.text[:2000]
    code = body.get("error", "") if isinstance(body, dict) else ""
    msg = f"{r.status_code} {code}: {body.get('message', '') if isinstance(body, dict) else text[:200]}"
    s = r.status_code
    if 200 <= s < 300:
        b = body if isinstance(body, dict) else {}
        reasons = tuple(str(x.get("reason", "")) for x in b.get("rejected", []) if isinstance(x, dict))
        return PushResult(
            Outcome.DELIVERED,
            s,
            msg,
            accepted=int(b.get("accepted_count", 0)),
            rejected=int(b.get("rejected_count", 0)),
            rejected_reasons=reasons,
        )
    if s in (401, 403) or _too_big(s, body):
        return PushResult(Outcome.STOPPED, s, msg, answer=text)
    after = retry_after(r.headers, body)
    if s in (408, 429) or s >= 500 or (s == 409 and after is not None):
        return PushResult(Outcome.RETRY, s, msg, retry_after_s=after)
    return PushResult(Outcome.REFUSED, s, msg, answer=text)


def _too_big(status: int, body: Any) -> bool:
    """Batches larger than the tenant allows (413, or 400 naming ``data_points``' count): every
    batch would be refused the same way, so this stops pushing, like a bad key, rather than
    turning the whole buffer into gaps. Lower ``push.max_points`` (or ask for a higher limit)."""
    if status == 413:
        return True
    details = body.get("details", []) if isinstance(body, dict) else []
    return status == 400 and any(
        isinstance(d, dict) and d.get("field") == "data_points" and "at most" in str(d.get("error", ""))
        for d in details
    )


class Pusher:
    def __init__(self, url: str, api_key: str, *, timeout_s: float, verify: bool | str = True) -> None:
        # A CA bundle path becomes an SSL context (httpx 0.28 deprecates verify=<path>).
        tls: bool | ssl.SSLContext = (
            ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify
        )
        self.client = httpx.AsyncClient(
            base_url=url,
            timeout=httpx.Timeout(timeout_s),
            verify=tls,
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": "scada-ingest-edge/1"},
        )

    async def close(self) -> None:
        await self.client.aclose()

    async def push(self, s: Sealed) -> PushResult:
        try:
            r = await self.client.post(
                PUSH_PATH,
                content=s.body,
                headers={
                    "Idempotency-Key": s.key,
                    "Content-Type": "application/json",
                    "Content-Encoding": "gzip",
                },
            )
        except httpx.HTTPError as e:
            # Sent or not, answered or not: unknown. The resend carries the same key.
            return PushResult(Outcome.RETRY, None, f"{type(e).__name__}: {e}"[:300])
        return classify(r)

    async def register_tags(self, tenant: str, tags: list[PushedTag]) -> PushResult:
        """Register the agent's tags (admin scope). STOPPED on 401; a 403 is only a warning:
        the tags may be registered already, or the tenant may create them on first push."""
        try:
            for i in range(0, len(tags), 10_000):
                body = {
                    "tags": [
                        {
                            "well_id": t.well,
                            "parameter_name": t.name,
                            "unit": t.unit if t.unit != NO_UNIT else None,
                        }
                        for t in tags[i : i + 10_000]
                    ]
                }
                r = await self.client.post(f"/v1/tenants/{tenant}/push/tags", json=body)
                if r.status_code != 201:
                    res = classify(r)
                    if r.status_code == 403:
                        return PushResult(Outcome.REFUSED, 403, res.message)
                    return res
        except httpx.HTTPError as e:
            return PushResult(Outcome.RETRY, None, f"{type(e).__name__}: {e}"[:300])
        return PushResult(Outcome.DELIVERED, 201, f"{len(tags)} tags registered")
