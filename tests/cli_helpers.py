"""The one way tests run the CLI, and other plain helpers shared by test modules.
The fixtures built on them (``cli``, ``make_cli``, ``cli_env``, ``all_entries``) are
in tests/conftest.py; import from here only where a test needs the plain function."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

import sealedkb
from sealedkb.kb.knowledge_base import KnowledgeBase

Cli = Callable[..., Result]


def make_cli(home: Path, url: str | None, env: Mapping[str, str] | None = None) -> Cli:
    """A function running ``sealedkb --home <home> ARGS`` in-process (typer's CliRunner)
    with SEALEDKB_HOME, SEALEDKB_DATABASE_URL (``url``, if given) and ``env`` set;
    each call may add ``env=`` (merged last), ``input=`` and ``url=`` (another
    database for this call)."""
    from sealedkb.adapters.cli.app import app  # the CLI loads only when a test runs it

    runner = CliRunner()
    base = dict(env or {})

    def cli(
        *args: str,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
        url: str | None = url,
    ) -> Result:
        environ = {"SEALEDKB_HOME": str(home)}
        if url is not None:
            environ["SEALEDKB_DATABASE_URL"] = url
        environ.update(base)
        environ.update(env or {})
        # --home every time: the CLI keeps it in module state between invocations
        return runner.invoke(app, ["--home", str(home), *args], input=input, env=environ)

    return cli


@pytest.fixture(name="cli")
def initialised_cli(cli: Cli) -> Cli:
    """The shared ``cli`` (tests/conftest.py) after ``sealedkb init``. A test module whose
    tests want an initialised knowledge base imports it (``from tests.cli_helpers
    import initialised_cli``): a fixture imported into a module overrides conftest's."""
    result = cli("init")
    assert result.exit_code == 0, result.output
    return cli


def subprocess_env(database_url: str) -> dict[str, str]:
    """The environment of a ``python -m sealedkb`` child process: this one without
    SEALEDKB_* settings, the hashing embedder, the database and src on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEALEDKB_")}
    env["SEALEDKB_EMBEDDER"] = "hash"
    env["SEALEDKB_SEARCH_INDEX"] = os.environ.get("SEALEDKB_SEARCH_INDEX", "server")
    env["SEALEDKB_DATABASE_URL"] = database_url
    src = str(Path(sealedkb.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


def all_entries(kb: KnowledgeBase) -> dict[str, dict[str, Any]]:
    """Every live entry by id (pages of 1000), for before/after comparisons."""
    out: dict[str, Any] = {}
    offset = 0
    while page := kb.list(limit=1000, offset=offset):
        out.update({str(e.id): e.to_dict() for e in page})
        offset += len(page)
    return out
