"""Live values: Server-Sent Events at ``/v1/tenants/{t}/stream``, a WebSocket at
``/v1/tenants/{t}/ws``, single-use tickets for browsers, and the live page at ``/ui/``.

Both transports send the same events (ingest.live.events): a snapshot of the latest values, then
updates, each with its stream id; ``Last-Event-ID`` (SSE, sent by EventSource itself) or
``since`` resumes after an id. Auth is a ``read`` key in ``Authorization`` (or, for the WebSocket,
the subprotocol ``scada.bearer.<key>`` beside ``scada.live``), or ``?ticket=`` from
``POST .../stream-tickets``; never a key in a URL. A refused WebSocket is refused before the
upgrade: with the API's error body where the server supports denial responses, else with the
HTTP 403 a close before accept gives.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request, WebSocket
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field, ValidationError
from redis.exceptions import RedisError
from starlette.websockets import WebSocketDisconnect

from ingest.core.errors import IngestError, InvalidQuery, StorageUnavailable
from ingest.core.models import Tenant
from ingest.live import tickets
from ingest.live.events import SSE_HEARTBEAT, Wire
from serve_app.deps import Api
from serve_app.errors import classify, error_response, error_responses
from serve_app.live_session import LiveParts, check_since, events, live_tenant, resolve_watch
from serve_app.live_url import LiveUrl
from serve_app.params import TenantRef
from serve_app.routes_read import HotReadTenant, TagIds, TagNames
from serve_app.state import ApiState

log = logging.getLogger(__name__)

UI_DIR = Path(__file__).parent / "ui"
WS_PROTOCOL = "scada.live"
WS_BEARER = "scada.bearer."

router = APIRouter(tags=["live"])


class LiveValueOut(BaseModel):
    tag_id: int
    t_us: int = Field(description="reading time, µs since the epoch (UTC)")
    value: float | str | None = Field(description="null for NaN; text for text tags")
    quality: int = Field(description="as stored (int4)")


class LiveEventOut(BaseModel):
    """One event (the `data:` of an SSE event, or one WebSocket text message)."""

    type: Literal["snapshot", "update", "conflated", "reset", "heartbeat", "closed"]
    id: str | None = Field(None, description="stream id to resume after (`Last-Event-ID` / `since`)")
    commit_us: int | None = Field(None, description="update: when the batch was committed (µs)")
    every: bool | None = Field(None, description="update: holds every value, not only the last per tag")
    values: list[LiveValueOut] | None = None
    skipped: int | None = Field(None, description="conflated: updates folded into the next update")
    reason: str | None = Field(None, description="reset: trimmed | unknown_id; closed: lagging")


class TicketOut(BaseModel):
    ticket: str = Field(description="pass as `?ticket=` to /stream or /ws; single use")
    tenant: str
    expires_in_s: int
    live_url: str | None = Field(
        None,
        description="open /v1/tenants/{t}/stream or /ws on this base URL (an API replica's own port: "
        "events skip Serve's proxy); null: on the address this answer came from",
    )


Since = Annotated[str | None, Query(max_length=41, description="resume after this stream id (an event's `id`)")]
Ticket = Annotated[str | None, Query(max_length=64, description="a ticket from POST .../stream-tickets")]
Well = Annotated[str | None, Query(max_length=200, description="every tag of the well, or those named in `tag`")]
Every = Annotated[
    bool,
    Query(description="every committed value in updates, not only the last per tag (each update says which)"),
]


@router.post(
    "/v1/tenants/{tenant}/stream-tickets",
    response_model=TicketOut,
    status_code=201,
    responses=error_responses(401, 403, 404, 422, 503),
)
async def stream_ticket(t: HotReadTenant, api: Api) -> TicketOut:
    """A single-use ticket for one live connection to this tenant (the `read` scope), for
    browsers, which cannot set headers on EventSource or WebSocket."""
    ttl = api.settings.live_ticket_ttl_s
    try:
        ticket = await tickets.issue(api.redis(), t.id, ttl)
    except (RedisError, OSError) as e:
        raise _unavailable(e) from e
    return TicketOut(ticket=ticket, tenant=t.slug, expires_in_s=ttl, live_url=api.part(LiveUrl).get())


def _unavailable(e: Exception) -> IngestError:
    log.warning("live: Redis unavailable: %s: %s", type(e).__name__, e)
    return StorageUnavailable(f"Redis unavailable: {type(e).__name__}")


@router.get(
    "/v1/tenants/{tenant}/stream",
    response_model=LiveEventOut,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "Server-Sent Events, each `data:` a LiveEventOut",
        },
        **error_responses(401, 403, 404, 406, 422, 503),
    },
)
async def stream(
    request: Request,
    tenant: TenantRef,
    api: Api,
    tag_id: TagIds = None,
    well: Well = None,
    tag: TagNames = None,
    since: Since = None,
    every: Every = False,
    ticket: Ticket = None,
    authorization: Annotated[str | None, Header(description="Bearer <api key>")] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=41)] = None,
) -> Any:
    """Live values as Server-Sent Events: a `snapshot`, then `update`s; a comment line every
    `live_heartbeat_s` when idle. Needs `Accept: text/event-stream` (EventSource sends it)."""
    t = await live_tenant(api, tenant, ticket, authorization)
    if "text/event-stream" not in request.headers.get("accept", ""):
        return error_response(406, "not_acceptable", "a live stream needs Accept: text/event-stream")
    resume = check_since(last_event_id or since)
    watch = await resolve_watch(api, t, tag_id, well, tag)
    body = events(api, t, watch, resume, every)
    try:
        first = await anext(body)  # subscribe and snapshot now, so failures answer a status
    except (RedisError, OSError) as e:
        await body.aclose()
        raise _unavailable(e) from e
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    if ticket is not None:
        # A page served through the proxy opens the stream on the replica's own port (the
        # ticket's live_url): another origin, which EventSource may read only when allowed. The
        # single-use ticket is the credential; no cookie is involved.
        headers["Access-Control-Allow-Origin"] = "*"
    return StreamingResponse(_sse(api, t, first, body), media_type="text/event-stream", headers=headers)


async def _sse(api: ApiState, t: Tenant, first: Wire, body: AsyncGenerator[Wire]) -> Any:
    parts = api.part(LiveParts)
    parts.count(t.slug, "sse", +1)
    try:
        yield first.sse
        async for w in body:
            yield SSE_HEARTBEAT if w.type == "heartbeat" else w.sse
    finally:
        parts.count(t.slug, "sse", -1)
        await body.aclose()


# -- WebSocket ---------------------------------------------------------------------------------
def _ws_credentials(websocket: WebSocket) -> tuple[str | None, str | None]:
    """(Authorization header value, chosen subprotocol) from the header or the subprotocols."""
    auth = websocket.headers.get("authorization")
    offered = [p.strip() for p in websocket.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
    for p in offered:
        if p.startswith(WS_BEARER) and auth is None:
            auth = "Bearer " + p[len(WS_BEARER) :]
    return auth, (WS_PROTOCOL if WS_PROTOCOL in offered else None)


def _ws_query(websocket: WebSocket) -> dict[str, Any]:
    q = websocket.query_params
    try:
        tag_ids = [int(x) for x in q.getlist("tag_id")]
    except ValueError as e:
        raise InvalidQuery("tag_id", "integers") from e
    if any(not 1 <= x <= 2**31 - 1 for x in tag_ids) or len(tag_ids) > 1000:
        raise InvalidQuery("tag_id", "between 1 and 2147483647, at most 1000")
    well = q.get("well")
    if well is not None and len(well) > 200:
        raise InvalidQuery("well", "at most 200 characters")
    names = q.getlist("tag") or None
    every = q.get("every", "false").lower()
    if every not in ("true", "false", "1", "0"):
        raise InvalidQuery("every", "true or false")
    return {"tag_id": tag_ids or None, "well": well, "tag": names, "every": every in ("true", "1")}


async def _refuse(websocket: WebSocket, exc: Exception) -> None:
    status, code = classify(exc)
    message = str(exc) if status < 500 else f"{type(exc).__name__}"
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(error_response(status, code, message))
    else:
        await websocket.close(code=1008 if status < 500 else 1011, reason=message[:120])


@router.websocket("/v1/tenants/{tenant}/ws")
async def live_ws(websocket: WebSocket, tenant: str) -> None:
    api: ApiState = websocket.app.state.api
    auth, protocol = _ws_credentials(websocket)
    try:
        if len(tenant) > 63:
            raise InvalidQuery("tenant", "at most 63 characters")
        t = await live_tenant(api, tenant, websocket.query_params.get("ticket"), auth)
        q = _ws_query(websocket)
        resume = check_since(websocket.query_params.get("since"))
        watch = await resolve_watch(api, t, q["tag_id"], q["well"], q["tag"])
    except (IngestError, ValidationError, RedisError, OSError) as e:
        await _refuse(websocket, e)
        return
    await websocket.accept(subprotocol=protocol)
    parts = api.part(LiveParts)
    parts.count(t.slug, "websocket", +1)

    async def send() -> None:
        async for w in events(api, t, watch, resume, q["every"]):
            await websocket.send_text(w.text)
            if w.type == "closed":
                await websocket.close(code=1013, reason="lagging: reconnect with since")
                return

    # Incoming messages are read (and ignored) only to notice a disconnect while idle.
    sender = asyncio.create_task(send())
    try:
        while not sender.done():
            receive = asyncio.ensure_future(websocket.receive())
            done, _ = await asyncio.wait({receive, sender}, return_when=asyncio.FIRST_COMPLETED)
            if receive not in done:
                receive.cancel()
            elif receive.result()["type"] == "websocket.disconnect":
                break
        if sender.done() and not sender.cancelled() and (failure := sender.exception()) is not None:
            log.warning("live: websocket subscription failed: %s: %s", type(failure).__name__, failure)
            await websocket.close(code=1011, reason="live feed unavailable: reconnect with since")
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        sender.cancel()
        try:
            await sender
        except BaseException:
            pass
        parts.count(t.slug, "websocket", -1)
