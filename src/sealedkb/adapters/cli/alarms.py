"""``sealedkb alarms list | history | test``: the built-in alarms
(:mod:`sealedkb.monitoring.alarms`).

``serve`` evaluates the alarms and keeps their state in PostgreSQL (shared by
every serving replica); these commands read it from another process.
``list --evaluate`` evaluates, here and now, the alarms whose data
any process can read (availability, audit trail, snapshots); the alarms on the
serving process's own counters keep the state ``serve`` gave them.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Annotated

import typer
from rich.text import Text

from sealedkb.adapters.cli._common import JsonOpt, command, open_kb, out, print_json, settings
from sealedkb.errors import ConfigError, ValidationError

if TYPE_CHECKING:
    from sealedkb.config import Settings
    from sealedkb.kb.knowledge_base import KnowledgeBase

alarms_app: typer.Typer = typer.Typer(
    help="Built-in alarms on encryption health (evaluated by serve).", no_args_is_help=True
)

_STYLE = {"OK": "green", "ALARM": "bold red", "INSUFFICIENT_DATA": "yellow"}


def alarm_summary(kb: KnowledgeBase) -> dict[str, str]:
    """Alarm name -> state, for ``status``."""
    from sealedkb.monitoring import alarms

    loaded: Settings = kb.settings
    try:
        rows = alarms.list_alarms(
            alarms.load_specs(loaded.alarms),
            alarms.TableAlarmStore.of(kb),
            loaded.alarm_runbook_base,
        )
    except ConfigError:
        return {}
    return {r["name"]: r["state"] for r in rows if r["enabled"]}


@command(alarms_app, "list")
def alarms_list(
    evaluate: Annotated[
        bool,
        typer.Option(
            "--evaluate",
            help="Evaluate the shared-data alarms now (availability, audit, snapshots).",
        ),
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Every alarm: state, reason, metric, period, threshold, runbook link."""
    from rich.table import Table

    from sealedkb.monitoring import alarms

    loaded = settings()
    specs = alarms.load_specs(loaded.alarms)
    # opened with the knowledge base: each stored row's MAC is checked (a forged one is
    # refused and reads INSUFFICIENT_DATA)
    with open_kb() as kb:
        if evaluate:
            alarms.Evaluator(kb, specs=specs, scopes=("shared",)).evaluate()
        rows = alarms.list_alarms(specs, alarms.TableAlarmStore.of(kb), loaded.alarm_runbook_base)
    if json_out:
        print_json(rows)
        return
    table = Table("alarm", "state", "since", "scope", "reason")
    for r in rows:
        table.add_row(
            r["name"],
            Text(r["state"], style=_STYLE.get(r["state"], "")),
            (r["since"] or "-")[:19],
            r["scope"],
            Text(r["reason"]),
        )
    out.print(table)


@command(alarms_app, "history")
def alarms_history(
    name: Annotated[str | None, typer.Argument(metavar="[NAME]", help="Only this alarm.")] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many changes.")] = 50,
    json_out: JsonOpt = False,
) -> None:
    """State changes, newest first (tests marked)."""
    from rich.table import Table

    from sealedkb.monitoring import alarms

    loaded = settings()
    if name is not None:
        alarms.find_spec(alarms.load_specs(loaded.alarms), name)
    if not 1 <= limit <= alarms.HISTORY_KEPT:
        raise ValidationError(f"--limit must be 1-{alarms.HISTORY_KEPT}", field="limit")
    with open_kb() as kb:  # each stored change's MAC is checked; a forged one is left out
        items = alarms.history(alarms.TableAlarmStore.of(kb), name, limit)
    if json_out:
        print_json(items)
        return
    table = Table("time", "alarm", "change", "reason")
    for h in items:
        change = Text(f"{h['previous_state']} -> ")
        change.append(h["state"], style=_STYLE.get(h["state"], ""))
        if h.get("test"):
            change.append(" (test)")
        table.add_row(str(h["time"])[:19], h["alarm"], change, Text(str(h["reason"])))
    out.print(table)


@command(alarms_app, "test")
def alarms_test(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The alarm to test.")],
    json_out: JsonOpt = False,
) -> None:
    """Force NAME into ALARM, send its notifications, then return it to its evaluated
    state (like CloudWatch's SetAlarmState)."""
    from sealedkb.monitoring import alarms

    loaded = settings()
    specs = alarms.load_specs(loaded.alarms)
    alarms.find_spec(specs, name)
    with open_kb() as kb:
        changes = alarms.Evaluator(kb, specs=specs, scopes=("shared",)).force_alarm(name)
    if json_out:
        print_json([dataclasses.asdict(c) for c in changes])
        return
    for c in changes:
        out.print(
            f"{c.alarm}: {c.previous_state} -> {c.state}" + (" (test)" if c.test else ""),
            markup=False,
            highlight=False,
        )
