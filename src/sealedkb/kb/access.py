"""Who may do what: principals, roles and namespace scopes (docs/DESIGN.md §7).

A principal is the local operator (CLI, stdio MCP: everything) or the holder of
a bearer token (HTTP MCP: a role and a set of namespaces). Reads of entries in
a namespace the principal cannot see answer NOT_FOUND, never ACCESS_DENIED, so
a token cannot probe which ids exist elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from sealedkb.errors import AccessDeniedError, ValidationError

ALL_NAMESPACES = "*"


class Role(StrEnum):
    READER = "reader"
    WRITER = "writer"
    ADMIN = "admin"


class Action(StrEnum):
    GET = "get"
    LIST = "list"
    SEARCH = "search"
    STATS = "stats"
    HEALTH = "health"
    ADD = "add"
    UPDATE = "update"
    DELETE = "delete"
    IMPORT = "import"
    VERIFY = "verify"  # set or clear an entry's verified flag
    METRICS = "metrics"  # read the Prometheus metrics (/metrics)


_READ = frozenset({Action.GET, Action.LIST, Action.SEARCH, Action.STATS, Action.HEALTH})
_WRITE = _READ | {Action.ADD, Action.UPDATE, Action.DELETE, Action.IMPORT}
ROLE_ACTIONS: dict[Role, frozenset[Action]] = {
    Role.READER: _READ,
    Role.WRITER: _WRITE,
    Role.ADMIN: _WRITE | {Action.VERIFY, Action.METRICS},
}


def parse_role(value: str) -> Role:
    try:
        return Role(value)
    except ValueError:
        raise ValidationError("role must be reader, writer or admin", field="role") from None


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    role: Role
    namespaces: frozenset[str] | None  # None: every namespace

    def allows(self, action: Action) -> bool:
        return action in ROLE_ACTIONS[self.role]

    def sees(self, namespace: str) -> bool:
        return self.namespaces is None or namespace in self.namespaces

    def require(self, action: Action, namespace: str | None = None) -> None:
        if not self.allows(action):
            raise AccessDeniedError(f"role {self.role.value} may not {action.value}")
        if namespace is not None and not self.sees(namespace):
            raise AccessDeniedError(f"no access to namespace {namespace}", field="namespace")

    def scope(self, namespace: str | None) -> list[str] | None:
        """Namespaces a read may touch: the one asked for (if visible) or all visible."""
        if namespace is not None:
            if not self.sees(namespace):
                raise AccessDeniedError(f"no access to namespace {namespace}", field="namespace")
            return [namespace]
        return None if self.namespaces is None else sorted(self.namespaces)


OPERATOR = Principal("operator", Role.ADMIN, None)
