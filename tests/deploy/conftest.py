"""The deployment tests (deploy/): Dockerfile, compose, Kubernetes manifests and the
AWS CDK app. They run in the deployment venv (deploy/.venv, made by
scripts/test-deploy, which .ci/run calls), not in .venv-test:

    scripts/test-deploy            # installs the tools, then runs these tests

Run by the main suite (.venv-test, no aws-cdk-lib), this folder is skipped as a
whole. With SEALEDKB_TEST_REQUIRE_DEPLOY=1 (set by .ci/run for scripts/test-deploy)
a missing tool fails instead of skipping.

The CDK app is synthesised once per session (``synthesized``); every test reads
that template.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
AWS_APP = DEPLOY / "aws"
REQUIRE = os.environ.get("SEALEDKB_TEST_REQUIRE_DEPLOY") == "1"
CDK_MISSING = importlib.util.find_spec("aws_cdk") is None

if CDK_MISSING and not REQUIRE:
    # The main suite's venv: nothing here can run (scripts/test-deploy runs it).
    collect_ignore_glob = ["test_*.py"]

CERTIFICATE_ARN = "arn:aws:acm:eu-west-1:111122223333:certificate/0b9f2c1e-deploy-test"
REGION = "eu-west-1"
ACCOUNT = "111122223333"
REPLICAS = 3
KMS_BASELINE = 400
CONTEXT: dict[str, Any] = {
    "certificateArn": CERTIFICATE_ARN,
    "replicas": REPLICAS,
    "kmsCallBaseline": KMS_BASELINE,
    "backupRetentionDays": 14,
    "image": "111122223333.dkr.ecr.eu-west-1.amazonaws.com/sealedkb:0.1.0",
}


def need_tool(path: str | None, what: str) -> str:
    """The tool's path, or a skip (a failure under SEALEDKB_TEST_REQUIRE_DEPLOY=1)."""
    if path:
        return path
    if REQUIRE:
        pytest.fail(f"{what} is missing: scripts/test-deploy installs it")
    pytest.skip(f"{what} is not installed (scripts/test-deploy installs it)")


def venv_tool(name: str, venv: str = ".venv") -> str | None:
    """A command of one of the deployment venvs, else from PATH."""
    candidate = DEPLOY / venv / "bin" / name
    if candidate.exists():
        return str(candidate)
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    return shutil.which(name)


@dataclass(frozen=True)
class Synth:
    """One synthesised app: its template and its output folder."""

    template: dict[str, Any]
    outdir: Path

    @property
    def template_file(self) -> Path:
        return self.outdir / "Sealedkb.template.json"

    def resources(self, kind: str) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.template["Resources"].items() if v["Type"] == kind}

    def one(self, kind: str, logical_prefix: str = "") -> tuple[str, dict[str, Any]]:
        found = {k: v for k, v in self.resources(kind).items() if k.startswith(logical_prefix)}
        assert len(found) == 1, f"expected one {kind} {logical_prefix!r}, found {sorted(found)}"
        return next(iter(found.items()))


def synthesize(outdir: Path, *, nag: bool = True, suppress: bool = True, **context: Any) -> Synth:
    """Synthesise deploy/aws/app.py in this process (the jsii kernel is shared)."""
    if CDK_MISSING:
        need_tool(None, "aws-cdk-lib (deploy/aws/requirements.txt)")
    if str(AWS_APP) not in sys.path:
        sys.path.insert(0, str(AWS_APP))
    import aws_cdk as cdk
    from app import build  # type: ignore[import-not-found]

    # A region, no account: the template stays account-agnostic (Fn::GetAZs, no
    # look-ups), as `cdk synth` without credentials makes it.
    os.environ["CDK_DEFAULT_REGION"] = REGION
    os.environ.pop("CDK_DEFAULT_ACCOUNT", None)
    app = cdk.App(outdir=str(outdir), context={**CONTEXT, **context})
    build(app, nag=nag, suppress=suppress)
    app.synth()
    template = json.loads((outdir / "Sealedkb.template.json").read_text())
    return Synth(template, outdir)


@pytest.fixture(scope="session")
def synthesized(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Synth]:
    """The app as shipped (cdk-nag on, the acknowledgements applied), once a session."""
    yield synthesize(tmp_path_factory.mktemp("cdk-out"))
