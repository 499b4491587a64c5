"""Three ``serve --transport http`` replicas on one PostgreSQL database and one external
key provider (AWS KMS, moto in server mode: tests/providers/services.py), shared by the
tests of this folder (module scope: starting them costs seconds).

No local keystore anywhere: the knowledge base is sealed under a KMS key
(``aws-kms:alias/...``), audit checkpoints and token MACs use a KMS HMAC key. The
checkpoint folder is shared outside every home (SEALEDKB_AUDIT_CHECKPOINT_DIR), as the
runbook asks of replicas. Each replica's stderr goes to a log file outside its home
(a pipe nobody reads would block a busy server)."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx2 as httpx
import psycopg
import pytest
from tests.mcp_helpers import free_port, server_env
from tests.providers import services
from tests.providers.services import MotoKms

from sealedkb.config import load_settings
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.model import EncryptionMode
from sealedkb.store.embedded import EmbeddedPostgres

# SEALEDKB_JOB_LEADER_POLL of the replicas: another takes a job over within 4 x this
# (store/jobs.py Leadership.takeover_bound).
POLL = 1.0
# SEALEDKB_DATA_KEY_MAX_AGE: a disabled key stops every running replica within it.
DATA_KEY_MAX_AGE = 2.0
# How long a replica may take to answer /healthz after its start (a busy 2-core CI
# machine running the main pytest beside this suite is slow to start a process).
START_SECONDS = float(os.environ.get("SEALEDKB_TEST_REPLICA_START_SECONDS", "180"))


@dataclass
class Replica:
    index: int
    home: Path
    log: Path
    env: dict[str, str]
    database_url: str
    proc: subprocess.Popen[bytes] | None = None
    base: str = ""

    @property
    def name(self) -> str:
        return f"replica-{self.index}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        assert not self.running
        port = free_port()
        serve = ("serve", "--transport", "http", "--port", str(port))
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sealedkb", *serve],
                env=server_env(self.home, self.database_url, **self.env),
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        self.base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_SECONDS
        while True:
            if self.proc.poll() is not None:
                code, self.proc = self.proc.returncode, None
                raise RuntimeError(f"{self.name} exited {code}: {self.tail()}")
            try:
                if httpx.get(self.base + "/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not start: {self.tail()}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: no shutdown hook runs, PostgreSQL ends its sessions."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


@dataclass
class Cluster:
    database_url: str
    kms: MotoKms
    key_uri: str
    token: str
    seed_id: str
    env: dict[str, str]
    replicas: list[Replica] = field(default_factory=list)

    @property
    def bases(self) -> list[str]:
        return [r.base for r in self.replicas if r.running]

    def ensure_running(self) -> None:
        for r in self.replicas:
            if not r.running:
                r.start()

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``python -m sealedkb ...`` as the operator, from a home of its own."""
        home = self.replicas[0].home.parent / "operator"
        return subprocess.run(
            [sys.executable, "-m", "sealedkb", *args],
            env=server_env(home, self.database_url, **self.env),
            capture_output=True,
            text=True,
            timeout=120,
        )


@pytest.fixture(scope="module")
def moto_kms() -> MotoKms:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per KMS call
    return services.moto_server()


@pytest.fixture(scope="module")
def replica_db(pg_server: EmbeddedPostgres, template_db: str) -> Iterator[str]:
    name = f"r_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server.uri(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {template_db} STRATEGY file_copy")
    yield pg_server.uri(name)
    with psycopg.connect(pg_server.uri(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="module")
def cluster(replica_db: str, moto_kms: MotoKms) -> Iterator[Cluster]:
    base = Path(tempfile.mkdtemp(prefix="sealedkb-replicas-"))
    kms = moto_kms.client()
    arn = kms.create_key(Description="sealedkb replicas")["KeyMetadata"]["Arn"]
    alias = f"alias/sealedkb-replicas-{uuid.uuid4().hex[:8]}"
    kms.create_alias(AliasName=alias, TargetKeyId=arn)
    mac = moto_kms.mac_key()
    audit = base / "shared-audit"
    settings = load_settings(
        base / "init",
        database_url=replica_db,
        embedder="hash",
        kms_key_uri=f"aws-kms:{alias}",
        audit_checkpoint_dir=audit,
        **moto_kms.settings(aws_mac_key_id=mac),
    )
    kb, _ = KnowledgeBase.init(settings, EncryptionMode.ON, search_index="memory")
    seed = kb.add("stateless replicas share one database", title="replicas")
    _, token = kb.create_token("agent", "writer", ["default"])
    kb.close()
    env = {
        **moto_kms.env(),
        "SEALEDKB_AWS_MAC_KEY_ID": mac,
        "SEALEDKB_SEARCH_INDEX": "memory",
        "SEALEDKB_AUDIT_CHECKPOINT_DIR": str(audit),
        "SEALEDKB_DATA_KEY_MAX_AGE": str(DATA_KEY_MAX_AGE),
        "SEALEDKB_JOB_LEADER_POLL": str(POLL),
        "SEALEDKB_ALARM_INTERVAL": "1",
        "SEALEDKB_AUDIT_CHECKPOINT_INTERVAL": "5",
        # many clients on one token, as fast as they can: not the rate limit's subject
        "SEALEDKB_HTTP_RATE_PER_SECOND": "10000",
        "SEALEDKB_HTTP_RATE_BURST": "10000",
    }
    c = Cluster(replica_db, moto_kms, f"aws-kms:{alias}", token, str(seed.id), env)
    logs = base / "logs"
    logs.mkdir()
    for i in range(3):
        c.replicas.append(
            Replica(
                i,
                base / f"replica-{i}",
                logs / f"replica-{i}.log",
                {**env, "SEALEDKB_REPLICA_ID": f"replica-{i}"},
                replica_db,
            )
        )
    try:
        c.ensure_running()
        yield c
    finally:
        for r in c.replicas:
            r.stop()
        if os.environ.get("SEALEDKB_TEST_KEEP_REPLICA_LOGS") != "1":
            shutil.rmtree(base, ignore_errors=True)
