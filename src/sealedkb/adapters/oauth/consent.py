"""The consent page of the built-in authorization server (server-rendered, no script).

The user signs in with a bearer token of theirs (``sealedkb token create``) and
grants the client a role and namespaces no wider than that token's. The form is
CSRF protected by a double-submit value (a random value in an HttpOnly, SameSite=Strict
cookie that must equal the form's hidden field) and by an Origin check; the page
may not be framed. The bearer token is checked, never stored or echoed.
"""

from __future__ import annotations

import hmac
import html
import logging
import secrets
from urllib.parse import urlencode, urlparse

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from sealedkb.errors import SealedKBError
from sealedkb.kb.access import Role
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.kb.oauth import ConsentRequest
from sealedkb.model import DEFAULT_NAMESPACE

log = logging.getLogger("sealedkb.oauth")

CSRF_COOKIE = "sealedkb_consent_csrf"
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
_RANK = {Role.READER.value: 0, Role.WRITER.value: 1, Role.ADMIN.value: 2}
MAX_FORM_BYTES = 16 * 1024
GONE = "this authorization request is unknown, used or expired"


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    doc = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;max-width:40em;margin:2em auto}"
        "label{display:block;margin:.8em 0}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    return HTMLResponse(doc, status_code=status, headers=_HEADERS)


def _error(code: str, message: str, status: int) -> HTMLResponse:
    return _page(
        "Authorization failed",
        f"<p><strong>{html.escape(code)}</strong>: {html.escape(message)}</p>",
        status,
    )


def _requested_role(pending: ConsentRequest) -> str:
    asked = [s for s in pending.scopes if s in _RANK]
    return max(asked, key=_RANK.__getitem__) if asked else Role.READER.value


class ConsentPage:
    def __init__(self, kb: KnowledgeBase, issuer: str) -> None:
        self.kb = kb
        self.origin = "{0.scheme}://{0.netloc}".format(urlparse(issuer))

    async def handle(self, request: Request) -> Response:
        if request.method == "POST":
            return await self._post(request)
        return await self._get(request)

    async def _get(self, request: Request) -> Response:
        token = request.query_params.get("request", "")
        pending = await anyio.to_thread.run_sync(self.kb.oauth_pending, token)
        if pending is None:
            return _error(
                "NOT_FOUND", "this authorization request is unknown, used or expired", 404
            )
        csrf = secrets.token_urlsafe(32)
        top = _requested_role(pending)
        options = "".join(
            f'<option value="{r}"{" selected" if r == top else ""}>{r}</option>'
            for r in _RANK
            if _RANK[r] <= _RANK[top]
        )
        redirect = urlparse(pending.redirect_uri)
        body = (
            f"<p><strong>{html.escape(pending.client_name)}</strong> "
            f"(redirecting to {html.escape(redirect.scheme + '://' + redirect.netloc)}) "
            f"asks for access to {html.escape(pending.resource)}.</p>"
            '<form method="post">'
            f'<input type="hidden" name="request" value="{html.escape(token)}">'
            f'<input type="hidden" name="csrf" value="{csrf}">'
            '<label>Your bearer token <input type="password" name="token" required '
            'autocomplete="off"></label>'
            f'<label>Role <select name="role">{options}</select></label>'
            "<label>Namespaces (comma separated, <code>*</code> for all your token has) "
            f'<input name="namespaces" value="{DEFAULT_NAMESPACE}"></label>'
            '<button name="action" value="allow">Allow</button> '
            '<button name="action" value="deny">Deny</button></form>'
        )
        response = _page("Authorize access to sealedkb", body)
        response.set_cookie(
            CSRF_COOKIE,
            csrf,
            max_age=600,
            path="/oauth/consent",
            httponly=True,
            samesite="strict",
            secure=self.origin.startswith("https://"),
        )
        return response

    async def _post(self, request: Request) -> Response:
        origin = request.headers.get("origin")
        if origin is not None and origin != self.origin:
            return _error("ACCESS_DENIED", "cross-site form post refused", 403)
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_FORM_BYTES):
            return _error("VALIDATION_ERROR", "form too large", 413)
        form = await request.form()
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        cookie = request.cookies.get(CSRF_COOKIE, "")
        csrf = fields.get("csrf", "")
        if not cookie or not csrf or not hmac.compare_digest(cookie.encode(), csrf.encode()):
            return _error("ACCESS_DENIED", "the form expired or was not sent from this page", 403)
        token = fields.get("request", "")
        if fields.get("action") == "deny":
            pending = await anyio.to_thread.run_sync(self.kb.oauth_deny, token)
            if pending is None:
                return _error(
                    "NOT_FOUND", "this authorization request is unknown, used or expired", 404
                )
            params = {"error": "access_denied", "state": pending.state}
            return self._redirect(pending.redirect_uri, params)
        namespaces = [n.strip() for n in fields.get("namespaces", "").split(",") if n.strip()]
        try:
            result = await anyio.to_thread.run_sync(
                lambda: self.kb.oauth_consent(
                    token, fields.get("token", ""), fields.get("role", ""), namespaces
                )
            )
        except SealedKBError as exc:
            status = {"ACCESS_DENIED": 403, "NOT_FOUND": 404}.get(exc.code, 400)
            return _error(exc.code, exc.message, status)
        return self._redirect(result.redirect_uri, {"code": result.code, "state": result.state})

    @staticmethod
    def _redirect(uri: str, params: dict[str, str | None]) -> Response:
        query = urlencode({k: v for k, v in params.items() if v is not None})
        sep = "&" if urlparse(uri).query else "?"
        response = RedirectResponse(uri + sep + query, status_code=302, headers=_HEADERS)
        response.delete_cookie(CSRF_COOKIE, path="/oauth/consent")
        return response
