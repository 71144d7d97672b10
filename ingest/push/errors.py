"""Errors of the push endpoint, each with the HTTP status and snake_case code it answers with.

They live beside the push code rather than in ``ingest.core.errors`` only while the API's error
table is being rewritten elsewhere; each subclasses ``IngestError``, so ``retriable`` keeps its
one meaning. ``details`` follows the API's one error body: ``[{"field": ..., "error": ...}]``.
"""

from __future__ import annotations

from typing import Any

from ingest.core.errors import IngestError


class PushError(IngestError):
    """Base of the push endpoint's refusals: ``status``, ``code`` and ``details`` shape the body."""

    status = 400
    code = "bad_request"

    def __init__(
        self, message: str, details: list[dict[str, str]] | None = None, retry_after_s: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []
        self.retry_after_s = retry_after_s

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.code, "message": self.message, "details": self.details}
        if self.retry_after_s is not None:
            out["retry_after_seconds"] = self.retry_after_s
        return out


class InvalidToken(PushError):
    """No API key, or one that is unknown, revoked or malformed."""

    status, code = 401, "invalid_token"


class TenantMismatch(PushError):
    """The body names another tenant than the key belongs to."""

    status, code = 403, "tenant_mismatch"


class InsufficientScope(PushError):
    """The key lacks the scope the route needs."""

    status, code = 403, "insufficient_scope"


class PayloadInvalid(PushError):
    """The body is not JSON, or not seed 002's schema; ``details`` names each field."""

    status, code = 400, "validation_error"


class IdempotencyConflict(PushError):
    """An Idempotency-Key was reused with another body, or its first request is still running."""

    status, code = 409, "idempotency_conflict"


class PayloadTooLarge(PushError):
    """The body, or what it decompresses to, is over the tenant's limit."""

    status, code = 413, "payload_too_large"


class UnsupportedEncoding(PushError):
    """A Content-Encoding other than identity or gzip."""

    status, code = 415, "unsupported_media_type"


class RateLimited(PushError):
    """More requests in the current minute than the tenant's limit."""

    status, code = 429, "rate_limit_exceeded"
    retriable = True


class VolumeLimited(PushError):
    """More bytes today (UTC) than the tenant's daily volume limit."""

    status, code = 429, "volume_limit_exceeded"
    retriable = True


class PushUnavailable(PushError):
    """The spool is full or the writer cannot be reached: nothing was written, retry later."""

    status, code = 503, "service_unavailable"
    retriable = True


class PushNotFound(PushError):
    """The tenant in the path does not exist (or is not the caller's)."""

    status, code = 404, "not_found"


class PushQuotaExceeded(PushError):
    """Registering the pushed tags would take the tenant past its tag quota: nothing was written."""

    status, code = 409, "quota_exceeded"
