"""The web console for people: sign-in with a bearer token, namespaces, entries
(list, search, view, add, edit, delete, import) and, for administrators, health.

Served by ``sealedkb serve --transport http`` under ``/ui`` (adapters/http.py);
:func:`build_ui` makes the Starlette app. No script runs in the pages: plain forms,
a strict Content-Security-Policy, CSRF tokens, server-side sessions.
"""

from __future__ import annotations

from sealedkb.adapters.ui.app import build_ui

__all__ = ["build_ui"]
