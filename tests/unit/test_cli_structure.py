"""The command line package's shape, and the one error path every command shares.

Modules: one per command group, app.py only assembles them, nothing imports app.py
back, every command is registered by ``_common.command`` (which prints
``error[CODE] (field): message`` on stderr and exits with the error's code), and
no module imports the store or crypto layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

from typer.testing import CliRunner, Result

import sealedkb.adapters.cli as cli_package
from sealedkb.adapters.cli.app import app

PACKAGE = Path(cli_package.__file__).parent
MODULES = sorted(p for p in PACKAGE.glob("*.py") if p.name != "__init__.py")


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def invoke(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> Result:
    environ = {"SEALEDKB_HOME": str(tmp_path), **(env or {})}
    return CliRunner().invoke(app, ["--home", str(tmp_path), *args], env=environ)


def test_one_module_per_command_group() -> None:
    assert {p.stem for p in MODULES} == {
        "_common",
        "app",
        "alarms",
        "bulk",
        "db",
        "doctor",
        "entries",
        "export",
        "keys",
        "mcp_config",
        "migrate",
        "search",
        "serve",
        "snapshot",
    }


def test_no_module_imports_app_back() -> None:
    for path in MODULES:
        if path.stem != "app":
            assert "sealedkb.adapters.cli.app" not in imported_modules(path), path.name


def test_no_module_imports_store_or_crypto() -> None:
    for path in [*MODULES, PACKAGE / "__init__.py"]:
        for name in imported_modules(path):
            assert not name.startswith(("sealedkb.store", "sealedkb.crypto")), (path.name, name)


def test_commands_are_registered_only_by_the_command_decorator() -> None:
    for path in MODULES:
        if path.stem == "_common":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                assert node.func.attr != "command", f"{path.name}:{node.lineno}"


def test_every_command_has_help(tmp_path: Path) -> None:
    result = invoke(tmp_path, "--help")
    assert result.exit_code == 0
    for name in ("init", "add", "get", "list", "status", "search", "serve", "db", "mcp"):
        assert f" {name} " in result.stdout


def test_an_error_before_the_database_prints_code_and_field(tmp_path: Path) -> None:
    result = invoke(tmp_path, "add", "--file", str(tmp_path / "missing.md"))
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith("error[VALIDATION_ERROR] (file): cannot read ")


def test_serve_refuses_an_unknown_transport(tmp_path: Path) -> None:
    result = invoke(tmp_path, "serve", "--transport", "carrier-pigeon")
    assert result.exit_code == 2
    assert result.stderr == "error[VALIDATION_ERROR] (transport): transport must be stdio or http\n"


def test_a_bad_setting_is_a_config_error_naming_it(tmp_path: Path) -> None:
    result = invoke(tmp_path, "db", "url", env={"SEALEDKB_LOG_LEVEL": "LOUD"})
    assert result.exit_code == 2
    assert result.stderr.startswith("error[CONFIG_ERROR] (log_level): invalid setting log_level")
    assert "LOUD" not in result.stderr  # the input is never echoed


def test_db_url_drops_the_password(tmp_path: Path) -> None:
    url = "postgresql://kb:s3cret-pw@127.0.0.1:5999/kb"
    result = invoke(tmp_path, "db", "url", env={"SEALEDKB_DATABASE_URL": url})
    assert result.exit_code == 0, result.output
    assert "s3cret-pw" not in result.output
    assert "user=kb" in result.stdout
    assert "port=5999" in result.stdout
