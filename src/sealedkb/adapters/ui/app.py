"""The web console's routes (Starlette), mounted by the HTTP transport at ``/ui``.

Every page runs through the access rules of the MCP tools (kb/access.py): the
signed-in bearer token's principal, its role and its namespaces; an entry outside
the scope is not found. Every answer carries ``Cache-Control: no-store`` and a
Content-Security-Policy without inline script; every form carries the session's
CSRF token, checked on POST before anything else runs. Templates autoescape every
value; entry content is rendered by render.py (Markdown, no raw HTML, sanitised).
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import anyio.to_thread
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartParser
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from sealedkb.adapters.ui.render import render_markdown
from sealedkb.adapters.ui.sessions import Session, SessionStore
from sealedkb.errors import AccessDeniedError, ConflictError, SealedKBError, ValidationError
from sealedkb.kb.access import Action, Principal, Role
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.model import DEFAULT_NAMESPACE, Entry, EntryPatch, EntryType, SearchMode

__all__ = ["CSP", "MAX_UPLOAD_BYTES", "build_ui"]

log = logging.getLogger("sealedkb.ui")

CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
COOKIE = "sealedkb_ui"
PAGE_SIZE = 20
# An upload form as a whole stays under the size at which Starlette would spool the
# file part to a temporary file on disk: an uploaded file never leaves memory.
MAX_MULTIPART_BYTES = MultiPartParser.spool_max_size
MAX_UPLOAD_BYTES = MAX_MULTIPART_BYTES - 16 * 1024  # one imported file
# Entry forms: 1 MB of content, which URL-encoding can make up to three times longer.
MAX_FORM_BYTES = 4 * 1024 * 1024
UPLOAD_SUFFIXES = frozenset({".md", ".markdown", ".txt", ".text", ".html", ".htm"})
_STATUS = {
    "VALIDATION_ERROR": 400,
    "CONFIG_ERROR": 400,
    "NOT_FOUND": 404,
    "ACCESS_DENIED": 403,
    "CONFLICT": 409,
    "KEY_UNAVAILABLE": 503,
    "DATABASE_ERROR": 503,
}

Handler = Callable[[Request], Awaitable[Response]]


class CsrfError(SealedKBError):
    """A POST without the session's CSRF token (or from another origin)."""

    code = "CSRF_FAILED"
    exit_code = 4


@dataclass(frozen=True)
class Caller:
    """The signed-in browser: its session and the principal its token stands for."""

    session_id: str
    session: Session
    principal: Principal

    @property
    def is_admin(self) -> bool:
        return self.principal.role is Role.ADMIN

    def may(self, action: str) -> bool:
        return self.principal.allows(Action(action))


