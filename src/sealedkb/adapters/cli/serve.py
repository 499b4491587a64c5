"""``sealedkb serve`` and ``sealedkb token ...``: the MCP server and its bearer tokens."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from sealedkb.adapters.cli import app as cli
from sealedkb.adapters.http import HttpOptions, TokenVerifier, auth_settings, check_bind, run_http
from sealedkb.adapters.mcp.server import build_server
from sealedkb.errors import SealedKBError, ValidationError
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.model import DEFAULT_NAMESPACE
from sealedkb.monitoring import alarms
from sealedkb.kb.snapshotting import start_scheduler
from sealedkb.store.tokens import TokenRecord

log = logging.getLogger("sealedkb.serve")

token_app = typer.Typer(help="Bearer tokens for the HTTP MCP server.", no_args_is_help=True)


def serve(
    transport: Annotated[
        str, typer.Option("--transport", help="stdio (one local agent) or http.")
    ] = "stdio",
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 8765,
    tls_cert: Annotated[
        Path | None, typer.Option("--tls-cert", help="PEM certificate chain.")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", help="PEM private key.")] = None,
    tls_client_ca: Annotated[
        Path | None,
        typer.Option("--tls-client-ca", help="Require client certificates from this CA."),
    ] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Allow plain HTTP on a non-loopback address.")
    ] = False,
) -> None:
    """Serve the knowledge base over MCP (stdio, or streamable HTTP at /mcp)."""
    if transport not in ("stdio", "http"):
        cli._fail(ValidationError("transport must be stdio or http", field="transport"))

    def open_kb() -> tuple[KnowledgeBase, HttpOptions]:
        settings = cli._settings()
        opts = HttpOptions(
            host,
            port,
            tls_cert,
            tls_key,
            tls_client_ca,
            insecure,
            max_request_bytes=settings.http_max_request_bytes,
            rate_per_second=settings.http_rate_per_second,
            rate_burst=settings.http_rate_burst,
        )
        if transport == "http":
            check_bind(opts)  # before touching the database: fail fast, change nothing
        alarms.check_settings(settings)
        # The server acts as its service principal for key policies; its unwraps are
        # shared by every caller through the data-key cache.
        return KnowledgeBase.open(settings, principal=settings.service_principal), opts

    kb, opts = cli._run(open_kb)
    # Key schedule (automatic rotation, destruction after the window) and a signed
    # audit checkpoint at least every 60 s while serving.
    housekeeper = kb.start_housekeeping()
    # Built-in alarms (monitoring/alarms.py): evaluated in this process, which holds the counters.
    evaluator = alarms.start_evaluator(kb)  # settings checked in open_kb
    # Automated encrypted snapshots in the daily window (SEALEDKB_SNAPSHOT_WINDOW), kept
    # SEALEDKB_SNAPSHOT_RETENTION_DAYS days; None when the window is "off".
    snapshots = start_scheduler(kb)
    try:
        if transport == "stdio":
            # stdout is the protocol channel: everything else goes to stderr.
            server = build_server(kb)
            server.run("stdio")
        else:
            server = build_server(kb, auth=auth_settings(opts), token_verifier=TokenVerifier(kb))
            if not kb.list_tokens():
                cli.err.print(
                    "no tokens yet: create one with "
                    "'sealedkb token create --name NAME --role writer --namespace default'",
                    markup=False,
                )
            cli.err.print(f"sealedkb MCP server at {opts.url}", markup=False, highlight=False)
            run_http(server, kb, opts)
    except SealedKBError as exc:
        cli._fail(exc)
    finally:
        if evaluator is not None:
            evaluator.stop()
        if snapshots is not None:
            snapshots.stop()
        housekeeper.stop()
        kb.close()


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option("--name", help="Who or what holds the token.")],
    namespace: Annotated[
        list[str] | None,
        typer.Option("--namespace", "-n", help="Namespace it may use (repeatable; '*' = all)."),
    ] = None,
    role: Annotated[str, typer.Option("--role", help="reader, writer or admin.")] = "reader",
    expires: Annotated[int | None, typer.Option("--expires", help="Days until it expires.")] = None,
    json_out: cli.JsonOpt = False,
) -> None:
    """Create a token. It is printed once and stored only as a hash."""

    def go() -> tuple[TokenRecord, str]:
        with cli._kb() as kb:
            return kb.create_token(name, role, namespace or [DEFAULT_NAMESPACE], expires)

    record, secret = cli._run(go)
    if json_out:
        cli._print_json({"name": record.name, "token": secret, **_public(record)})
        return
    sys.stdout.write(secret + "\n")
    cli.err.print(
        f"token '{record.name}' ({record.role}, namespaces: {', '.join(record.namespaces)}) — "
        "shown once; store it now",
        markup=False,
        highlight=False,
    )


def _public(record: TokenRecord) -> dict[str, Any]:
    d = record.to_dict()
    d.pop("name", None)
    return d


@token_app.command("list")
def token_list(
    all_: Annotated[bool, typer.Option("--all", help="Include revoked tokens.")] = False,
    json_out: cli.JsonOpt = False,
) -> None:
    """List tokens (never the tokens themselves)."""

    def go() -> list[TokenRecord]:
        with cli._kb() as kb:
            return kb.list_tokens(include_revoked=all_)

    records = cli._run(go)
    if json_out:
        cli._print_json([r.to_dict() for r in records])
        return
    table = Table("name", "role", "namespaces", "expires", "last used", "revoked")
    for r in records:
        table.add_row(
            Text(r.name),
            r.role,
            Text(", ".join(r.namespaces)),
            r.expires_at.strftime("%Y-%m-%d") if r.expires_at else "never",
            r.last_used_at.strftime("%Y-%m-%d %H:%M") if r.last_used_at else "-",
            r.revoked_at.strftime("%Y-%m-%d %H:%M") if r.revoked_at else "",
        )
    cli.out.print(table)


@token_app.command("revoke")
def token_revoke(name: Annotated[str, typer.Argument(help="Token name.")]) -> None:
    """Revoke a token; the next request with it gets 401."""

    def go() -> None:
        with cli._kb() as kb:
            kb.revoke_token(name)

    cli._run(go)
    sys.stdout.write(f"revoked {name}\n")


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.add_typer(token_app, name="token")
