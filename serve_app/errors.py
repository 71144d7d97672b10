"""The one error body of the API, and the one table from error types to HTTP answers.

Every error a route can answer has the shape ``{"error": "<snake_case code>", "message": "...",
"details": [{"field": ..., "error": ...}]}`` (DESIGN.md, API conventions). Request validation
errors name each field and never echo the values sent (a password must not come back in a 422).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from ray.exceptions import RayActorError
from starlette.exceptions import HTTPException

from ingest.core.errors import (
    AuthError,
    ClusterUnavailable,
    Conflict,
    ConnectionNotFound,
    DatabaseRefused,
    DeviceProtocolError,
    DeviceUnreachable,
    Forbidden,
    IngestError,
    InsufficientScope,
    InvalidDeviceSetting,
    InvalidRegistration,
    InvalidRows,
    KeyNotFound,
    QuarantinedBatchNotFound,
    QuotaExceeded,
    ServerNotFound,
    StorageUnavailable,
    TagNotFound,
    TenantExists,
    TenantMismatch,
    TenantNotFound,
    TenantUnavailable,
    UnstorableValue,
)
from ingest.push.errors import PushError

log = logging.getLogger(__name__)

RETRY_AFTER_S = 5


class ErrorDetail(BaseModel):
    field: str = Field(description="the offending field, dotted for nested ones (tags.0.node_id)")
    error: str = Field(description="what is wrong with it")


class ErrorBody(BaseModel):
    """The body of every error answer."""

    error: str = Field(description="snake_case code, e.g. invalid_token, tag_not_found")
    message: str = Field(description="for humans")
    details: list[ErrorDetail] = Field(default_factory=list)
    retry_after_seconds: int | None = Field(
        None, description="on 429 and 503 of the push route, beside Retry-After"
    )


# Most specific first: the first row whose type matches answers. Anything retriable that no row
# names is a 503; anything else is a 500 (a bug to fix, never a plain-text page).
ERROR_TABLE: tuple[tuple[type[Exception], int, str], ...] = (
    (AuthError, 401, "invalid_token"),
    (TenantMismatch, 403, "tenant_mismatch"),
    (InsufficientScope, 403, "insufficient_scope"),
    (Forbidden, 403, "forbidden"),
    (TenantNotFound, 404, "tenant_not_found"),
    (ConnectionNotFound, 404, "connection_not_found"),
    (TagNotFound, 404, "tag_not_found"),
    (QuarantinedBatchNotFound, 404, "batch_not_found"),
    (KeyNotFound, 404, "key_not_found"),
    (ServerNotFound, 404, "server_not_found"),
    (TenantExists, 409, "tenant_exists"),
    (QuotaExceeded, 409, "quota_exceeded"),
    # Also two registrations of one name racing past the store's check: the unique index
    # decides, and ingest.core.translate makes its violation a Conflict.
    (Conflict, 409, "conflict"),
    (InvalidRegistration, 422, "validation_error"),
    (InvalidDeviceSetting, 422, "validation_error"),
    # A value its column cannot hold (NUL in text, out of range) that no model refused first.
    (UnstorableValue, 422, "validation_error"),
    # The device behind a connection (browsing its server): the gateway's upstream failed.
    (DeviceUnreachable, 502, "device_unreachable"),
    (DeviceProtocolError, 502, "device_error"),
    (TenantUnavailable, 503, "tenant_unavailable"),
    (StorageUnavailable, 503, "storage_unavailable"),
    (ClusterUnavailable, 503, "cluster_unavailable"),
    (RayActorError, 503, "cluster_unavailable"),
    (TimeoutError, 503, "timeout"),
)

_DESCRIPTIONS = {
    401: "no valid API key (`invalid_token`)",
    403: "the key belongs to another tenant (`tenant_mismatch`) or lacks the scope (`insufficient_scope`)",
    404: "no such resource (`<thing>_not_found`)",
    406: "the request does not accept what the route sends (`not_acceptable`: a live stream needs "
    "`Accept: text/event-stream`)",
    409: "conflicts with what exists (`tenant_exists`, `conflict`) or a quota (`quota_exceeded`)",
    422: "a field is not acceptable (`validation_error`; `details` names each field), or a database "
    "cannot be used as given (`database_unreachable`, `tls_required`, `extension_missing`, "
    "`extension_too_old`, `grant_missing`...)",
    502: "the device did not answer (`device_unreachable`) or refused (`device_error`)",
    503: "a database, Redis or the cluster is unreachable right now; retry after `Retry-After`",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` entry of a route: the one error body for each code it can answer."""
    return {c: {"model": ErrorBody, "description": _DESCRIPTIONS[c]} for c in codes}