def _templates() -> Environment:
    folder = resources.files("sealedkb.adapters.ui") / "templates"
    env = Environment(
        loader=FileSystemLoader(str(folder)),
        autoescape=select_autoescape(["html"], default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["entry_types"] = [t.value for t in EntryType]
    env.globals["search_modes"] = [m.value for m in SearchMode]
    return env


class Console:
    """The console's state: the knowledge base, its sessions, its templates."""

    def __init__(self, kb: KnowledgeBase, *, tls: bool, sessions: SessionStore | None = None):
        self.kb = kb
        self.tls = tls
        self.sessions = sessions or SessionStore()
        self.env = _templates()

    # --- answers -------------------------------------------------------------------

    def page(
        self,
        name: str,
        caller: Caller | None,
        context: Mapping[str, Any],
        *,
        status: int = 200,
        csrf: str | None = None,
    ) -> Response:
        body = self.env.get_template(name).render(
            caller=caller,
            principal=caller.principal if caller else None,
            csrf=caller.session.csrf if caller else csrf,
            **context,
        )
        return self.secure(HTMLResponse(body, status_code=status))

    def secure(self, response: Response) -> Response:
        response.headers["Content-Security-Policy"] = CSP
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    def redirect(self, url: str) -> Response:
        return self.secure(RedirectResponse(url, status_code=303))

    def set_cookie(self, response: Response, session_id: str) -> None:
        response.set_cookie(
            COOKIE,
            session_id,
            path="/ui",
            httponly=True,
            secure=self.tls,
            samesite="strict",
        )

    def defer(
        self, caller: Caller, name: str, context: Mapping[str, Any], *, status: int = 200
    ) -> Response:
        """Answer a POST with a redirect to ``/ui/result``, which shows this page once
        (Post/Redirect/Get): a page answered straight to a POST stays in the browser's
        session history with the form body it was posted with (entry text, an
        uploaded file), and the browser writes that history to its profile."""
        caller.session.pending = (name, dict(context), status)
        return self.redirect("/ui/result")

    def error_page(self, caller: Caller | None, exc: SealedKBError) -> Response:
        status = _STATUS.get(exc.code, 500)
        if isinstance(exc, CsrfError):
            status = 403
        return self.page(
            "error.html",
            caller,
            {"code": exc.code, "message": exc.message, "field": exc.field},
            status=status,
        )

    # --- who is calling ----------------------------------------------------------

    async def caller(self, request: Request) -> Caller | None:
        session_id = request.cookies.get(COOKIE)
        session = self.sessions.get(session_id)
        if session is None or session.token is None or session_id is None:
            return None
        token = session.token
        try:
            principal = await anyio.to_thread.run_sync(self.kb.authenticate, token)
        except SealedKBError as exc:
            log.warning("console token check failed: %s", exc.code)
            principal = None
        if principal is None:  # revoked or expired since sign-in
            self.sessions.drop(session_id)
            return None
        return Caller(session_id, session, principal)

    async def form(self, request: Request, session: Session) -> dict[str, Any]:
        """The POSTed form, after the CSRF check (token field and same origin)."""
        origin = request.headers.get("origin")
        if origin is not None and origin != "null":
            expected = f"{request.url.scheme}://{request.url.netloc}"
            if origin != expected:
                raise CsrfError("the form came from another site")
        # A declared length, so nothing is parsed (or spooled to a temporary file)
        # before the bound is checked.
        length = request.headers.get("content-length")
        if length is None or not length.isdigit():
            raise ValidationError("a form must declare its Content-Length", field="content")
        multipart = request.headers.get("content-type", "").startswith("multipart/")
        bound = MAX_MULTIPART_BYTES if multipart else MAX_FORM_BYTES
        if int(length) > bound:
            what = f"a file of at most {MAX_UPLOAD_BYTES} bytes" if multipart else "less"
            raise ValidationError(
                f"the form is larger than {bound} bytes; send {what}",
                field="file" if multipart else "content",
            )
        try:
            data = await request.form(max_part_size=MAX_FORM_BYTES)
        except HTTPException:  # malformed, or a field over the bound
            raise ValidationError("the form could not be read", field="form") from None
        presented = data.get("csrf")
        if not isinstance(presented, str) or not session.csrf_ok(presented):
            raise CsrfError("the form's security token is missing or wrong; reload the page")
        return dict(data)


def _text(form: Mapping[str, Any], name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


def _tags(value: str) -> list[str]:
    return [t.strip() for t in value.split(",") if t.strip()]


def _int(value: str | None, name: str, default: int, lo: int = 0, hi: int = 10_000) -> int:
    if value is None or value == "":
        return default
    if not value.isdigit() or not lo <= int(value) <= hi:
        raise ValidationError(f"{name} must be a whole number from {lo} to {hi}", field=name)
    return int(value)


def visible_namespaces(kb: KnowledgeBase, p: Principal) -> list[str]:
    """The namespaces the principal may see: its scope, or every one with entries."""
    if p.namespaces is not None:
        return sorted(p.namespaces)
    names = set(kb.stats(None)["namespaces"])
    names.add(DEFAULT_NAMESPACE)
    return sorted(names)


def _default_namespace(names: list[str]) -> str:
    return DEFAULT_NAMESPACE if DEFAULT_NAMESPACE in names or not names else names[0]


def build_ui(kb: KnowledgeBase, *, tls: bool, sessions: SessionStore | None = None) -> Starlette:
    """The console as a Starlette app, to be mounted at ``/ui``."""
    console = Console(kb, tls=tls, sessions=sessions)

    def signed_in(fn: Callable[[Request, Caller], Awaitable[Response]]) -> Handler:
        async def handler(request: Request) -> Response:
            caller = await console.caller(request)
            if caller is None:
                if request.method == "POST":
                    return console.error_page(
                        None, CsrfError("sign in first; the form was not accepted")
                    )
                return console.redirect("/ui/login")
            try:
                return await fn(request, caller)
            except SealedKBError as exc:
                log.info("console %s %s -> %s", request.method, request.url.path, exc.code)
                return failed(caller, request, exc)
            except Exception:
                log.exception("console page failed unexpectedly")
                return failed(caller, request, SealedKBError("internal error; see the server log"))

        return handler

    def failed(caller: Caller, request: Request, exc: SealedKBError) -> Response:
        """The error page; after a POST by way of /ui/result, except for a refused
        CSRF check (answered at once: the form was not this session's)."""
        if request.method != "POST" or isinstance(exc, CsrfError):
            return console.error_page(caller, exc)
        status = _STATUS.get(exc.code, 500)
        context = {"code": exc.code, "message": exc.message, "field": exc.field}
        return console.defer(caller, "error.html", context, status=status)

    async def result(request: Request, caller: Caller) -> Response:
        pending, caller.session.pending = caller.session.pending, None
        if pending is None:
            return console.redirect("/ui/entries")
        name, context, status = pending
        return console.page(name, caller, context, status=status)

    async def run(fn: Callable[[], Any]) -> Any:
        return await anyio.to_thread.run_sync(fn)

    # --- sign-in -------------------------------------------------------------------

    async def home(request: Request) -> Response:
        caller = await console.caller(request)
        return console.redirect("/ui/entries" if caller else "/ui/login")

    async def login_form(request: Request, error: str | None = None, status: int = 200) -> Response:
        session_id = request.cookies.get(COOKIE)
        session = console.sessions.get(session_id)
        if session is None or session_id is None:
            session_id, session = console.sessions.new()
        response = console.page(
            "login.html", None, {"error": error}, status=status, csrf=session.csrf
        )
        console.set_cookie(response, session_id)
        return response

    async def login_get(request: Request) -> Response:
        if request.query_params.get("failed") == "1":
            return await login_form(request, "That token is not valid (or revoked).", 401)
        return await login_form(request)

    async def login_post(request: Request) -> Response:
        session_id = request.cookies.get(COOKIE)
        session = console.sessions.get(session_id)
        if session is None:
            return console.error_page(
                None, CsrfError("the sign-in form expired or was not ours; reload it")
            )
        try:
            form = await console.form(request, session)
        except SealedKBError as exc:
            return console.error_page(None, exc)
        token = _text(form, "token")
        principal = None
        if token:
            try:
                principal = await run(lambda: kb.authenticate(token))
            except SealedKBError as exc:
                log.warning("console sign-in check failed: %s", exc.code)
        if principal is None:
            # A redirect, not a page: the history entry must not keep the posted token.
            return console.redirect("/ui/login?failed=1")
        # A new session id at sign-in: an id planted before sign-in is worth nothing.
        console.sessions.drop(session_id)
        new_id, _ = console.sessions.new(token)
        response = console.redirect("/ui/entries")
        console.set_cookie(response, new_id)
        return response

    async def logout(request: Request, caller: Caller) -> Response:
        await console.form(request, caller.session)
        console.sessions.drop(caller.session_id)
        response = console.redirect("/ui/login")
        response.delete_cookie(COOKIE, path="/ui")
        return response

    # --- reading ---------------------------------------------------------------------

    async def namespaces(request: Request, caller: Caller) -> Response:
        p = caller.principal
        p.require(Action.STATS)

        def go() -> list[dict[str, Any]]:
            stats = kb.stats(p.scope(None))["namespaces"]
            return [
                {
                    "name": ns,
                    "total": stats[ns]["total"] if ns in stats else 0,
                    "by_type": stats[ns]["by_type"] if ns in stats else {},
                }
                for ns in visible_namespaces(kb, p)
            ]

        return console.page("namespaces.html", caller, {"namespaces": await run(go)})

    async def entries(request: Request, caller: Caller) -> Response:
        p = caller.principal
        p.require(Action.LIST)
        q = request.query_params
        namespace = q.get("namespace") or None
        entry_type = q.get("type") or None
        tag = q.get("tag") or None
        page = _int(q.get("page"), "page", 1, 1, 10_000)
        offset = (page - 1) * PAGE_SIZE

        names = await run(lambda: visible_namespaces(kb, p))
        if tag and namespace is None:
            # Tags are keyed per namespace in encrypted mode: filter within one.
            namespace = _default_namespace(names)

        def go() -> list[Entry]:
            scope = p.scope(namespace)
            return kb.list(
                namespace=namespace,
                entry_type=entry_type,
                tag=tag,
                limit=PAGE_SIZE + 1,
                offset=offset,
                namespaces=scope,
            )

        found = await run(go)
        filters = {
            k: v for k, v in {"namespace": namespace, "type": entry_type, "tag": tag}.items() if v
        }
        more = len(found) > PAGE_SIZE
        return console.page(
            "entries.html",
            caller,
            {
                "entries": found[:PAGE_SIZE],
                "namespaces": names,
                "filters": filters,
                "page": page,
                "prev_url": f"/ui/entries?{urlencode({**filters, 'page': page - 1})}"
                if page > 1
                else None,
                "next_url": f"/ui/entries?{urlencode({**filters, 'page': page + 1})}"
                if more
                else None,
            },
        )

    async def search(request: Request, caller: Caller) -> Response:
        p = caller.principal
        q = request.query_params
        query = (q.get("q") or "").strip()
        names = await run(lambda: visible_namespaces(kb, p))
        namespace = q.get("namespace") or _default_namespace(names)
        mode = q.get("mode") or SearchMode.HYBRID.value
        offset = _int(q.get("offset"), "offset", 0, 0, 1000)
        result = None
        if query:
            p.require(Action.SEARCH, namespace)
            result = await run(
                lambda: kb.search(query, mode=mode, limit=10, offset=offset, namespace=namespace)
            )
        next_url = None
        if result is not None and result.next_offset is not None:
            params = {"q": query, "namespace": namespace, "mode": mode}
            next_url = f"/ui/search?{urlencode({**params, 'offset': result.next_offset})}"
        return console.page(
            "search.html",
            caller,
            {
                "query": query,
                "namespace": namespace,
                "namespaces": names,
                "mode": mode,
                "result": result,
                "next_url": next_url,
            },
        )

    async def entry(request: Request, caller: Caller) -> Response:
        p = caller.principal
        p.require(Action.GET)
        entry_id = request.path_params["entry_id"]
        e = await run(lambda: kb.get(entry_id, namespaces=p.namespaces))
        return console.page("entry.html", caller, {"entry": e, "html": render_markdown(e.content)})

    # --- writing -----------------------------------------------------------------------

    async def new_form(request: Request, caller: Caller) -> Response:
        caller.principal.require(Action.ADD)
        names = await run(lambda: visible_namespaces(kb, caller.principal))
        return console.page(
            "edit.html",
            caller,
            {"entry": None, "namespaces": names, "namespace": _default_namespace(names)},
        )

    async def new_post(request: Request, caller: Caller) -> Response:
        form = await console.form(request, caller.session)
        p = caller.principal
        namespace = _text(form, "namespace") or DEFAULT_NAMESPACE
        p.require(Action.ADD, namespace)
        content = form.get("content")
        if not isinstance(content, str) or not content.strip():
            raise ValidationError("content is required", field="content")
        e = await run(
            lambda: kb.add(
                content,
                title=_text(form, "title") or None,
                entry_type=_text(form, "entry_type") or EntryType.NOTE.value,
                tags=_tags(_text(form, "tags")),
                namespace=namespace,
                source=_text(form, "source") or None,
            )
        )
        return console.redirect(f"/ui/entries/{e.id}")

    async def edit_form(request: Request, caller: Caller) -> Response:
        p = caller.principal
        p.require(Action.UPDATE)
        entry_id = request.path_params["entry_id"]
        e = await run(lambda: kb.get(entry_id, namespaces=p.namespaces))
        return console.page("edit.html", caller, {"entry": e, "namespaces": [e.namespace]})

    async def edit_post(request: Request, caller: Caller) -> Response:
        form = await console.form(request, caller.session)
        p = caller.principal
        p.require(Action.UPDATE)
        entry_id = request.path_params["entry_id"]
        expected = _int(_text(form, "expected_version"), "expected_version", 0, 1, 2**31 - 1)
        content = form.get("content")
        patch = EntryPatch(
            title=_text(form, "title") or None,
            content=content if isinstance(content, str) and content.strip() else None,
            entry_type=_text(form, "entry_type") or None,
            tags=tuple(_tags(_text(form, "tags"))),
            source=_text(form, "source") or None,
        )
        try:
            e = await run(
                lambda: kb.update(
                    entry_id, patch, expected_version=expected or None, namespaces=p.namespaces
                )
            )
        except ConflictError as exc:
            current = await run(lambda: kb.get(entry_id, namespaces=p.namespaces))
            return console.defer(
                caller,
                "conflict.html",
                {
                    "entry": current,
                    "message": exc.message,
                    "mine": {
                        "title": patch.title,
                        "content": patch.content,
                        "tags": ", ".join(patch.tags or ()),
                    },
                    "expected": expected,
                },
                status=409,
            )
        return console.redirect(f"/ui/entries/{e.id}")

    async def delete_form(request: Request, caller: Caller) -> Response:
        p = caller.principal
        p.require(Action.DELETE)
        entry_id = request.path_params["entry_id"]
        e = await run(lambda: kb.get(entry_id, namespaces=p.namespaces))
        return console.page("delete.html", caller, {"entry": e})

    async def delete_post(request: Request, caller: Caller) -> Response:
        await console.form(request, caller.session)
        p = caller.principal
        p.require(Action.DELETE)
        entry_id = request.path_params["entry_id"]
        await run(lambda: kb.delete(entry_id, namespaces=p.namespaces))
        return console.redirect("/ui/entries")

    async def import_form(request: Request, caller: Caller) -> Response:
        caller.principal.require(Action.IMPORT)
        names = await run(lambda: visible_namespaces(kb, caller.principal))
        return console.page(
            "import.html",
            caller,
            {
                "namespaces": names,
                "namespace": _default_namespace(names),
                "summary": None,
                "max_bytes": MAX_UPLOAD_BYTES,
            },
        )

    async def import_post(request: Request, caller: Caller) -> Response:
        form = await console.form(request, caller.session)
        p = caller.principal
        namespace = _text(form, "namespace") or DEFAULT_NAMESPACE
        p.require(Action.IMPORT, namespace)
        upload = form.get("file")
        if not isinstance(upload, UploadFile) or not upload.filename:
            raise ValidationError("choose a file to import", field="file")
        name = _upload_name(upload.filename)
        data = await upload.read(MAX_UPLOAD_BYTES + 1)
        if len(data) > MAX_UPLOAD_BYTES:
            raise ValidationError(f"the file is larger than {MAX_UPLOAD_BYTES} bytes", field="file")
        entry_type = _text(form, "entry_type") or EntryType.DOC.value
        tags = _tags(_text(form, "tags"))
        summary = await run(lambda: _import_bytes(kb, name, data, namespace, entry_type, tags))
        names = await run(lambda: visible_namespaces(kb, p))
        return console.defer(
            caller,
            "import.html",
            {
                "namespaces": names,
                "namespace": namespace,
                "summary": summary,
                "max_bytes": MAX_UPLOAD_BYTES,
            },
        )

    # --- health (administrators) --------------------------------------------------------

    async def health(request: Request, caller: Caller) -> Response:
        if not caller.is_admin:
            raise AccessDeniedError("the health page is for administrators")
        from sealedkb.adapters.ui.health import health_view

        view = await run(lambda: health_view(kb, caller.principal))
        return console.page("health.html", caller, {"view": view, "report": None})

    async def health_verify(request: Request, caller: Caller) -> Response:
        form = await console.form(request, caller.session)
        if not caller.is_admin:
            raise AccessDeniedError("the health page is for administrators")
        from sealedkb.adapters.ui.health import health_view, verify_audit, verify_snapshot

        what = _text(form, "what")
        if what == "audit":
            report = await run(lambda: verify_audit(kb))
        elif what == "snapshot":
            ref = _text(form, "snapshot")
            report = await run(lambda: verify_snapshot(kb, ref))
        else:
            raise ValidationError("what must be audit or snapshot", field="what")
        view = await run(lambda: health_view(kb, caller.principal))
        return console.defer(caller, "health.html", {"view": view, "report": report})

    static = resources.files("sealedkb.adapters.ui") / "static"
    routes = [
        Route("/", home, methods=["GET"]),
        Route("/login", login_get, methods=["GET"]),
        Route("/login", login_post, methods=["POST"]),
        Route("/logout", signed_in(logout), methods=["POST"]),
        Route("/result", signed_in(result), methods=["GET"]),
        Route("/namespaces", signed_in(namespaces), methods=["GET"]),
        Route("/entries", signed_in(entries), methods=["GET"]),
        Route("/entries/new", signed_in(new_form), methods=["GET"]),
        Route("/entries/new", signed_in(new_post), methods=["POST"]),
        Route("/entries/{entry_id}", signed_in(entry), methods=["GET"]),
        Route("/entries/{entry_id}/edit", signed_in(edit_form), methods=["GET"]),
        Route("/entries/{entry_id}/edit", signed_in(edit_post), methods=["POST"]),
        Route("/entries/{entry_id}/delete", signed_in(delete_form), methods=["GET"]),
        Route("/entries/{entry_id}/delete", signed_in(delete_post), methods=["POST"]),
        Route("/search", signed_in(search), methods=["GET"]),
        Route("/import", signed_in(import_form), methods=["GET"]),
        Route("/import", signed_in(import_post), methods=["POST"]),
        Route("/health", signed_in(health), methods=["GET"]),
        Route("/health/verify", signed_in(health_verify), methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(static)), name="static"),
    ]
    app = Starlette(routes=routes)
    app.state.console = console
    return app


_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def _upload_name(filename: str) -> str:
    """The base name of an uploaded file, reduced to safe characters, with a suffix
    the importer reads (Markdown, text, HTML)."""
    base = os.path.basename(filename.replace("\\", "/"))
    name = _SAFE_NAME.sub("-", base).strip(".-")[:100] or "upload"
    if Path(name).suffix.lower() not in UPLOAD_SUFFIXES:
        raise ValidationError(
            "only Markdown (.md), text (.txt) and HTML (.html) files are imported",
            field="file",
        )
    return name


def _import_bytes(
    kb: KnowledgeBase, name: str, data: bytes, namespace: str, entry_type: str, tags: list[str]
) -> dict[str, Any]:
    """Import one uploaded file through the importer (the same parsing, chunking,
    limits and re-import rules as ``sealedkb import``). The file lives only for the
    call, in a private folder in memory (``/dev/shm`` where there is one), never in
    the home folder."""
    shm = Path("/dev/shm")  # noqa: S108 (mkdtemp below: a fresh 0700 folder)
    parent = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="sealedkb-upload-", dir=parent) as folder:
        root = Path(folder)
        root.chmod(0o700)
        path = root / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        summary = kb.import_paths(
            [str(path)], namespace=namespace, entry_type=entry_type, tags=tags, root=root
        )
    return summary.to_dict()
