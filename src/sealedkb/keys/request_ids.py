"""The request id a remote key service gave its latest call, per thread and task.

A provider that talks to a key service (AWS KMS, Vault) notes the id of every
response here; :class:`~sealedkb.keys.lifecycle.AuditedKeyUse` puts the id of the
call it audits into the event's details (``kms_request_id``), so an audit event
can be matched with the key service's own log (CloudTrail, Vault's audit device).
Wrappers between them (instrumentation, routing) need not know about it.
"""

from __future__ import annotations

from contextvars import ContextVar

_last: ContextVar[str | None] = ContextVar("sealedkb_kms_request_id", default=None)


def note(request_id: str | None) -> None:
    """Record the id of the call just made (None: the call got no answer)."""
    _last.set(request_id if isinstance(request_id, str) and request_id else None)


def clear() -> None:
    _last.set(None)


def last() -> str | None:
    """The id of this context's latest key-service call since :func:`clear`."""
    return _last.get()
