"""Every error type of scada-ingest.

Lower-layer errors (asyncpg, asyncua, pymodbus, redis) are translated into these where they enter
our code. ``retriable`` says whether the same operation may succeed later, so retry policy is one
rule (``if err.retriable``) rather than a list of cases.
"""

from __future__ import annotations


class IngestError(Exception):
    """Base class of every error raised by scada-ingest."""

    retriable: bool = False


class ConfigError(IngestError):
    """A setting is missing or malformed."""


class StandingBy(ConfigError):
    """Another cluster's coordinator holds the master database's lock: this one acts on nothing
    (two clusters on one set of databases would poll every device twice)."""


class InvalidDeviceSetting(ConfigError, ValueError):
    """A tag or connection setting no device session can use; ``field`` names it, as the session
    calls it (``data_type``, ``bit``, ``node_id``, ``endpoint``...), and ``reason`` says why."""

    def __init__(self, field: str, reason: str, where: str = "") -> None:
        super().__init__(f"{where}: {reason}" if where else reason)
        self.field = field
        self.reason = reason


class EdgeConfigInvalid(ConfigError):
    """The edge agent's YAML file is unreadable or a setting in it is wrong; ``field`` names it
    as the file spells it (``devices.0.tags.2.node_id``)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class LocalStackError(IngestError):
    """The project-owned PostgreSQL or Redis could not be started or stopped."""


class MigrationError(IngestError):
    """A migration failed, or an applied migration file was changed afterwards."""


class TenantNotFound(IngestError):
    """No tenant with that id or slug exists."""


class TenantExists(IngestError):
    """A tenant with that slug exists already."""


class TenantUnavailable(IngestError):
    """The tenant's database cannot be reached right now."""

    retriable = True


class KeyNotFound(IngestError):
    """No API key with that id exists for the tenant."""


class QuotaExceeded(IngestError):
    """Adding this would take the tenant past one of its quotas (``quota`` names it)."""

    def __init__(self, quota: str, message: str) -> None:
        super().__init__(f"{quota}: {message}")
        self.quota = quota
        self.message = message


class ConnectionNotFound(IngestError):
    """No connection with that id exists for the tenant."""


class TagNotFound(IngestError):
    """No live tag with that id exists for the tenant."""


class QuarantinedBatchNotFound(IngestError):
    """No quarantined batch with that id exists for the tenant."""


class InvalidRegistration(IngestError):
    """A registration payload is well-formed JSON but not acceptable (field named in the message)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class Conflict(InvalidRegistration):
    """A registration would duplicate what exists (a connection or tag name); the API's 409."""


class InvalidRows(InvalidRegistration):
    """Rows of a bulk import are not acceptable; ``problems`` holds (field, error) for each."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__(problems[0][0] if problems else "body", f"{len(problems)} rows are not acceptable")
        self.problems = problems


class DatabaseRefused(InvalidRegistration):
    """A database server or a database to attach cannot be used as given; ``code`` says what is
    missing (``database_unreachable``, ``tls_required``, ``extension_missing``, ``grant_missing``...)
    and ``field`` which part of the request it concerns."""

    def __init__(self, code: str, field: str, message: str) -> None:
        super().__init__(field, message)
        self.code = code


class ServerInUse(Conflict):
    """A database server still holds tenant databases (or is named twice)."""


class ServerNotFound(IngestError):
    """No database server with that name is registered."""


class InvalidQuery(InvalidRegistration):
    """A query parameter is well-formed but not acceptable: unknown tag, cursor of another query."""


class AuthError(IngestError):
    """The request carries no valid credential."""


class Forbidden(IngestError):
    """The credential is valid but may not act on this tenant or with this scope."""


class TenantMismatch(Forbidden):
    """The credential belongs to another tenant (or to none, where a tenant's key is needed)."""


class InsufficientScope(Forbidden):
    """The credential belongs to the tenant but lacks the scope the action needs."""


class StorageError(IngestError):
    """The database refused a write for a reason that will not go away by retrying."""


class BatchRejected(StorageError):
    """The database refused the rows of a batch for good (a value or constraint it rejects)."""


class UnstorableValue(IngestError):
    """A value reached the database that its column cannot hold (NUL in text, out of range)."""


class StorageUnavailable(IngestError):
    """The database could not be reached or failed transiently; the write may be retried."""

    retriable = True


class OutOfOrder(IngestError):
    """A writer refused a batch that arrived before an older unacknowledged batch of its sender
    (ingest.core.order): resent in order, it is taken."""

    retriable = True


class ClusterUnavailable(IngestError):
    """A cluster service (the coordinator, a tenant's writer) is not running or did not answer."""

    retriable = True


class DeviceUnreachable(IngestError):
    """A field device could not be reached or dropped the session."""

    retriable = True


class DeviceProtocolError(IngestError):
    """A field device answered, but not in a way the protocol allows."""


class SecretError(IngestError):
    """A secret could not be decrypted (wrong key or tampered ciphertext)."""


class SpoolFull(IngestError):
    """The tenant's spool reached its configured size: the sender must hold back (backpressure)."""

    retriable = True


class SpoolUnavailable(IngestError):
    """Redis, which holds the spool, cannot be reached."""

    retriable = True
