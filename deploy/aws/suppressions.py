"""cdk-nag (AwsSolutionsChecks) findings this deployment accepts, each with the
reason (CDK's ``Validations.of(construct).acknowledge``). Synthesis fails on any
finding not listed here; tests/deploy checks that every entry has a reason."""

from __future__ import annotations

from aws_cdk import Acknowledgment, Token, Validations
from constructs import IConstruct
from sealedkb_stack import SealedkbStack

NAG_PLUGIN = "AwsSolutions"  # the validation plugin's name in acknowledgement ids

# (construct path below the stack, finding, reason)
ACKNOWLEDGED: tuple[tuple[str, str, str], ...] = (
    (
        "AlbSecurityGroup",
        "AwsSolutions-EC23",
        "The MCP endpoint is reached by AI clients from anywhere by default; every "
        "request needs a bearer token, and the allowedCidr context narrows the range.",
    ),
    (
        "Task",
        "AwsSolutions-ECS2",
        "The environment holds no secret (endpoints, key ARNs, settings); the only "
        "secret, the database password, comes from Secrets Manager.",
    ),
    (
        "SnapshotTask",
        "AwsSolutions-ECS2",
        "The snapshot task's environment holds no secret either (the same settings as "
        "the service); the database password comes from Secrets Manager.",
    ),
    (
        "SnapshotTask/EventsRole/DefaultPolicy",
        "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:ecs:{region}:*:task/<ClusterEB0386A7>/*]",
        "EventBridge's role for the schedule tags the tasks it starts; task ids are "
        "made by ECS, so the resource names the cluster's tasks, no more.",
    ),
    (
        "ExecutionRole/DefaultPolicy",
        "AwsSolutions-IAM5[Resource::*]",
        "ecr:GetAuthorizationToken has no resource-level permissions (AWS's ECR "
        "documentation); the pull actions themselves name the one repository.",
    ),
    (
        "Database",
        "AwsSolutions-RDS11",
        "A non-default port hides nothing from an attacker inside the VPC; the "
        "database accepts only the tasks' security group, over TLS.",
    ),
    (
        "Database/Secret",
        "AwsSolutions-SMG4",
        "Tasks read the password at start: a rotation would lock out the running "
        "replicas. Rotate it with a deployment (docs/AWS-DEPLOYMENT.md §6).",
    ),
    (
        "Database/MonitoringRole",
        "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
        "AmazonRDSEnhancedMonitoringRole]",
        "AWS's own policy for the Enhanced Monitoring role: it writes OS metrics to "
        "the RDSOSMetrics log group and nothing else.",
    ),
    (
        "TaskRole/DefaultPolicy",
        "AwsSolutions-IAM5[Resource::<SnapshotsD03D071C.Arn>/snapshots/*]",
        "Snapshot file names are made at run time; the tasks may put and get objects "
        "under this prefix only, never delete them (Object Lock keeps them).",
    ),
    (
        "TaskRole/DefaultPolicy",
        "AwsSolutions-IAM5[Resource::<SnapshotsD03D071C.Arn>/checkpoints/*]",
        "Audit checkpoint names are made at run time; put and get under this prefix "
        "only, never delete.",
    ),
)


def _child(stack: SealedkbStack, path: str) -> IConstruct:
    target: IConstruct = stack
    for part in path.split("/"):
        target = target.node.find_child(part)
    return target


def apply_suppressions(stack: SealedkbStack) -> None:
    # cdk-nag names the region in some findings: as it is, or its token's name.
    region = "<AWS::Region>" if Token.is_unresolved(stack.region) else stack.region
    for path, finding, reason in ACKNOWLEDGED:
        rule = finding.replace("{region}", region)
        Validations.of(_child(stack, path)).acknowledge(
            Acknowledgment(id=f"{NAG_PLUGIN}::{rule}", reason=reason)
        )
