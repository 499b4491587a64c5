"""The container image (deploy/Dockerfile, its entry point and health check), the
compose file (validated by `docker-compose config`) and the Kubernetes manifests
(validated offline by kubernetes-validate). No container engine runs here: these
check the files and run the image's scripts directly."""

from __future__ import annotations

import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.deploy.conftest import DEPLOY, need_tool

K8S_VERSION = "1.33"


# --- Dockerfile ---------------------------------------------------------------------


def dockerfile() -> list[str]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]


def final_stage() -> list[str]:
    lines = dockerfile()
    last = max(i for i, line in enumerate(lines) if line.startswith("FROM "))
    return lines[last:]


def test_dockerfile_is_multi_stage_and_runs_as_a_non_root_user() -> None:
    assert sum(line.startswith("FROM ") for line in dockerfile()) >= 2
    stage = final_stage()
    users = [line.split()[1] for line in stage if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert int(users[-1].split(":")[0]) >= 10000
    assert not any(
        line.startswith(("RUN apt-get install", "COPY --from=build /src")) for line in stage
    )


def test_dockerfile_writes_only_to_the_volume_and_tmp_and_checks_healthz() -> None:
    stage = final_stage()
    assert 'VOLUME ["/var/lib/sealedkb", "/tmp"]' in stage
    env = " ".join(line for line in stage if line.startswith("ENV "))
    assert "SEALEDKB_HOME=/var/lib/sealedkb" in env and "TMPDIR=/tmp" in env
    assert "PYTHONDONTWRITEBYTECODE=1" in env  # nothing written next to the code
    (health,) = [line for line in stage if line.startswith("HEALTHCHECK ")]
    assert "sealedkb-healthcheck.py" in health
    assert "/healthz" in env
    assert not re.search(r"PASSPHRASE|PASSWORD|SECRET", env)


def fake_sealedkb(folder: Path) -> Path:
    """A `sealedkb` on PATH that prints the environment variables it got."""
    folder.mkdir(exist_ok=True)
    script = folder / "sealedkb"
    script.write_text(
        "#!/bin/sh\nfor n in SEALEDKB_DATABASE_URL PGPASSWORD SEALEDKB_PASSPHRASE_FILE; do\n"
        '  eval "v=\\${$n-unset}"; echo "$n=$v"\ndone\necho "args=$*"\n'
    )
    script.chmod(0o755)
    return folder


def test_entrypoint_reads_secrets_from_files_and_passes_the_arguments(tmp_path: Path) -> None:
    (tmp_path / "url").write_text("postgresql://u@db/kb?sslmode=verify-full")
    (tmp_path / "pw").write_text("s3cret")
    env = {
        "PATH": f"{fake_sealedkb(tmp_path / 'bin')}:/usr/bin:/bin",
        "SEALEDKB_DATABASE_URL_FILE": str(tmp_path / "url"),
        "PGPASSWORD_FILE": str(tmp_path / "pw"),
    }
    result = subprocess.run(
        ["sh", str(DEPLOY / "docker" / "entrypoint.sh"), "serve", "--port", "8765"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert "SEALEDKB_DATABASE_URL=postgresql://u@db/kb?sslmode=verify-full" in result.stdout
    assert "PGPASSWORD=s3cret" in result.stdout
    assert "args=serve --port 8765" in result.stdout


def test_entrypoint_stops_on_an_unreadable_secret_file_without_naming_its_content(
    tmp_path: Path,
) -> None:
    env = {
        "PATH": f"{fake_sealedkb(tmp_path / 'bin')}:/usr/bin:/bin",
        "PGPASSWORD_FILE": str(tmp_path / "missing"),
    }
    result = subprocess.run(
        ["sh", str(DEPLOY / "docker" / "entrypoint.sh"), "serve"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 78
    assert "PGPASSWORD_FILE" in result.stderr
    assert "args=" not in result.stdout  # sealedkb never started


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()
        self.wfile.write(b'{"status":"ok"}')

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


@pytest.mark.parametrize(("status", "code"), [(200, 0), (503, 1)])
def test_healthcheck_exits_0_only_on_200(
    health_server: http.server.HTTPServer, status: int, code: int
) -> None:
    _Health.status = status
    url = f"http://127.0.0.1:{health_server.server_address[1]}/healthz"
    result = subprocess.run(
        [sys.executable, str(DEPLOY / "docker" / "healthcheck.py")],
        env={"SEALEDKB_HEALTH_URL": url},
        check=False,
    )
    assert result.returncode == code


def test_healthcheck_fails_when_nothing_listens() -> None:
    result = subprocess.run(
        [sys.executable, str(DEPLOY / "docker" / "healthcheck.py")],
        env={"SEALEDKB_HEALTH_URL": "http://127.0.0.1:9/healthz"},
        check=False,
    )
    assert result.returncode == 1


# --- compose ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    tool = need_tool(shutil.which("docker-compose"), "docker-compose (Debian package)")
    result = subprocess.run(
        [tool, "-f", str(DEPLOY / "compose.yaml"), "-p", "sealedkb", "config"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return dict(yaml.safe_load(result.stdout))


def test_compose_sealedkb_is_non_root_read_only_and_talks_verified_tls_to_the_db(
    compose: dict[str, Any],
) -> None:
    app = compose["services"]["sealedkb"]
    assert app["user"] == "10001:10001" and app["read_only"] is True
    assert app["cap_drop"] == ["ALL"] and "no-new-privileges:true" in app["security_opt"]
    assert any(t.startswith("/tmp") for t in app["tmpfs"])
    env = app["environment"]
    assert env["SEALEDKB_DATABASE_URL"].endswith("@db:5432/sealedkb?sslmode=verify-full")
    assert env["SEALEDKB_DATABASE_SSLROOTCERT"].startswith("/run/secrets/")
    assert not any(re.search(r"://[^@/]*:[^@/]*@", str(v)) for v in env.values())  # no password
    assert "--tls-cert" in app["command"] and "--insecure" not in app["command"]
    assert app["depends_on"]["db"]["condition"] == "service_healthy"


def test_compose_database_is_pgvector_tls_only_on_an_internal_network(
    compose: dict[str, Any],
) -> None:
    db = compose["services"]["db"]
    assert db["image"].startswith("pgvector/pgvector:")
    command = " ".join(db["command"])
    assert "ssl=on" in command and "ssl_min_protocol_version=TLSv1.3" in command
    assert "ssl_key_file=/var/lib/postgresql/server.key" in command
    assert "install -m 0600 -o postgres" in " ".join(db["entrypoint"])
    assert "ports" not in db
    assert db["networks"] == {"backend": None} or list(db["networks"]) == ["backend"]
    assert compose["networks"]["backend"]["internal"] is True
    hba = [
        line.split()
        for line in (DEPLOY / "postgres" / "pg_hba.conf").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert {fields[0] for fields in hba} == {"local", "hostssl"}
    assert all(f[-1] == "scram-sha-256" for f in hba if f[0] == "hostssl")


def test_compose_prometheus_loads_the_shipped_rules_and_scrapes_sealedkb(
    compose: dict[str, Any],
) -> None:
    prom = compose["services"]["prometheus"]
    mounts = {}
    for volume in prom["volumes"]:  # docker-compose 1.29 prints "source:target[:mode]"
        source, target = (
            (volume["source"], volume["target"])
            if isinstance(volume, dict)
            else volume.split(":")[:2]
        )
        mounts[target] = source
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (rules,) = config["rule_files"]
    assert Path(mounts[rules]) == DEPLOY / "prometheus" / "alerts.yml"
    assert (
        Path(mounts["/etc/prometheus/prometheus.yml"]) == DEPLOY / "prometheus" / "prometheus.yml"
    )
    (target,) = config["scrape_configs"][0]["static_configs"][0]["targets"]
    bind = compose["services"]["sealedkb"]["environment"]["SEALEDKB_METRICS_BIND"]
    assert target == f"sealedkb:{bind.rsplit(':', 1)[1]}"


def test_make_certs_gives_a_db_certificate_that_verifies_for_db(tmp_path: Path) -> None:
    openssl = need_tool(shutil.which("openssl"), "openssl")
    out = tmp_path / "secrets"
    for _ in range(2):  # a rerun keeps what exists
        subprocess.run(
            ["sh", str(DEPLOY / "postgres" / "make-certs.sh"), str(out)],
            check=True,
            capture_output=True,
        )
    first = (out / "db-password").read_bytes()
    subprocess.run(
        ["sh", str(DEPLOY / "postgres" / "make-certs.sh"), str(out)],
        check=True,
        capture_output=True,
    )
    assert (out / "db-password").read_bytes() == first
    ok = subprocess.run(
        [
            openssl,
            "verify",
            "-CAfile",
            str(out / "ca.pem"),
            "-verify_hostname",
            "db",
            str(out / "db-server.pem"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    wrong = subprocess.run(
        [
            openssl,
            "verify",
            "-CAfile",
            str(out / "ca.pem"),
            "-verify_hostname",
            "evil.example",
            str(out / "db-server.pem"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert wrong.returncode != 0  # verify-full would refuse an impostor's name
    assert oct(os.stat(out).st_mode & 0o777) == "0o700"  # no other host user gets in
    assert oct(os.stat(out / "ca.key").st_mode & 0o777) == "0o600"


# --- Kubernetes ---------------------------------------------------------------------


def manifests() -> dict[str, list[dict[str, Any]]]:
    return {
        path.name: [d for d in yaml.safe_load_all(path.read_text()) if d]
        for path in sorted((DEPLOY / "k8s").glob("*.yaml"))
    }


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [d for docs in manifests().values() for d in docs if d["kind"] == kind]


@pytest.mark.parametrize("name", sorted(manifests()))
def test_kubernetes_manifest_is_valid(name: str) -> None:
    try:
        import kubernetes_validate
    except ImportError:
        need_tool(None, "kubernetes-validate")
    for document in manifests()[name]:
        kubernetes_validate.validate(document, K8S_VERSION, strict=True)


def test_kubernetes_validate_refuses_a_broken_manifest() -> None:
    try:
        import kubernetes_validate
    except ImportError:
        need_tool(None, "kubernetes-validate")
    (deployment,) = by_kind("Deployment")
    deployment["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_kubernetes_deployment_replicas_probes_and_security_context() -> None:
    (deployment,) = by_kind("Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] >= 2
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
    assert writable == {"/var/lib/sealedkb", "/tmp"}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["SEALEDKB_DATABASE_URL_FILE"].startswith("/run/secrets/")
    assert "SEALEDKB_DATABASE_URL" not in env and "PGPASSWORD" not in env
    secrets = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert secrets == {"sealedkb-secrets", "sealedkb-tls"}


def test_kubernetes_pdb_and_network_policy_cover_the_pods() -> None:
    (deployment,) = by_kind("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    (pdb,) = by_kind("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1
    policies = by_kind("NetworkPolicy")
    (deny,) = [p for p in policies if p["spec"]["podSelector"] == {}]
    assert set(deny["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny["spec"] and "egress" not in deny["spec"]
    (allow,) = [p for p in policies if p["spec"]["podSelector"]]
    assert allow["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    ports = {p["port"] for rule in allow["spec"]["ingress"] for p in rule["ports"]}
    assert ports == {8765, 9464}
    assert all(rule.get("from") for rule in allow["spec"]["ingress"])  # never from anywhere
