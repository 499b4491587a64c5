"""Settings: defaults < ``$SEALEDKB_HOME/config.toml`` < environment (``SEALEDKB_*``) < flags.

Validated once at start-up; an invalid value stops the program with exit code 2
and names the setting.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import platformdirs
from pydantic import Field, SecretStr, field_validator
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
    # TLS to the database (docs/TRANSPORT-SECURITY.md): CA file (PEM, or "system") that
    # verifies the server, and an optional client certificate and key; merged into the URL.
    database_sslrootcert: str | None = None
    database_sslcert: Path | None = None
    database_sslkey: Path | None = None
    root_key_file: Path | None = None
    passphrase: SecretStr | None = None
    # Accept a passphrase below the strength floor (keys/local.py); shown as a warning.
    allow_weak_passphrase: bool = False
    # The KMS key a new knowledge base is sealed under (any registered scheme, e.g.
    # pkcs11:token=<label>;object=<label> or kmip:<uid>); unset: init creates a local key.
    kms_key_uri: str | None = Field(default=None, max_length=512)
    # PKCS#11 HSM (keys/pkcs11.py): the module, the user PIN (environment, or a 0600
    # file), the wrap mechanism (aes-gcm with AAD, or aes-kwp: RFC 5649 key wrap) and
    # the label of the token's HMAC key for audit checkpoints and token MACs.
    pkcs11_module: Path | None = None
    pkcs11_token: str | None = Field(default=None, max_length=32)  # where new keys go
    pkcs11_pin: SecretStr | None = None
    pkcs11_pin_file: Path | None = None
    pkcs11_mechanism: str = Field(default="aes-gcm", pattern=r"^(aes-gcm|aes-kwp)$")
    pkcs11_mac_object: str = Field(default="sealedkb-audit-mac", min_length=1, max_length=64)
    # KMIP server (keys/kmip.py): mutual TLS 1.2; the client certificate's CN is the
    # identity the server knows.
    kmip_host: str = "127.0.0.1"
    kmip_port: int = Field(default=5696, ge=1, le=65535)
    kmip_cert: Path | None = None
    kmip_key: Path | None = None
    kmip_ca: Path | None = None
    kmip_timeout: float = Field(default=10.0, gt=0, le=120.0)
    data_key_max_age: float = Field(default=300.0, ge=1.0, le=3600.0)
    # Who is acting: the operator of a CLI call (--principal), evaluated against key
    # policies and written to the audit trail. A serving process acts as
    # service_principal. Same alphabet as keys/policy.py (no ':', so nobody can
    # pass as the key service's own "sealedkb:system").
    principal: str = Field(default="admin", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,127}$")
    service_principal: str = Field(
        default="sealedkb-service", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,127}$"
    )
    # Seconds between signed audit checkpoints (and key-schedule checks) while serving.
    audit_checkpoint_interval: float = Field(default=60.0, ge=1.0, le=60.0)
    pool_max_size: int = Field(default=8, ge=1, le=100)
    # Serving replicas (store/jobs.py): the singleton jobs (key housekeeping, alarm
    # evaluation, automated snapshots and retention) run on the one replica holding
    # each job's PostgreSQL advisory lock; the others try every job_leader_poll
    # seconds and take over within 4 x job_leader_poll after the holder dies.
    # replica_id names this replica in kb_job_leaders / kb_job_runs (default: host
    # name and process id).
    replica_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$")
    job_leader_poll: float = Field(default=5.0, ge=0.2, le=60.0)
    # Folders outside the home, so replicas can share them and a replica's home holds
    # nothing that must be kept: the local keystore (default <home>/keys) and the
    # signed audit checkpoints (default <home>/audit).
    keystore_dir: Path | None = None
    audit_checkpoint_dir: Path | None = None
    # Server-side folder that the MCP kb_import tool may read from (unset: disabled).
    import_root: Path | None = None
    log_level: str = Field(default="WARNING", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    # Embedding model for semantic search: minilm (local ONNX, default), hash (a
    # model-free test embedder) or none (keyword search only).
    embedder: str = Field(default="minilm", pattern=r"^(minilm|hash|none)$")
    # Where the search index of a new knowledge base lives (init --search-index; kb_meta
    # search_index decides for an existing one): memory (in each serving process, no
    # searchable column in PostgreSQL; search/memory.py) or server (PostgreSQL).
    search_index: str = Field(default="memory", pattern=r"^(memory|server)$")
    # The memory index holds at most this many entries; past it search fails naming it.
    memory_index_max_entries: int = Field(default=200_000, ge=1, le=10_000_000)
    # HTTP MCP server limits, per bearer token.
    http_rate_per_second: float = Field(default=20.0, gt=0, le=10_000)
    http_rate_burst: int = Field(default=60, ge=1, le=100_000)
    http_max_request_bytes: int = Field(default=4 * 1024 * 1024, ge=64 * 1024, le=64 * 1024 * 1024)
    # host:port of a listener that serves only /metrics, without a bearer token (for a
    # Prometheus on an internal network); the main listener's /metrics always asks
    # for a token with the metrics scope (an admin token).
    metrics_bind: str | None = Field(
        default=None, pattern=r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):[0-9]{1,5}$"
    )
    # OAuth 2.1 for hosted MCP clients (adapters/oauth/, README "OAuth"): "builtin" (this
    # server is its own authorization server), "oidc" (access tokens of an external
    # OpenID Connect issuer), "off". Static bearer tokens work in every mode.
    oauth: str = Field(default="builtin", pattern=r"^(builtin|oidc|off)$")
    # The origin clients reach this server at (behind a proxy); default: the bind.
    public_url: str | None = Field(default=None, pattern=r"^https?://[^\s/?#]+$")
    oauth_access_seconds: int = Field(default=900, ge=60, le=3600)
    oauth_refresh_days: int = Field(default=30, ge=1, le=365)
    oidc_issuer: str | None = Field(default=None, pattern=r"^https?://\S+$")
    oidc_audience: str | None = Field(default=None, min_length=1, max_length=512)
    oidc_jwks_url: str | None = Field(default=None, pattern=r"^https?://\S+$")
    oidc_algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256"])
    oidc_role_claim: str = Field(default="sealedkb_role", min_length=1, max_length=100)
    oidc_namespaces_claim: str = Field(default="sealedkb_namespaces", min_length=1, max_length=100)
    # claim value (e.g. a group) -> reader, writer or admin; empty: the value is the role
    oidc_roles: dict[str, str] = Field(default_factory=dict)
    oidc_default_namespaces: list[str] = Field(default_factory=lambda: ["default"])
    # Monitoring and alarms (monitoring/alarms.py, docs/ENCRYPTION-KEY-MANAGEMENT.md §22).
    # metrics_enabled=false turns off per-operation timing and key-call latency
    # histograms (the bench's "off"); counters the alarms need stay on.
    metrics_enabled: bool = True
    alarms_enabled: bool = True  # serve evaluates the built-in alarms
    alarm_interval: float = Field(default=10.0, ge=0.2, le=60.0)  # evaluator tick, seconds
    alarm_webhook_url: SecretStr | None = None  # may carry a token in its path or query
    alarm_webhook_secret: SecretStr | None = None  # HMAC-SHA256 signature key
    alarm_webhook_timeout: float = Field(default=5.0, gt=0, le=60.0)
    alarm_webhook_retries: int = Field(default=3, ge=0, le=10)
    alarm_command: str | None = None  # gets the notification JSON on stdin
    alarm_runbook_base: str = "docs/ENCRYPTION-KEY-MANAGEMENT.md"
    # Per-alarm overrides: {"SnapshotStale": {"threshold": 7200, "enabled": true}, ...}
    alarms: dict[str, dict[str, float | int | str | bool]] = Field(default_factory=dict)
    # Encrypted snapshots (docs/SNAPSHOT-FORMAT.md): the folder (default <home>/snapshots),
    # the daily UTC window for automated snapshots while serving ("off": none) and how
    # many days automated snapshots are kept (manual ones stay until deleted).
    snapshot_dir: Path | None = None
    snapshot_window: str = Field(
        default="03:00-04:00",
        pattern=r"^(off|([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-3]):[0-5]\d)$",
    )
    snapshot_retention_days: int = Field(default=7, ge=1, le=35)
    # Object storage (objectstore.py; the optional extra "s3"): snapshots in this S3
    # bucket, under this key prefix, instead of snapshot_dir; any S3-compatible
    # endpoint (s3_endpoint_url; credentials from boto3's standard chain).
    snapshot_bucket: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9.-]{1,62}$")
    snapshot_prefix: str = Field(default="", pattern=r"^([A-Za-z0-9!_.*'()/-]{0,200}/)?$")
    s3_endpoint_url: str | None = Field(default=None, pattern=r"^https?://\S+$")
    s3_region: str | None = Field(default=None, pattern=r"^[a-z0-9-]{1,32}$")
    # Signed audit checkpoints also archived, write-once, in this bucket (audit/s3.py);
    # with S3 Object Lock on the bucket, under COMPLIANCE retention for this many days.
    audit_checkpoint_bucket: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9.-]{1,62}$")
    audit_checkpoint_prefix: str = Field(
        default="audit/", pattern=r"^([A-Za-z0-9!_.*'()/-]{0,200}/)?$"
    )
    audit_checkpoint_retention_days: int = Field(default=365, ge=1, le=36500)
    # External key providers (keys/aws_kms.py, keys/vault.py; README "Key providers").
    # AWS KMS: credentials come from boto3's standard chain; the region from a key ARN,
    # else this setting or AWS_REGION; an HMAC_256 KMS key signs audit checkpoints and
    # token MACs; the endpoint is for VPC endpoints and emulators.
    aws_region: str | None = Field(default=None, pattern=r"^[a-z0-9-]{1,32}$")
    aws_mac_key_id: str | None = Field(default=None, min_length=1, max_length=2048)
    aws_endpoint_url: str | None = Field(default=None, pattern=r"^https?://\S+$")
    # Vault / OpenBao Transit: address (else VAULT_ADDR), token file (0600; else
    # VAULT_TOKEN), CA bundle for TLS, the Transit mount new keys go to, and the
    # Transit key that signs audit checkpoints and token MACs.
    vault_addr: str | None = Field(default=None, pattern=r"^https?://\S+$")
    vault_token_file: Path | None = None
    vault_ca_file: Path | None = None
    vault_transit_mount: str = Field(
        default="transit", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
    )
    vault_mac_key: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

    @field_validator("snapshot_window")
    @classmethod
    def _window_has_length(cls, value: str) -> str:
        if value != "off" and value[:5] == value[6:]:
            raise ValueError("the snapshot window must not start and end at the same minute")
        return value

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
        return self.keystore_dir if self.keystore_dir is not None else self.home / "keys"

    @property
    def audit_dir(self) -> Path:
        if self.audit_checkpoint_dir is not None:
            return self.audit_checkpoint_dir
        return self.home / "audit"

    @property
    def snapshots_dir(self) -> Path:
        return self.snapshot_dir if self.snapshot_dir is not None else self.home / "snapshots"


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
    if any(s in text for s in ("passphrase", "database_url", "alarm_webhook")):
        raise ConfigError(
            f"{path} may hold secrets (passphrase, database_url, alarm_webhook_*) and is "
            f"readable by other users; run: chmod 600 {path}",
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