def classify(exc: BaseException) -> tuple[int, str]:
    if isinstance(exc, PushError):  # the push side's refusals carry their own status and code
        return exc.status, exc.code
    if isinstance(exc, DatabaseRefused):  # names what the database lacks: extension_missing...
        return 422, exc.code
    for kind, status, code in ERROR_TABLE:
        if isinstance(exc, kind):
            return status, code
    if isinstance(exc, IngestError) and exc.retriable:
        return 503, "unavailable"
    return 500, "internal_error"


def error_response(
    status: int,
    code: str,
    message: str,
    details: Iterable[ErrorDetail] = (),
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = ErrorBody(error=code, message=message, details=list(details))
    out = dict(headers or {})
    if status == 401:
        out["WWW-Authenticate"] = "Bearer"
    if status == 503:
        out.setdefault("Retry-After", str(RETRY_AFTER_S))
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=out)


def _message(exc: BaseException, status: int) -> str:
    if status == 500:
        return "internal error; the server log has the details"
    if isinstance(exc, InvalidRegistration):
        return exc.message
    if isinstance(exc, PushError):
        return exc.message
    if isinstance(exc, RayActorError):
        return "a cluster actor is not available"
    return str(exc) or type(exc).__name__


def _details(exc: BaseException) -> list[ErrorDetail]:
    if isinstance(exc, PushError):
        return [ErrorDetail(field=str(d.get("field", "")), error=str(d.get("error", ""))) for d in exc.details]
    if isinstance(exc, InvalidRows):
        return [ErrorDetail(field=f, error=e) for f, e in exc.problems]
    if isinstance(exc, InvalidRegistration):
        return [ErrorDetail(field=exc.field, error=exc.message)]
    if isinstance(exc, InvalidDeviceSetting):
        return [ErrorDetail(field=exc.field, error=exc.reason)]
    if isinstance(exc, QuotaExceeded):
        return [ErrorDetail(field=exc.quota, error=exc.message)]
    return []


async def _known_error(_: Request, exc: Exception) -> JSONResponse:
    status, code = classify(exc)
    if status >= 500:
        log.warning("answering %d %s: %s", status, code, type(exc).__name__, exc_info=status == 500)
    headers = None
    if isinstance(exc, PushError) and exc.retry_after_s is not None:
        headers = {"Retry-After": str(exc.retry_after_s)}
    return error_response(status, code, _message(exc, status), _details(exc), headers)


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    status, code = classify(exc)
    log.error("unhandled %s", type(exc).__name__, exc_info=exc)
    return error_response(status, code, _message(exc, status), _details(exc))


def validation_details(errors: Sequence[Any]) -> list[ErrorDetail]:
    """One detail per pydantic error: the field's name and the message, never the input.

    A query, path or header parameter is named as sent (``tag_id``, not ``tag_id.0``); a body
    field by its dotted path (``tags.0.node_id``). Model-level checks report themselves as
    ``"<field>: <what>"`` (registration.py does), so there the field comes from the message."""
    out = []
    for err in errors:
        loc = [str(x) for x in err.get("loc", ())]
        where = loc[0] if loc else "body"
        if where in ("query", "path", "header", "cookie") and len(loc) > 1:
            loc = loc[1:2]
        elif where == "body":
            loc = loc[1:]
        message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        field = ".".join(loc)
        head, sep, rest = message.partition(": ")
        if sep and " " not in head and head.replace("_", "").replace(".", "").isalnum():
            field, message = ".".join([*loc, head]), rest
        out.append(ErrorDetail(field=field or where, error=message))
    return out


async def _request_validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = validation_details(exc.errors())
    fields = ", ".join(dict.fromkeys(d.field for d in details))
    return error_response(422, "validation_error", f"not acceptable: {fields}", details)


_BODY_NOT_PARSED = "There was an error parsing the body"  # fastapi.routing, a 400
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 400 and exc.detail == _BODY_NOT_PARSED:
        # FastAPI's answer to a body that is not text (bytes that are not UTF-8): as
        # unacceptable as one that is not JSON, which FastAPI answers 422 itself.
        return error_response(
            422, "validation_error", "the body is not JSON", [ErrorDetail(field="body", error="not UTF-8 JSON")]
        )
    code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
    return error_response(exc.status_code, code, str(exc.detail), headers=exc.headers)


def install(app: FastAPI) -> None:
    """Route every error of the app through the table above."""
    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(HTTPException, _http_error)
    for kind, _, _ in ERROR_TABLE:
        app.add_exception_handler(kind, _known_error)
    app.add_exception_handler(IngestError, _known_error)
    # Starlette answers an unexpected exception with this handler, then re-raises it for the log.
    app.add_exception_handler(Exception, _unexpected)
