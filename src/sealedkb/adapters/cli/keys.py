"""``sealedkb key …``, ``datakey …``, ``reencrypt`` and ``audit …``: the key lifecycle
and the audit trail.

Thin, like app.py: parse, call the knowledge base's key lifecycle
(``kb.keys``) or audit trail (``kb.audit``), print. Every command is audited
by the service (success or failure) under the ``--principal`` of the call, and a
signed audit checkpoint is written when the command ends.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from sealedkb.adapters.cli._common import JsonOpt, command, open_kb, out, print_json, warn
from sealedkb.errors import IntegrityError, ValidationError

if TYPE_CHECKING:
    from sealedkb.kb.knowledge_base import KnowledgeBase
    from sealedkb.keys.lifecycle import KeyLifecycle

commands = typer.Typer()

key_app: typer.Typer = typer.Typer(
    help="KMS keys: lifecycle, rotation, deletion, policy.", no_args_is_help=True
)
rotation_app: typer.Typer = typer.Typer(
    help="Automatic rotation of a KMS key.", no_args_is_help=True
)
key_app.add_typer(rotation_app, name="rotation")
datakey_app: typer.Typer = typer.Typer(
    help="Data keys (one per namespace and purpose).", no_args_is_help=True
)
audit_app: typer.Typer = typer.Typer(help="The tamper-evident audit trail.", no_args_is_help=True)

KeyArg = Annotated[
    str | None,
    typer.Argument(
        metavar="[KEY]", help="Key URI (local:key/<uuid>) or uuid; default: this KB's key."
    ),
]
NamespaceOpt = Annotated[
    str | None, typer.Option("--namespace", "-n", help="Only this namespace (default: all).")
]


def _keys(kb: KnowledgeBase) -> KeyLifecycle:
    if kb.keys is None:
        raise ValidationError(
            "encryption is off in this knowledge base: there are no keys to manage",
            field="encryption",
        )
    return kb.keys


def _print_key(meta: dict[str, Any], json_out: bool, headline: str | None = None) -> None:
    if json_out:
        print_json(meta)
        return
    if headline:
        out.print(headline, markup=False, highlight=False)
    table = Table(show_header=False, box=None)
    for name, value in meta.items():
        table.add_row(name, Text("-" if value is None else str(value)))
    out.print(table)


# --- key ------------------------------------------------------------------------


@command(key_app, "list")
def key_list(json_out: JsonOpt = False) -> None:
    """List the KMS keys in the keystore."""
    with open_kb() as kb:
        keys = _keys(kb).list_keys()
    if json_out:
        print_json(keys)
        return
    table = Table("state", "versions", "rotation", "deletion_date", "in use")
    table.add_column("key_id", no_wrap=True)
    for k in keys:
        rotation = f"every {k['rotation_period_days']} d" if k["rotation_enabled"] else "off"
        table.add_row(
            k["state"],
            str(k["versions"]),
            rotation,
            k["deletion_date"] or "-",
            "yes" if k["in_use"] else "",
            k["key_id"],
        )
    out.print(table)


@command(key_app, "describe")
def key_describe(key: KeyArg = None, json_out: JsonOpt = False) -> None:
    """Show a key: state, rotation, versions, deletion date."""
    with open_kb() as kb:
        meta = _keys(kb).describe(key)
    _print_key(meta, json_out)


@command(key_app, "create")
def key_create(
    description: Annotated[str, typer.Option("--description", help="Free text.")] = "",
    json_out: JsonOpt = False,
) -> None:
    """Create a KMS key (Enabled, yearly rotation on). Prints its id."""
    with open_kb() as kb:
        meta = _keys(kb).create(description)
    if json_out:
        print_json(meta)
    else:
        sys.stdout.write(f"{meta['key_id']}\n")


@command(key_app, "rotate")
def key_rotate(
    key: KeyArg = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Data keys per batch.")] = 100,
    rewrap_only: Annotated[
        bool,
        typer.Option(
            "--rewrap-only", help="No new version: finish re-wrapping after an interruption."
        ),
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Rotate now: new key material version, then re-wrap every data key under it
    (online: reads go on)."""
    with open_kb() as kb:
        meta = _keys(kb).rotate(key, batch_size=batch_size, rewrap_only=rewrap_only)
    _print_key(
        meta,
        json_out,
        f"rotated {meta['key_id']} to version {meta['versions']}; "
        f"{meta['data_keys_rewrapped']} data keys re-wrapped",
    )


