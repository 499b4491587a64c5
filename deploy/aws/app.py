"""The CDK app of sealedkb's AWS deployment (docs/AWS-DEPLOYMENT.md).

    cd deploy/aws && cdk deploy -c certificateArn=arn:aws:acm:... -c image=<ecr image>

Context (``-c name=value`` or cdk.json): certificateArn (required), image,
replicas, backupRetentionDays, kmsCallBaseline, alarmEmail, allowedCidr,
snapshotRetentionDays, dbInstanceType. Offline: ``CDK_OUTDIR=cdk.out python app.py``
synthesises the template without AWS credentials.
"""

from __future__ import annotations

import os

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks
from sealedkb_stack import DeploymentSettings, SealedkbStack
from suppressions import apply_suppressions


def settings_from_context(app: cdk.App) -> DeploymentSettings:
    def ctx(name: str, default: object = None) -> object:
        value = app.node.try_get_context(name)
        return default if value is None else value

    certificate = ctx("certificateArn")
    if not isinstance(certificate, str):
        raise SystemExit("certificateArn is required: -c certificateArn=arn:aws:acm:...")
    email = ctx("alarmEmail")
    unsafe = ctx("unsafe", "")
    return DeploymentSettings(
        certificate_arn=certificate,
        image=str(ctx("image", "sealedkb:latest")),
        replicas=int(str(ctx("replicas", 2))),
        backup_retention_days=int(str(ctx("backupRetentionDays", 14))),
        kms_call_baseline=int(str(ctx("kmsCallBaseline", 500))),
        alarm_email=str(email) if email else None,
        snapshot_retention_days=int(str(ctx("snapshotRetentionDays", 35))),
        db_instance_type=str(ctx("dbInstanceType", "t4g.medium")),
        allowed_cidr=str(ctx("allowedCidr", "0.0.0.0/0")),
        unsafe=frozenset(s for s in str(unsafe).split(",") if s),
    )


def build(app: cdk.App, *, nag: bool = True, suppress: bool = True) -> SealedkbStack:
    """The stack, its cdk-nag acknowledgements (each with its reason) and the checks:
    synthesis fails on any finding not acknowledged. ``nag``/``suppress`` off are for
    tests/deploy only (a mutated stack; the checks without the acknowledgements)."""
    stack = SealedkbStack(
        app,
        "Sealedkb",
        settings_from_context(app),
        env=cdk.Environment(
            account=os.environ.get("CDK_DEFAULT_ACCOUNT"),
            region=os.environ.get("CDK_DEFAULT_REGION", "eu-west-1"),
        ),
    )
    if suppress:
        apply_suppressions(stack)
    if nag:
        cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app, verbose=True))
    return stack


if __name__ == "__main__":
    application = cdk.App()
    build(application)
    application.synth()
