"""Push ingest (``POST /v1/ingest/realtime``): seed 002's payload, units, per-tenant limits,
idempotency and the tags pushed values land on. Knows nothing of Ray or HTTP."""

from ingest.push.batch import Prepared, Rejection, prepare_batch
from ingest.push.body import check_declared_length, read_limited
from ingest.push.idempotency import IdempotencyStore
from ingest.push.limits import PushLimiter, PushSettings
from ingest.push.payload import DataPoint, PushPayload, decode_payload
from ingest.push.service import PushAnswer, PushContext, PushService, error_answer
from ingest.push.tags import PushTag, PushTagCreate, PushTagMap, register_push_tags
from ingest.push.units import UnitError, coefficients, convert

__all__ = [
    "DataPoint",
    "IdempotencyStore",
    "Prepared",
    "PushAnswer",
    "PushContext",
    "PushLimiter",
    "PushPayload",
    "PushService",
    "PushSettings",
    "PushTag",
    "PushTagCreate",
    "PushTagMap",
    "Rejection",
    "UnitError",
    "check_declared_length",
    "coefficients",
    "convert",
    "decode_payload",
    "error_answer",
    "prepare_batch",
    "read_limited",
    "register_push_tags",
]
