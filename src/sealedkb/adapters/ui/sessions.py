"""Server-side sessions of the web console.

The cookie carries only a random session id (256 bits); the server keeps the
session under the SHA-256 of that id, so neither the cookie nor the table holds
the bearer token's principal in a form that could be replayed elsewhere: the
bearer token itself stays in this process's memory only, and is checked again on
every request (a revoked or expired token ends the session at once).

Each session has its own CSRF token, compared in constant time on every POST.
Sessions expire after ``idle`` seconds without a request and ``lifetime`` seconds
after sign-in; the tables are bounded (least recently used sessions go first).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Session", "SessionStore"]


@dataclass
class Session:
    """One browser's session: anonymous (``token`` None) until sign-in."""

    csrf: str
    created: float
    seen: float
    token: str | None = None
    # The page a POST answered, shown once by the GET it redirects to (so the
    # browser's history never keeps a form body: see app.Console.defer).
    pending: tuple[str, dict[str, Any], int] | None = None

    def csrf_ok(self, presented: str | None) -> bool:
        if not presented:
            return False
        return hmac.compare_digest(self.csrf.encode(), presented.encode())


def _key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class SessionStore:
    def __init__(
        self,
        *,
        idle: float = 30 * 60,
        lifetime: float = 12 * 3600,
        max_sessions: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.idle = idle
        self.lifetime = lifetime
        self.max_sessions = max_sessions
        self.clock = clock
        # Signed-in and anonymous (sign-in form) sessions in separate tables, so
        # fetching the sign-in page over and over cannot evict anyone's session.
        self._signed: OrderedDict[str, Session] = OrderedDict()
        self._anonymous: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._signed) + len(self._anonymous)

    def new(self, token: str | None = None) -> tuple[str, Session]:
        """A fresh session id (for the cookie) and its session."""
        session_id = secrets.token_urlsafe(32)
        now = self.clock()
        session = Session(csrf=secrets.token_urlsafe(32), created=now, seen=now, token=token)
        table = self._signed if token is not None else self._anonymous
        with self._lock:
            table[_key(session_id)] = session
            while len(table) > self.max_sessions:
                table.popitem(last=False)
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id or len(session_id) > 128:
            return None
        key = _key(session_id)
        now = self.clock()
        with self._lock:
            for table in (self._signed, self._anonymous):
                session = table.get(key)
                if session is None:
                    continue
                if now - session.seen > self.idle or now - session.created > self.lifetime:
                    del table[key]
                    return None
                session.seen = now
                table.move_to_end(key)
                return session
            return None

    def drop(self, session_id: str | None) -> None:
        if session_id:
            key = _key(session_id)
            with self._lock:
                self._signed.pop(key, None)
                self._anonymous.pop(key, None)
