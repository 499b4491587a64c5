"""One exception tree for sealedkb.

Every error carries a stable machine-readable ``code`` (also the MCP error code),
a process ``exit_code`` (docs/DESIGN.md §7) and optionally the ``field`` it concerns.
Messages are written for users: they never carry plaintext of stored entries,
key material or SQL.
"""

from __future__ import annotations


class SealedKBError(Exception):
    """Base class; catch this to handle any sealedkb failure."""

    code = "INTERNAL_ERROR"
    exit_code = 1

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def to_dict(self) -> dict[str, str]:
        out = {"code": self.code, "message": self.message}
        if self.field is not None:
            out["field"] = self.field
        return out


class ValidationError(SealedKBError):
    """Bad input: a field is missing, malformed or out of range."""

    code = "VALIDATION_ERROR"
    exit_code = 2


class ConfigError(ValidationError):
    """The configuration (file or environment) is invalid."""

    code = "CONFIG_ERROR"


class NotFoundError(SealedKBError):
    code = "NOT_FOUND"
    exit_code = 3


class ConflictError(SealedKBError):
    """Optimistic concurrency failure or a duplicate."""

    code = "CONFLICT"
    exit_code = 1


class AccessDeniedError(SealedKBError):
    code = "ACCESS_DENIED"
    exit_code = 4


class KeyUnavailableError(SealedKBError):
    """Data keys cannot be unwrapped: key disabled, destroyed, wrong root key, provider down.

    ``key_state`` is the KMS key's state when the provider refused because of it
    (``Disabled``, ``PendingDeletion``, ``Destroyed``), else None: machine-readable,
    so monitoring can count attempts to use a disabled key without parsing messages.
    """

    code = "KEY_UNAVAILABLE"
    exit_code = 5

    def __init__(
        self, message: str, *, field: str | None = None, key_state: str | None = None
    ) -> None:
        super().__init__(message, field=field)
        self.key_state = key_state


class IntegrityError(SealedKBError):
    """A sealed value failed to open: tampered, moved to another row, or wrong key.

    Deliberately opaque (as pyca/cryptography's InvalidTag): the cause is not told.
    """

    code = "INTEGRITY_ERROR"
    exit_code = 6


class TransportRefusedError(SealedKBError):
    """A connection would not be protected as required (e.g. no verified TLS).

    ``cause`` is a stable short name of the reason (``weak-sslmode``,
    ``unknown-ca``, ``expired-certificate``, ``hostname-mismatch``,
    ``plaintext-server`` ...) and ``fix`` one line that says what to change, so
    ``doctor`` can show both apart; the message already contains the fix.
    """

    code = "TRANSPORT_REFUSED"
    exit_code = 7

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        cause: str | None = None,
        fix: str | None = None,
    ) -> None:
        super().__init__(f"{message}; fix: {fix}" if fix else message, field=field)
        self.reason = message
        self.cause = cause
        self.fix = fix


class DatabaseError(SealedKBError):
    """The database is unreachable or failed; details go to the log, not the message."""

    code = "DATABASE_ERROR"
    exit_code = 1


class EmbeddingError(SealedKBError):
    """The embedding model is missing, fails its checksum, or failed on this input."""

    code = "EMBEDDING_ERROR"
    exit_code = 1


class NotInitializedError(SealedKBError):
    code = "NOT_INITIALIZED"
    exit_code = 1
