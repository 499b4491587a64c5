"""``sealedkb serve`` and ``sealedkb token ...``: the MCP server and its bearer tokens."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from sealedkb.adapters.cli._common import JsonOpt, command, err, open_kb, out, print_json, settings
from sealedkb.errors import ValidationError
from sealedkb.model import DEFAULT_NAMESPACE

log = logging.getLogger("sealedkb.serve")

commands = typer.Typer()
token_app = typer.Typer(help="Bearer tokens for the HTTP MCP server.", no_args_is_help=True)


@command(commands, "serve")
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
        raise ValidationError("transport must be stdio or http", field="transport")
    from sealedkb.adapters.http import (
        HttpOptions,
        TokenVerifier,
        auth_settings,
        check_bind,
        run_http,
    )
    from sealedkb.adapters.mcp.server import build_server
    from sealedkb.kb.knowledge_base import KnowledgeBase
    from sealedkb.kb.replicas import start_replica_jobs
    from sealedkb.monitoring import alarms

    loaded = settings()
    opts = HttpOptions(
        host,
        port,
        tls_cert,
        tls_key,
        tls_client_ca,
        insecure,
        max_request_bytes=loaded.http_max_request_bytes,
        rate_per_second=loaded.http_rate_per_second,
        rate_burst=loaded.http_rate_burst,
    )
    if transport == "http":
        check_bind(opts)  # before touching the database: fail fast, change nothing
    alarms.check_settings(loaded)
    # The server acts as its service principal for key policies; its unwraps are
    # shared by every caller through the data-key cache.
    kb = KnowledgeBase.open(loaded, principal=loaded.service_principal)
    # Singleton jobs, each on the one replica holding its advisory lock (kb/replicas.py):
    # the key schedule (automatic rotation, destruction after the window) and a signed
    # audit checkpoint at least every 60 s; the built-in alarms (settings checked
    # above); automated encrypted snapshots in the daily window
    # (SEALEDKB_SNAPSHOT_WINDOW, "off": none), kept SEALEDKB_SNAPSHOT_RETENTION_DAYS days.
    jobs = start_replica_jobs(kb)
    try:
        if transport == "stdio":
            # stdout is the protocol channel: everything else goes to stderr.
            server = build_server(kb)
            server.run("stdio")
        else:
            server = build_server(
                kb, auth=auth_settings(opts, kb.settings), token_verifier=TokenVerifier(kb, opts)
            )
            if not kb.list_tokens():
                err.print(
                    "no tokens yet: create one with "
                    "'sealedkb token create --name NAME --role writer --namespace default'",
                    markup=False,
                )
            err.print(f"sealedkb MCP server at {opts.url}", markup=False, highlight=False)
            run_http(server, kb, opts)
    finally:
        jobs.stop()
        if kb.memory_index is not None:
            # the warm-start images of the namespaces it changed (search/warm_start.py)
            kb.memory_index.save()
        kb.close()


@command(token_app, "create")
def token_create(
    name: Annotated[str, typer.Option("--name", help="Who or what holds the token.")],
    namespace: Annotated[
        list[str] | None,
        typer.Option("--namespace", "-n", help="Namespace it may use (repeatable; '*' = all)."),
    ] = None,
    role: Annotated[str, typer.Option("--role", help="reader, writer or admin.")] = "reader",
    expires: Annotated[int | None, typer.Option("--expires", help="Days until it expires.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Create a token. It is printed once and stored only as a hash."""
    with open_kb() as kb:
        record, secret = kb.create_token(name, role, namespace or [DEFAULT_NAMESPACE], expires)
    if json_out:
        public = record.to_dict()
        public.pop("name", None)
        print_json({"name": record.name, "token": secret, **public})
        return
    sys.stdout.write(secret + "\n")
    err.print(
        f"token '{record.name}' ({record.role}, namespaces: {', '.join(record.namespaces)}) — "
        "shown once; store it now",
        markup=False,
        highlight=False,
    )


@command(token_app, "list")
def token_list(
    all_: Annotated[bool, typer.Option("--all", help="Include revoked tokens.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """List tokens (never the tokens themselves)."""
    from rich.table import Table

    with open_kb() as kb:
        records = kb.list_tokens(include_revoked=all_)
    if json_out:
        print_json([r.to_dict() for r in records])
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
    out.print(table)


@command(token_app, "revoke")
def token_revoke(name: Annotated[str, typer.Argument(help="Token name.")]) -> None:
    """Revoke a token; the next request with it gets 401."""
    with open_kb() as kb:
        kb.revoke_token(name)
    sys.stdout.write(f"revoked {name}\n")


@command(token_app, "rekey")
def token_rekey(json_out: JsonOpt = False) -> None:
    """Re-key tokens made by earlier versions (keyed hash and row MAC).

    One step after an upgrade; until then an encrypted knowledge base refuses them.
    Lists what it re-keyed: check these are tokens you issued."""
    with open_kb() as kb:
        records = kb.rekey_tokens()
    if json_out:
        print_json([r.to_dict() for r in records])
        return
    for r in records:
        out.print(
            Text(f"re-keyed {r.name} ({r.role}, namespaces: {', '.join(r.namespaces)})"),
            highlight=False,
        )
    if not records:
        sys.stdout.write("no token needed re-keying\n")
