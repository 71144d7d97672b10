"""Test clients of the live endpoints: an SSE reader (httpx) and a WebSocket reader (websockets),
both yielding the decoded events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
from websockets.asyncio.client import ClientConnection, connect


async def sse_events(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """Events of an open SSE response; comment lines (heartbeats) come as {"type": ":"}."""
    data: list[str] = []
    async for line in response.aiter_lines():
        if line.startswith(":"):
            yield {"type": ":"}
        elif line.startswith("data: "):
            data.append(line[6:])
        elif line == "" and data:
            yield orjson.loads("\n".join(data))
            data = []


class WsReader:
    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn

    async def next(self, timeout_s: float = 30.0) -> dict[str, Any]:
        ev: dict[str, Any] = orjson.loads(await asyncio.wait_for(self.conn.recv(), timeout_s))
        return ev


def ws_url(api: str, slug: str, **params: Any) -> str:
    q = str(httpx.QueryParams(params)) if params else ""
    return api.replace("http://", "ws://") + f"/v1/tenants/{slug}/ws" + (f"?{q}" if q else "")


def ws_connect(api: str, slug: str, key: str | None = None, **params: Any) -> Any:
    protocols = ["scada.live"] + ([f"scada.bearer.{key}"] if key else [])
    return connect(ws_url(api, slug, **params), subprotocols=protocols, open_timeout=30)  # type: ignore[list-item]