@command(key_app, "migrate")
def key_migrate(
    to: Annotated[
        str,
        typer.Option(
            "--to",
            help="The new custodian: a key URI (local:key/<uuid>, pkcs11:token=..;object=.., "
            "kmip:<uid>, ...) or a provider name (local, pkcs11, kmip, ...) for a new key.",
        ),
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what would move; change nothing.")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Change custody: re-wrap every data key under another KMS key (any provider),
    online and resumable (run it again after an interruption), then switch the
    knowledge base to it. The old provider is no longer needed afterwards."""
    with open_kb() as kb:
        report = kb.custody().run(to, dry_run=dry_run).to_dict()
    if json_out:
        print_json(report)
        return
    if report["dry_run"]:
        out.print(
            f"would re-wrap {report['to_rewrap']} of {report['data_keys']} data keys from "
            f"{report['from_key']} to {report['to_key']}",
            markup=False,
            highlight=False,
        )
    else:
        out.print(
            f"re-wrapped {report['rewrapped']} data keys to {report['to_key']}"
            + ("; switched" if report["switched"] else ""),
            markup=False,
            highlight=False,
        )
    for w in report["warnings"]:
        warn(w)


@command(rotation_app, "enable")
def rotation_enable(
    key: KeyArg = None,
    period_days: Annotated[
        int | None, typer.Option("--period-days", help="90-2560 days (default 365).")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Turn automatic rotation on (or change its period)."""
    with open_kb() as kb:
        meta = _keys(kb).set_rotation(key, True, period_days)
    _print_key(meta, json_out, f"automatic rotation every {meta['rotation_period_days']} days")


@command(rotation_app, "disable")
def rotation_disable(key: KeyArg = None, json_out: JsonOpt = False) -> None:
    """Turn automatic rotation off (on-demand rotation still works)."""
    with open_kb() as kb:
        meta = _keys(kb).set_rotation(key, False)
    _print_key(meta, json_out, "automatic rotation off")


@command(key_app, "disable")
def key_disable(key: KeyArg = None, json_out: JsonOpt = False) -> None:
    """Emergency stop: nothing can be wrapped or unwrapped with the key. Running
    processes stop within the data-key cache age."""
    with open_kb() as kb:
        meta = _keys(kb).disable(key)
    _print_key(meta, json_out, f"{meta['key_id']} is {meta['state']}")


@command(key_app, "enable")
def key_enable(key: KeyArg = None, json_out: JsonOpt = False) -> None:
    """Make a disabled key usable again (running processes recover by themselves)."""
    with open_kb() as kb:
        meta = _keys(kb).enable(key)
    _print_key(meta, json_out, f"{meta['key_id']} is {meta['state']}")


@command(key_app, "schedule-deletion")
def key_schedule_deletion(
    key: KeyArg = None,
    pending_window_days: Annotated[
        int,
        typer.Option("--pending-window-days", help="7-30 days before destruction (default 30)."),
    ] = 30,
    json_out: JsonOpt = False,
) -> None:
    """Schedule destruction of the key material. Until the date, every use fails and
    'key cancel-deletion' can undo it; after it, the data it protects is gone."""
    with open_kb() as kb:
        meta = _keys(kb).schedule_deletion(key, pending_window_days)
    _print_key(meta, json_out, f"{meta['key_id']} will be destroyed on {meta['deletion_date']}")


@command(key_app, "cancel-deletion")
def key_cancel_deletion(key: KeyArg = None, json_out: JsonOpt = False) -> None:
    """Cancel a scheduled deletion; the key returns as Disabled ('key enable' next)."""
    with open_kb() as kb:
        meta = _keys(kb).cancel_deletion(key)
    _print_key(meta, json_out, f"deletion cancelled; {meta['key_id']} is {meta['state']}")


@command(key_app, "get-policy")
def key_get_policy(key: KeyArg = None, json_out: JsonOpt = False) -> None:
    """Print the key policy (JSON)."""
    with open_kb() as kb:
        policy = _keys(kb).get_policy(key)
    print_json(policy)


@command(key_app, "put-policy")
def key_put_policy(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="Policy JSON ('-' for stdin).")],
    key: KeyArg = None,
    bypass_lockout_check: Annotated[
        bool,
        typer.Option(
            "--bypass-lockout-check",
            help="Allow a policy that takes PutKeyPolicy away from you.",
        ),
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Replace the key policy (validated first; a bad policy changes nothing)."""
    if str(file) == "-":
        text = sys.stdin.read()
    else:
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            raise ValidationError(f"cannot read {file} as UTF-8 text", field="file") from None
    with open_kb() as kb:
        policy = _keys(kb).put_policy(key, text, bypass_lockout_check=bypass_lockout_check)
    if json_out:
        print_json(policy)
    else:
        out.print(f"policy replaced ({len(policy['Statement'])} statements)")


# --- data keys and re-encryption ---------------------------------------------------


@command(datakey_app, "rotate")
def datakey_rotate(namespace: NamespaceOpt = None, json_out: JsonOpt = False) -> None:
    """New content data keys for new writes; existing rows stay readable under the
    retired keys until 'sealedkb reencrypt' moves them."""
    with open_kb() as kb:
        rotated = _keys(kb).rotate_data_keys(namespace)
    if json_out:
        print_json(rotated)
        return
    for r in rotated:
        out.print(
            f"{r['namespace']}: content data key {r['data_key_id']} active, "
            f"{r['retired_data_key_id']} retired",
            markup=False,
            highlight=False,
        )
    out.print("next: sealedkb reencrypt (moves existing rows to the new keys)")


@command(commands, "reencrypt")
def reencrypt(
    namespace: NamespaceOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Rows per transaction.")] = 500,
    pause: Annotated[
        float, typer.Option("--pause", help="Seconds to wait between batches (limits load).")
    ] = 0.0,
    json_out: JsonOpt = False,
) -> None:
    """Move every entry to its namespace's active data key, online and in batches.
    Safe to interrupt: run it again to finish."""

    def progress(done: int, total: int) -> None:
        sys.stderr.write(f"re-encrypted {done}/{total} rows\n")
        sys.stderr.flush()

    with open_kb() as kb:
        result = _keys(kb).reencrypt(
            namespace, batch_size=batch_size, pause=pause, progress=progress
        )

    if json_out:
        print_json(result)
    else:
        out.print(
            f"re-encrypted {result['reencrypted']} rows; {result['remaining']} remain on "
            f"retired data keys; {result['failed']} failed"
        )
    if result["failed"]:
        raise IntegrityError(
            f"{result['failed']} entries failed their integrity check and were not "
            f"re-encrypted: {', '.join(result['failed_ids'])}"
        )


# --- audit ----------------------------------------------------------------------


@command(audit_app, "list")
def audit_list(
    since: Annotated[
        str | None,
        typer.Option("--since", help="ISO 8601 date/time, or an age: 30m, 12h, 7d."),
    ] = None,
    action: Annotated[str | None, typer.Option("--action", help="e.g. Decrypt, RotateKey.")] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many (1-10000).")] = 100,
    json_out: JsonOpt = False,
) -> None:
    """Audit events, oldest first."""
    from sealedkb.audit.chain import parse_since

    when = parse_since(since) if since is not None else None
    with open_kb() as kb:
        events = kb.audit.events(since=when, action=action, limit=limit)
    if json_out:
        print_json(events)
        return
    table = Table("seq", "time", "principal", "action", "outcome", "namespace", "error")
    for e in events:
        table.add_row(
            str(e["seq"]),
            e["time"][:19],
            Text(e["principal"]),
            e["action"],
            e["outcome"],
            e["namespace"] or "",
            e["error_code"] or "",
        )
    out.print(table)


@command(audit_app, "verify")
def audit_verify(json_out: JsonOpt = False) -> None:
    """Check the hash chain and the signed checkpoints. Exit 6 names the first bad
    sequence number and what is wrong (changed, missing, truncated, checkpoint-mismatch,
    checkpoint-missing)."""
    with open_kb() as kb:
        report = kb.audit.verify().to_dict()
    if json_out:
        print_json(report)
    else:
        out.print(
            f"{report['events']} events, head {report['head_seq']}; checkpoint "
            f"{report['checkpoint_seq'] if report['checkpoint_seq'] is not None else 'none'}",
            markup=False,
        )
        for w in report["warnings"]:
            warn(w)
    if not report["ok"]:
        raise IntegrityError(
            f"audit trail broken at event {report['first_bad_seq']} "
            f"({report['problem']}): {report['message']}"
        )
    if not json_out:
        out.print("audit trail intact")
