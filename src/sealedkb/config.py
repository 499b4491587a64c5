"""Settings: defaults < ``$SEALEDKB_HOME/config.toml`` < environment (``SEALEDKB_*``) < flags.

Validated once at start-up; an invalid value stops the program with exit code 2
and names the setting.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import platformdirs
from pydantic import Field, SecretStr
from pydantic import ValidationError as PydanticValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from sealedkb.errors import ConfigError

CONFIG_FILE = "config.toml"


def default_home() -> Path:
    return Path(platformdirs.user_data_dir("sealedkb", appauthor=False))


def resolve_home(home: Path | str | None = None) -> Path:
    if home is not None:
        return Path(home).expanduser().absolute()
    env = os.environ.get("SEALEDKB_HOME")
    return Path(env).expanduser().absolute() if env else default_home()


class Settings(BaseSettings):
    """All knobs. Secrets are SecretStr so they never print."""

    model_config = SettingsConfigDict(env_prefix="SEALEDKB_", extra="forbid")

    home: Path = Field(default_factory=default_home)
    database_url: SecretStr | None = None
    # Opt-out of the TLS requirement for remote databases (logged loudly).
    database_allow_insecure: bool = False
    root_key_file: Path | None = None
    passphrase: SecretStr | None = None
    data_key_max_age: float = Field(default=300.0, ge=1.0, le=3600.0)
    pool_max_size: int = Field(default=8, ge=1, le=100)
    log_level: str = Field(default="WARNING", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    # Embedding model for semantic search: minilm (local ONNX, default), hash (a
    # model-free test embedder) or none (keyword search only).
    embedder: str = Field(default="minilm", pattern=r"^(minilm|hash|none)$")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        home = resolve_home(init_settings().get("home"))
        toml = TomlConfigSettingsSource(settings_cls, toml_file=home / CONFIG_FILE)
        return (init_settings, env_settings, toml)

    @property
    def pgdata(self) -> Path:
        return self.home / "pgdata"

    @property
    def keys_dir(self) -> Path:
        return self.home / "keys"


def check_config_file(home: Path) -> None:
    """Refuse a config.toml that holds secrets and is readable by other users."""
    path = home / CONFIG_FILE
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        return
    if not mode & 0o077:
        return
    text = path.read_text(encoding="utf-8", errors="replace")
    if "passphrase" in text or "database_url" in text:
        raise ConfigError(
            f"{path} may hold secrets (passphrase, database_url) and is readable by other "
            f"users; run: chmod 600 {path}",
            field="config_file",
        )


def load_settings(home: Path | str | None = None, **overrides: Any) -> Settings:
    """Build settings or raise ConfigError naming the bad setting."""
    check_config_file(resolve_home(home))
    try:
        values: dict[str, Any] = {"home": resolve_home(home)}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return Settings(**values)
    except PydanticValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(str(p) for p in first.get("loc", ())) or "settings"
        # Never echo the input: it may be a secret.
        raise ConfigError(f"invalid setting {name}: {first.get('msg')}", field=name) from None
