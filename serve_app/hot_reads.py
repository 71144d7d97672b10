"""The two hot reads (``GET .../latest`` and ``GET .../readings`` as JSON), answered in front of
FastAPI's routing when a request is plainly valid.

A dashboard asks for the same latest values and trends again and again. Through FastAPI a
request costs its routing over every route of the API, dependency resolution and parameter
validation: about a third of the replica's CPU for latest values of 100 tags (README, read
side). This ASGI middleware answers the request itself when every part of it is one FastAPI
would accept and parse the same way: the path, a caller key this replica checked less than
``AUTH_TTL_S`` ago (``PrincipalCache.peek``), query parameters of the plain forms (decimal ids
and counts, ISO 8601 times with a zone, known resolutions). The work is then the routes' own
(``routes_read.latest_json`` / ``readings_json``), so the body is the same bytes.

Anything else goes on to FastAPI untouched, which answers it as before: a key not yet checked, a
value FastAPI would refuse or might read differently, a repeated single parameter, CSV, and any
error raised while answering (an unknown tag, another tenant's key, a database away): the request
is then answered again by the route, which renders the error in the API's one shape. Reads have
no side effects, so answering again is safe. ``tests/test_hot_reads.py`` compares both ways.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import datetime
from typing import Any, get_args
from urllib.parse import parse_qsl

from ingest.core.metrics import Metrics, safe
from serve_app.deps import authorize
from serve_app.params import INT4_MAX, as_utc
from serve_app.routes_read import (
    COUNT_MAX,
    CURSOR_MAX,
    LIMIT_DEFAULT,
    MAX_POINTS_DEFAULT,
    NAME_MAX,
    Days,
    ReadCaches,
    Resolution,
    latest_json,
    readings_json,
    readings_request,
)
from serve_app.state import ApiState

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_PATH = re.compile(r"/v1/tenants/([a-z0-9][a-z0-9_-]{1,63})/(latest|readings)")
_COUNT = re.compile(r"[1-9][0-9]{0,9}")
_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?(?:Z|[+-]\d\d:\d\d)")
_LISTS = frozenset({"tag_id", "tag"})
_RESOLUTIONS = frozenset(get_args(Resolution))
_DAYS = frozenset(get_args(Days))
_JSON_HEADERS = [(b"content-type", b"application/json")]


FLUSH_S = 10.0


class HotReadCounts:
    """This replica's hot reads by kind and outcome (answered here, or referred to the route),
    and its rollup cache's hits and misses: counted here, handed to the metrics
    (``scada_hot_reads_total``, ``scada_read_cache_total``) at most every ``FLUSH_S`` seconds,
    since a Ray metric update per request would cost more than the counting (``api.part``)."""

    def __init__(self, api: ApiState) -> None:
        self.rollups = api.part(ReadCaches).rollups
        self.counts: Counter[tuple[str, str]] = Counter()
        self._sent: Counter[tuple[str, str]] = Counter()
        self._cache_sent = (0, 0)
        self._at = time.monotonic()

    @property
    def answered(self) -> int:
        return sum(n for (_, outcome), n in self.counts.items() if outcome == "answered")

    def count(self, kind: str, outcome: str) -> None:
        self.counts[kind, outcome] += 1
        if time.monotonic() - self._at >= FLUSH_S:
            self.flush()

    def flush(self) -> None:
        self._at = time.monotonic()
        m = Metrics.get()
        for (kind, outcome), n in self.counts.items():
            if n > self._sent[kind, outcome]:
                safe(m.hot_reads.inc, n - self._sent[kind, outcome], {"kind": kind, "outcome": outcome})
        self._sent = Counter(self.counts)
        hits, misses = self.rollups.hits, self.rollups.misses
        for outcome, n, sent in (("hit", hits, self._cache_sent[0]), ("miss", misses, self._cache_sent[1])):
            if n > sent:
                safe(m.read_cache.inc, n - sent, {"outcome": outcome})
        self._cache_sent = (hits, misses)


class _Refer(Exception):
    """The request is FastAPI's to answer."""


def _params(query: bytes) -> dict[str, list[str]]:
    # As Starlette reads a query string (QueryParams): latin-1, blank values kept.
    out: dict[str, list[str]] = {}
    for k, v in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        out.setdefault(k, []).append(v)
    for k, vs in out.items():
        if len(vs) > 1 and k not in _LISTS:
            raise _Refer  # which of them FastAPI takes is FastAPI's business
    return out


def _one(p: dict[str, list[str]], name: str) -> str | None:
    v = p.get(name)
    return None if v is None else v[0]


def _count(p: dict[str, list[str]], name: str, default: int, most: int) -> int:
    v = _one(p, name)
    if v is None:
        return default
    if not _COUNT.fullmatch(v) or int(v) > most:
        raise _Refer
    return int(v)


def _ids(p: dict[str, list[str]]) -> list[int] | None:
    vs = p.get("tag_id")
    if vs is None:
        return None
    ids = [int(v) for v in vs if _COUNT.fullmatch(v)]
    if len(ids) < len(vs) or any(i > INT4_MAX for i in ids):
        raise _Refer
    return ids


def _names(p: dict[str, list[str]]) -> tuple[str | None, list[str] | None]:
    well, names = _one(p, "well"), p.get("tag")
    if (well is not None and len(well) > NAME_MAX) or (
        names is not None and (len(names) > NAME_MAX or any(len(n) > NAME_MAX for n in names))
    ):
        raise _Refer
    return well, names


def _time(p: dict[str, list[str]], name: str) -> datetime | None:
    v = _one(p, name)
    if v is None:
        return None
    if not _TIME.fullmatch(v):
        raise _Refer
    try:
        return as_utc(datetime.fromisoformat(v))
    except ValueError:
        raise _Refer from None


def _choice(p: dict[str, list[str]], name: str, default: str, allowed: frozenset[str]) -> str:
    v = _one(p, name)
    if v is None:
        return default
    if v not in allowed:
        raise _Refer
    return v


def _route_path(scope: Scope) -> str:
    # As Starlette routes: the path below the root path (Serve sets root_path to the route prefix).
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def _header(scope: Scope, name: bytes) -> str | None:
    found = [v for k, v in scope["headers"] if k == name]
    if len(found) > 1:
        raise _Refer
    return found[0].decode("latin-1") if found else None


async def _answer(api: ApiState, scope: Scope, ref: str, kind: str) -> bytes:
    authorization = _header(scope, b"authorization")
    if not authorization or not authorization.lower().startswith("bearer "):
        raise _Refer
    caches = api.part(ReadCaches)
    caller = caches.principals.peek(authorization[7:].strip())
    if caller is None:
        raise _Refer  # the route checks the key against the master database and remembers it
    p = _params(scope["query_string"])
    tag_id = _ids(p)
    well, names = _names(p)
    if kind == "latest":
        t = await authorize(api, caller, ref, "read", lookup=caches.tenant)
        return await latest_json(api, t, tag_id, well, names)
    accept = _header(scope, b"accept")
    if accept and "text/csv" in accept:
        raise _Refer
    start, end = _time(p, "start"), _time(p, "end")
    resolution = _choice(p, "resolution", "auto", _RESOLUTIONS)
    days = _choice(p, "days", "local", _DAYS)
    max_points = _count(p, "max_points", MAX_POINTS_DEFAULT, COUNT_MAX)
    limit = _count(p, "limit", LIMIT_DEFAULT, COUNT_MAX)
    cursor = _one(p, "cursor")
    if cursor is not None and len(cursor) > CURSOR_MAX:
        raise _Refer
    t = await authorize(api, caller, ref, "read", lookup=caches.tenant)
    req, pool, tz = await readings_request(
        api, t, tag_id, well, names, start, end, resolution, max_points, limit, days, cursor
    )
    return await readings_json(api, t, req, pool, tz)


class HotReads:
    """ASGI middleware (``app.add_middleware(HotReads)``); off while ``app.state.hot_reads`` is
    False (the tests compare both ways)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            m = _PATH.fullmatch(_route_path(scope))
            state = scope["app"].state
            api = getattr(state, "api", None)
            if m is not None and isinstance(api, ApiState) and getattr(state, "hot_reads", True):
                counts = api.part(HotReadCounts)
                try:
                    body = await _answer(api, scope, m[1], m[2])
                except _Refer:
                    counts.count(m[2], "referred")
                except Exception as e:  # the route answers again and renders the error
                    counts.count(m[2], "referred")
                    log.debug("hot read referred to the route: %s", type(e).__name__)
                else:
                    counts.count(m[2], "answered")
                    await send(
                        {
                            "type": "http.response.start",
                            "status": 200,
                            "headers": [(b"content-length", str(len(body)).encode()), *_JSON_HEADERS],
                        }
                    )
                    await send({"type": "http.response.body", "body": body})
                    return
        await self.app(scope, receive, send)
