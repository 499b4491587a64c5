"""The AWS CDK app (deploy/aws): every security property of docs/AWS-DEPLOYMENT.md
on the synthesised template, cdk-nag, cfn-lint and checkov on it, what a
compromised task could do with its role (an attacker's test), and a mutation test:
each protection turned off makes its check fail."""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.deploy.conftest import (
    AWS_APP,
    CERTIFICATE_ARN,
    KMS_BASELINE,
    REGION,
    REPLICAS,
    Synth,
    need_tool,
    synthesize,
    venv_tool,
)


def ref(logical_id: str) -> dict[str, Any]:
    return {"Ref": logical_id}


def arn_of(logical_id: str) -> dict[str, Any]:
    return {"Fn::GetAtt": [logical_id, "Arn"]}


def key_id(synth: Synth, prefix: str) -> str:
    return synth.one("AWS::KMS::Key", prefix)[0]


def key_statements(synth: Synth, prefix: str) -> list[dict[str, Any]]:
    return list(synth.one("AWS::KMS::Key", prefix)[1]["Properties"]["KeyPolicy"]["Statement"])


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def app_container(synth: Synth) -> dict[str, Any]:
    _, task = synth.one("AWS::ECS::TaskDefinition", "Task")
    (container,) = [
        c for c in task["Properties"]["ContainerDefinitions"] if c["Name"] == "sealedkb"
    ]
    return dict(container)


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["Name"]: e["Value"] for e in container.get("Environment", [])}


# --- the checks (also used by the mutation test) -------------------------------------


def check_storage_encrypted(synth: Synth) -> None:
    _, db = synth.one("AWS::RDS::DBInstance")
    props = db["Properties"]
    assert props["StorageEncrypted"] is True
    assert props["KmsKeyId"] == arn_of(key_id(synth, "DatabaseKey"))


def check_force_ssl(synth: Synth) -> None:
    _, group = synth.one("AWS::RDS::DBParameterGroup")
    assert group["Properties"]["Parameters"]["rds.force_ssl"] == "1"
    _, db = synth.one("AWS::RDS::DBInstance")
    assert db["Properties"]["DBParameterGroupName"] == ref(
        synth.one("AWS::RDS::DBParameterGroup")[0]
    )


def check_key_rotation(synth: Synth) -> None:
    for prefix in ("DatabaseKey", "EnvelopeKey", "OpsKey"):
        props = synth.one("AWS::KMS::Key", prefix)[1]["Properties"]
        assert props["EnableKeyRotation"] is True, prefix
        assert props["RotationPeriodInDays"] == 365, prefix
        assert props["PendingWindowInDays"] == 30, prefix


def check_log_validation(synth: Synth) -> None:
    _, trail = synth.one("AWS::CloudTrail::Trail")
    assert trail["Properties"]["EnableLogFileValidation"] is True


# --- RDS ---------------------------------------------------------------------------


def test_rds_storage_is_encrypted_under_the_database_key(synthesized: Synth) -> None:
    check_storage_encrypted(synthesized)


def test_rds_engine_is_postgres_with_a_pinned_minor_version(synthesized: Synth) -> None:
    props = synthesized.one("AWS::RDS::DBInstance")[1]["Properties"]
    assert props["Engine"] == "postgres"
    assert re.fullmatch(r"1[6-9]\.\d+", props["EngineVersion"]), props["EngineVersion"]
    assert props["AutoMinorVersionUpgrade"] is False


def test_rds_parameter_group_forces_tls(synthesized: Synth) -> None:
    check_force_ssl(synthesized)


def test_rds_backups_deletion_protection_and_performance_insights(synthesized: Synth) -> None:
    props = synthesized.one("AWS::RDS::DBInstance")[1]["Properties"]
    assert 7 <= props["BackupRetentionPeriod"] <= 35
    assert props["DeletionProtection"] is True
    assert props["EnablePerformanceInsights"] is True
    assert props["PerformanceInsightsKMSKeyId"] == arn_of(key_id(synthesized, "DatabaseKey"))
    assert props["PubliclyAccessible"] is False
    assert props["MultiAZ"] is True
    assert synthesized.one("AWS::RDS::DBInstance")[1]["DeletionPolicy"] == "Snapshot"


def test_database_key_rotates_waits_30_days_and_rds_uses_it_through_rds(
    synthesized: Synth,
) -> None:
    check_key_rotation(synthesized)
    via = [
        s
        for s in key_statements(synthesized, "DatabaseKey")
        if s.get("Condition", {}).get("StringEquals", {}).get("kms:ViaService")
        == f"rds.{REGION}.amazonaws.com"
    ]
    assert len(via) == 1
    assert "kms:Decrypt" in via[0]["Action"] and "kms:CreateGrant" in via[0]["Action"]
    assert "kms:CallerAccount" in via[0]["Condition"]["StringEquals"]
    for prefix in ("DatabaseKey", "EnvelopeKey", "OpsKey", "AuditMacKey"):
        assert synthesized.one("AWS::KMS::Key", prefix)[1]["DeletionPolicy"] == "Retain"


def test_database_credentials_are_in_secrets_manager_under_the_database_key(
    synthesized: Synth,
) -> None:
    secret_id, secret = synthesized.one("AWS::SecretsManager::Secret")
    assert secret["Properties"]["KmsKeyId"] == arn_of(key_id(synthesized, "DatabaseKey"))
    container = app_container(synthesized)
    (pgpassword,) = [s for s in container["Secrets"] if s["Name"] == "PGPASSWORD"]
    attachment_id, attachment = synthesized.one("AWS::SecretsManager::SecretTargetAttachment")
    assert attachment["Properties"]["SecretId"] == ref(secret_id)
    assert pgpassword["ValueFrom"] == {"Fn::Join": ["", [ref(attachment_id), ":password::"]]}
    env = env_of(container)
    assert "PGPASSWORD" not in env
    assert not any("password" in json.dumps(v).lower() for v in env.values())
    url = json.dumps(env["SEALEDKB_DATABASE_URL"])
    assert "sslmode=verify-full" in url
    assert env["SEALEDKB_DATABASE_SSLROOTCERT"].endswith("rds-global-bundle.pem")


# --- sealedkb's keys ---------------------------------------------------------------


def test_envelope_key_and_hmac_key_are_what_sealedkb_is_configured_with(
    synthesized: Synth,
) -> None:
    envelope = key_id(synthesized, "EnvelopeKey")
    mac_id, mac = synthesized.one("AWS::KMS::Key", "AuditMacKey")
    assert mac["Properties"]["KeySpec"] == "HMAC_256"
    assert mac["Properties"]["KeyUsage"] == "GENERATE_VERIFY_MAC"
    assert mac["Properties"]["PendingWindowInDays"] == 30
    env = env_of(app_container(synthesized))
    assert env["SEALEDKB_KMS_KEY_URI"] == {"Fn::Join": ["", ["aws-kms:", arn_of(envelope)]]}
    assert env["SEALEDKB_AWS_MAC_KEY_ID"] == arn_of(mac_id)


def test_the_task_role_gets_only_what_sealedkb_calls(synthesized: Synth) -> None:
    task_role = arn_of(synthesized.one("AWS::IAM::Role", "TaskRole")[0])
    granted: dict[str, set[str]] = {}
    for prefix in ("EnvelopeKey", "AuditMacKey", "DatabaseKey", "OpsKey"):
        for statement in key_statements(synthesized, prefix):
            if statement["Principal"].get("AWS") == task_role:
                granted.setdefault(prefix, set()).update(as_list(statement["Action"]))
    assert granted == {
        "EnvelopeKey": {
            "kms:Encrypt",
            "kms:Decrypt",
            "kms:GenerateDataKey",
            "kms:ReEncryptFrom",
            "kms:ReEncryptTo",
            "kms:DescribeKey",
            "kms:GetKeyRotationStatus",
            "kms:ListKeyRotations",
        },
        "AuditMacKey": {"kms:GenerateMac", "kms:VerifyMac", "kms:DescribeKey"},
    }


# --- an attacker holding the task's credentials -----------------------------------------


def _matches(patterns: Any, value: str) -> bool:
    return any(fnmatch.fnmatchcase(value, p) for p in as_list(patterns))


def _conditions_hold(conditions: dict[str, Any], request: dict[str, str]) -> bool:
    for operator, entries in conditions.items():
        for key, expected in entries.items():
            present = key in request
            if operator == "Null":
                if (expected == "true") == present:
                    return False
            elif operator in ("StringEquals", "ArnEquals"):
                if request.get(key) not in as_list(expected):
                    return False
            elif operator in ("StringLike", "ArnLike"):
                if not present or not _matches(expected, request[key]):
                    return False
            else:
                return False  # an operator this evaluator does not know never grants
    return True


def allowed(
    synth: Synth, key_prefix: str, principal: Any, action: str, request: dict[str, str]
) -> bool:
    """Whether the key policy, together with the principal's IAM policies (reached
    through the account-root statement), allows the call: a small, conservative
    model of AWS's evaluation (no explicit denies exist in these policies)."""
    key_logical = key_id(synth, key_prefix)
    root_delegates = False
    for statement in key_statements(synth, key_prefix):
        if statement["Effect"] != "Allow" or not _matches(statement["Action"], action):
            continue
        if not _conditions_hold(statement.get("Condition", {}), request):
            continue
        who = statement["Principal"].get("AWS")
        if who == principal:
            return True
        if json.dumps(who).endswith('":root"]]}'):
            root_delegates = True
    if not root_delegates:
        return False
    role_logical = principal["Fn::GetAtt"][0]
    for _, policy in synth.resources("AWS::IAM::Policy").items():
        if ref(role_logical) not in policy["Properties"].get("Roles", []):
            continue
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            if (
                statement["Effect"] == "Allow"
                and _matches(statement["Action"], action)
                and arn_of(key_logical) in as_list(statement["Resource"])
                and _conditions_hold(statement.get("Condition", {}), request)
            ):
                return True
    return False


def test_attacker_with_the_task_role_cannot_misuse_the_keys(synthesized: Synth) -> None:
    task = arn_of(synthesized.one("AWS::IAM::Role", "TaskRole")[0])
    context = {"kms:EncryptionContext:sealedkb:kms_version": "1"}
    # What sealedkb does works (the model is not vacuous)...
    assert allowed(synthesized, "EnvelopeKey", task, "kms:Decrypt", context)
    assert allowed(synthesized, "EnvelopeKey", task, "kms:GenerateDataKey", context)
    assert allowed(synthesized, "AuditMacKey", task, "kms:GenerateMac", {})
    # ...what an attacker would try does not.
    assert not allowed(synthesized, "EnvelopeKey", task, "kms:Decrypt", {})
    for action in ("kms:ScheduleKeyDeletion", "kms:DisableKey", "kms:PutKeyPolicy"):
        assert not allowed(synthesized, "EnvelopeKey", task, action, context), action
        assert not allowed(synthesized, "AuditMacKey", task, action, {}), action
    assert not allowed(synthesized, "EnvelopeKey", task, "kms:CreateGrant", context)
    # The database's key: not directly, not even pretending to come through RDS
    # (kms:ViaService is set by AWS, but the caller-account condition still binds).
    for action in ("kms:Decrypt", "kms:CreateGrant", "kms:ReEncryptFrom"):
        assert not allowed(synthesized, "DatabaseKey", task, action, {}), action
    assert not allowed(
        synthesized,
        "DatabaseKey",
        task,
        "kms:Decrypt",
        {"kms:ViaService": f"secretsmanager.{REGION}.amazonaws.com"},
    )
    # The ops key only through S3 (the snapshot bucket), never directly.
    assert allowed(
        synthesized,
        "OpsKey",
        task,
        "kms:GenerateDataKey",
        {"kms:ViaService": f"s3.{REGION}.amazonaws.com"},
    )
    assert not allowed(synthesized, "OpsKey", task, "kms:Decrypt", {})


def test_attacker_with_the_task_role_cannot_delete_snapshots(synthesized: Synth) -> None:
    role = synthesized.one("AWS::IAM::Role", "TaskRole")[0]
    actions: set[str] = set()
    for _, policy in synthesized.resources("AWS::IAM::Policy").items():
        if ref(role) in policy["Properties"].get("Roles", []):
            for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
                actions.update(as_list(statement["Action"]))
    for forbidden in (
        "s3:DeleteObject",
        "s3:DeleteObjectVersion",
        "s3:PutBucketObjectLockConfiguration",
        "s3:BypassGovernanceRetention",
        "s3:PutBucketPolicy",
        "kms:ScheduleKeyDeletion",
        "cloudtrail:StopLogging",
        "cloudtrail:DeleteTrail",
    ):
        assert not any(_matches(a, forbidden) for a in actions), forbidden
    assert all(a.startswith(("s3:", "kms:", "logs:")) for a in actions), actions


# --- the service -------------------------------------------------------------------


def test_fargate_service_runs_the_requested_replicas(synthesized: Synth) -> None:
    props = synthesized.one("AWS::ECS::Service")[1]["Properties"]
    assert props["DesiredCount"] == REPLICAS
    assert props["LaunchType"] == "FARGATE"
    assert props["DeploymentConfiguration"]["MinimumHealthyPercent"] == 100
    assert props["NetworkConfiguration"]["AwsvpcConfiguration"]["AssignPublicIp"] == "DISABLED"


def test_task_is_non_root_with_a_read_only_root_filesystem(synthesized: Synth) -> None:
    container = app_container(synthesized)
    assert container["User"] == "10001:10001"
    assert container["ReadonlyRootFilesystem"] is True
    assert {m["ContainerPath"] for m in container["MountPoints"]} == {"/var/lib/sealedkb", "/tmp"}
    assert "/healthz" in env_of(container)["SEALEDKB_HEALTH_URL"]
    assert "--tls-cert" in container["Command"]
    assert "--insecure" not in container["Command"]


def test_load_balancer_terminates_tls_with_the_context_certificate(synthesized: Synth) -> None:
    listeners = synthesized.resources("AWS::ElasticLoadBalancingV2::Listener")
    assert [v["Properties"]["Protocol"] for v in listeners.values()] == ["HTTPS"]
    (listener,) = listeners.values()
    assert listener["Properties"]["Port"] == 443
    assert listener["Properties"]["Certificates"] == [{"CertificateArn": CERTIFICATE_ARN}]
    assert listener["Properties"]["SslPolicy"].startswith("ELBSecurityPolicy-TLS13")
    target = synthesized.one("AWS::ElasticLoadBalancingV2::TargetGroup")[1]["Properties"]
    assert target["Protocol"] == "HTTPS"
    assert target["HealthCheckPath"] == "/readyz"
    lb = synthesized.one("AWS::ElasticLoadBalancingV2::LoadBalancer")[1]["Properties"]
    attributes = {a["Key"]: a["Value"] for a in lb["LoadBalancerAttributes"]}
    assert attributes["routing.http.drop_invalid_header_fields.enabled"] == "true"
    assert attributes["access_logs.s3.enabled"] == "true"


def test_database_accepts_only_the_tasks(synthesized: Synth) -> None:
    db_sg = synthesized.one("AWS::EC2::SecurityGroup", "DbSecurityGroup")[0]
    app_sg = synthesized.one("AWS::EC2::SecurityGroup", "AppSecurityGroup")[0]
    rules = [
        r["Properties"]
        for r in synthesized.resources("AWS::EC2::SecurityGroupIngress").values()
        if r["Properties"]["GroupId"] == {"Fn::GetAtt": [db_sg, "GroupId"]}
    ]
    assert rules
    for rule in rules:
        assert rule["SourceSecurityGroupId"] == {"Fn::GetAtt": [app_sg, "GroupId"]}
        assert "CidrIp" not in rule


# --- the snapshot bucket --------------------------------------------------------------


def _tls_only(synth: Synth, bucket: str) -> bool:
    for policy in synth.resources("AWS::S3::BucketPolicy").values():
        if policy["Properties"]["Bucket"] != ref(bucket):
            continue
        for s in policy["Properties"]["PolicyDocument"]["Statement"]:
            if (
                s["Effect"] == "Deny"
                and s["Action"] == "s3:*"
                and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
            ):
                return True
    return False


def test_snapshot_bucket_has_object_lock_encryption_versions_and_no_public_access(
    synthesized: Synth,
) -> None:
    bucket, resource = synthesized.one("AWS::S3::Bucket", "Snapshots")
    props = resource["Properties"]
    assert props["ObjectLockEnabled"] is True
    retention = props["ObjectLockConfiguration"]["Rule"]["DefaultRetention"]
    assert retention["Mode"] == "COMPLIANCE" and retention["Days"] >= 7
    (rule,) = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
    assert rule["ServerSideEncryptionByDefault"]["KMSMasterKeyID"] == arn_of(
        key_id(synthesized, "OpsKey")
    )
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    assert _tls_only(synthesized, bucket)
    assert resource["DeletionPolicy"] == "Retain"
    for other in synthesized.resources("AWS::S3::Bucket"):
        assert _tls_only(synthesized, other), other


# --- CloudTrail, alarms, notifications ---------------------------------------------------


def test_cloudtrail_validates_log_files_keeps_kms_events_and_is_encrypted(
    synthesized: Synth,
) -> None:
    check_log_validation(synthesized)
    props = synthesized.one("AWS::CloudTrail::Trail")[1]["Properties"]
    assert props["KMSKeyId"] == arn_of(key_id(synthesized, "OpsKey"))
    assert props["IsMultiRegionTrail"] is True and props["IsLogging"] is True
    (selector,) = props["EventSelectors"]
    assert selector["IncludeManagementEvents"] is True
    assert selector["ReadWriteType"] == "All"
    assert "kms.amazonaws.com" not in selector.get("ExcludeManagementEventSources", [])
    assert props["CloudWatchLogsLogGroupArn"] == arn_of(
        synthesized.one("AWS::Logs::LogGroup", "TrailLogs")[0]
    )


def _alarms_on(synth: Synth, metric_name: str) -> list[dict[str, Any]]:
    found = []
    for alarm in synth.resources("AWS::CloudWatch::Alarm").values():
        text = json.dumps(alarm["Properties"])
        if f'"MetricName": "{metric_name}"' in text:
            found.append(alarm["Properties"])
    return found


def _notifies(synth: Synth, alarm: dict[str, Any]) -> bool:
    return alarm["AlarmActions"] == [ref(synth.one("AWS::SNS::Topic")[0])]


def test_alarm_on_kms_key_access_failures_from_cloudtrail(synthesized: Synth) -> None:
    (flt,) = [
        f["Properties"]
        for f in synthesized.resources("AWS::Logs::MetricFilter").values()
        if f["Properties"]["MetricTransformations"][0]["MetricName"] == "KmsKeyAccessFailures"
    ]
    assert flt["LogGroupName"] == ref(synthesized.one("AWS::Logs::LogGroup", "TrailLogs")[0])
    assert '$.eventSource = "kms.amazonaws.com"' in flt["FilterPattern"]
    assert '$.errorCode = "AccessDenied*"' in flt["FilterPattern"]
    assert "KMSInvalidStateException" in flt["FilterPattern"]
    (alarm,) = _alarms_on(synthesized, "KmsKeyAccessFailures")
    assert alarm["Threshold"] == 0
    assert alarm["ComparisonOperator"] == "GreaterThanThreshold"
    assert _notifies(synthesized, alarm)


def test_alarm_on_kms_call_volume_over_200_percent_of_baseline(synthesized: Synth) -> None:
    alarms = _alarms_on(synthesized, "KmsCalls")
    static = [a for a in alarms if "Threshold" in a]
    (volume,) = static
    (expression,) = [m for m in volume["Metrics"] if "Expression" in m]
    assert expression["Expression"] == f"100 * calls / {KMS_BASELINE}"
    assert volume["Threshold"] == 200
    assert volume["ComparisonOperator"] == "GreaterThanThreshold"
    (anomaly,) = [a for a in alarms if a.get("ThresholdMetricId") == "band"]
    assert anomaly["ComparisonOperator"] == "GreaterThanUpperThreshold"
    for alarm in (volume, anomaly):
        assert _notifies(synthesized, alarm)


def test_rds_inaccessible_encryption_credentials_event_raises_an_alarm(
    synthesized: Synth,
) -> None:
    rule_id, rule = synthesized.one("AWS::Events::Rule", "RdsKeyInaccessible")
    pattern = rule["Properties"]["EventPattern"]
    assert pattern["source"] == ["aws.rds"]
    assert pattern["detail"]["SourceIdentifier"] == ["sealedkb-db"]
    assert {"wildcard": "*inaccessible-encryption-credentials*"} in pattern["detail"]["Message"]
    assert rule["Properties"]["Targets"][0]["Arn"] == ref(synthesized.one("AWS::SNS::Topic")[0])
    (alarm,) = _alarms_on(synthesized, "TriggeredRules")
    assert alarm["Dimensions"] == [{"Name": "RuleName", "Value": ref(rule_id)}]
    assert _notifies(synthesized, alarm)


@pytest.mark.parametrize(
    ("metric", "operator", "threshold"),
    [
        ("sealedkb_key_provider_failures_total", "GreaterThanThreshold", 0),
        ("sealedkb_available", "LessThanThreshold", 1),
        ("sealedkb_integrity_failures_total", "GreaterThanThreshold", 0),
        ("sealedkb_audit_chain_ok", "LessThanThreshold", 1),
    ],
)
def test_alarms_on_sealedkb_encryption_health_metrics(
    synthesized: Synth, metric: str, operator: str, threshold: int
) -> None:
    (alarm,) = _alarms_on(synthesized, metric)
    assert alarm["Namespace"] == "sealedkb"
    assert alarm["ComparisonOperator"] == operator and alarm["Threshold"] == threshold
    assert _notifies(synthesized, alarm)
    _, task = synthesized.one("AWS::ECS::TaskDefinition", "Task")
    agent = json.dumps(task["Properties"]["ContainerDefinitions"])
    assert metric in agent  # the metrics agent ships it


def test_notification_topic_is_encrypted_and_tls_only(synthesized: Synth) -> None:
    _topic_id, topic = synthesized.one("AWS::SNS::Topic")
    assert topic["Properties"]["KmsMasterKeyId"] == arn_of(key_id(synthesized, "OpsKey"))
    (policy,) = synthesized.resources("AWS::SNS::TopicPolicy").values()
    assert any(
        s["Effect"] == "Deny" and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
        for s in policy["Properties"]["PolicyDocument"]["Statement"]
    )


def test_log_groups_are_encrypted(synthesized: Synth) -> None:
    ops = arn_of(key_id(synthesized, "OpsKey"))
    groups = synthesized.resources("AWS::Logs::LogGroup")
    assert len(groups) >= 4
    for name, group in groups.items():
        assert group["Properties"]["KmsKeyId"] == ops, name


# --- cdk-nag, cfn-lint, checkov --------------------------------------------------------


def test_cdk_nag_passes_and_every_acknowledgement_has_a_reason(synthesized: Synth) -> None:
    # Synthesis (the fixture) fails on any finding not acknowledged.
    report = json.loads((synthesized.outdir / "validation-report.json").read_text())
    assert "AwsSolutions" in json.dumps(report)
    sys.path.insert(0, str(AWS_APP))
    from suppressions import ACKNOWLEDGED  # type: ignore[import-not-found]

    assert ACKNOWLEDGED
    for path, rule, reason in ACKNOWLEDGED:
        assert rule.startswith("AwsSolutions-"), rule
        assert len(reason.split()) >= 8, f"{path} {rule}: give the reason"
    _, kinds = zip(*[(p, r.split("[")[0]) for p, r, _ in ACKNOWLEDGED], strict=True)
    # The findings that matter most for this deployment are never acknowledged.
    for never in (
        "AwsSolutions-RDS2",
        "AwsSolutions-KMS5",
        "AwsSolutions-S10",
        "AwsSolutions-ELB2",
    ):
        assert never not in kinds


def test_cdk_nag_is_active_without_the_acknowledgements(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"ValidationFailed(.|\n)*AwsSolutions-RDS11"):
        synthesize(tmp_path, suppress=False)


def test_cfn_lint_finds_nothing(synthesized: Synth) -> None:
    cfn_lint = need_tool(venv_tool("cfn-lint"), "cfn-lint")
    result = subprocess.run(
        # W3005: CDK writes a DependsOn that a Ref already implies (harmless).
        [cfn_lint, "--ignore-checks", "W3005", "--", str(synthesized.template_file)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_checkov_finds_nothing(synthesized: Synth) -> None:
    checkov = need_tool(venv_tool("checkov", ".venv-checkov"), "checkov")
    result = subprocess.run(
        [
            checkov,
            "-f",
            str(synthesized.template_file),
            "--framework",
            "cloudformation",
            "--compact",
            "--quiet",
            "--skip-download",
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        check=False,
        env={"BC_SKIP_MAPPING": "TRUE", "PATH": "/usr/bin:/bin", "HOME": str(AWS_APP)},
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    summary = json.loads(result.stdout)["summary"]
    assert summary["failed"] == 0 and summary["passed"] > 100
    skipped = json.loads(result.stdout)["results"].get("skipped_checks", [])
    assert {c["check_id"] for c in skipped} <= {"CKV_AWS_7", "CKV_AWS_18"}
    for check in skipped:
        assert len(check["suppress_comment"].split()) >= 8


# --- the mutation test -------------------------------------------------------------


MUTATIONS: dict[str, Callable[[Synth], None]] = {
    "storage-unencrypted": check_storage_encrypted,
    "no-force-ssl": check_force_ssl,
    "no-key-rotation": check_key_rotation,
    "no-log-validation": check_log_validation,
}


@pytest.fixture(scope="module")
def mutated(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    """The stack with every protection switch off at once (one synthesis; each check
    looks at its own property only). cdk-nag is off: it would refuse to synthesise."""
    return synthesize(tmp_path_factory.mktemp("cdk-mutated"), nag=False, unsafe=",".join(MUTATIONS))


@pytest.mark.parametrize("switch", sorted(MUTATIONS))
def test_mutation_each_protection_turned_off_fails_its_check(
    synthesized: Synth, mutated: Synth, switch: str
) -> None:
    check = MUTATIONS[switch]
    check(synthesized)  # holds on the real stack
    with pytest.raises(AssertionError):
        check(mutated)


def test_cdk_nag_refuses_unencrypted_storage(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"ValidationFailed(.|\n)*AwsSolutions-RDS2"):
        synthesize(tmp_path, unsafe="storage-unencrypted")


def test_bad_context_is_refused_with_a_clear_message() -> None:
    sys.path.insert(0, str(AWS_APP))
    from sealedkb_stack import DeploymentSettings  # type: ignore[import-not-found]

    with pytest.raises(ValueError, match="certificateArn"):
        DeploymentSettings(certificate_arn="not-an-arn")
    with pytest.raises(ValueError, match="backupRetentionDays"):
        DeploymentSettings(certificate_arn=CERTIFICATE_ARN, backup_retention_days=3)
    with pytest.raises(ValueError, match="unknown unsafe"):
        DeploymentSettings(certificate_arn=CERTIFICATE_ARN, unsafe=frozenset({"typo"}))
    result = subprocess.run(
        [sys.executable, str(AWS_APP / "app.py")],
        capture_output=True,
        text=True,
        check=False,
        cwd=AWS_APP,
        env={"PATH": "/usr/bin:/bin", "CDK_CONTEXT_JSON": "{}"},
    )
    assert result.returncode != 0
    assert "certificateArn is required" in result.stderr


def test_a_daily_task_ships_snapshots_and_checkpoints_to_the_bucket(synthesized: Synth) -> None:
    rules = [
        r["Properties"]
        for r in synthesized.resources("AWS::Events::Rule").values()
        if "ScheduleExpression" in r["Properties"]
    ]
    (rule,) = rules
    assert rule["ScheduleExpression"] == "cron(0 3 * * ? *)"
    task_id, task = synthesized.one("AWS::ECS::TaskDefinition", "SnapshotTask")
    assert rule["Targets"][0]["EcsParameters"]["TaskDefinitionArn"] == ref(task_id)
    containers = {c["Name"]: c for c in task["Properties"]["ContainerDefinitions"]}
    assert containers["snapshot"]["Command"][:2] == ["snapshot", "create"]
    ship = containers["ship"]
    assert ship["DependsOn"] == [{"Condition": "SUCCESS", "ContainerName": "snapshot"}]
    text = json.dumps(ship["Command"])
    assert "/snapshots/" in text and "/checkpoints/" in text
    for container in containers.values():
        assert container["User"] == "10001:10001"
        assert container["ReadonlyRootFilesystem"] is True
    assert task["Properties"]["TaskRoleArn"] == arn_of(
        synthesized.one("AWS::IAM::Role", "TaskRole")[0]
    )
    # The service's replicas take no snapshots of their own.
    assert env_of(app_container(synthesized))["SEALEDKB_SNAPSHOT_WINDOW"] == "off"


def test_the_execution_role_pulls_only_the_image_repository(synthesized: Synth) -> None:
    role = synthesized.one("AWS::IAM::Role", "ExecutionRole")[0]
    wildcard: list[Any] = []
    for policy in synthesized.resources("AWS::IAM::Policy").values():
        if ref(role) not in policy["Properties"].get("Roles", []):
            continue
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            if statement["Resource"] == "*":
                wildcard.append(statement["Action"])
            if "ecr:BatchGetImage" in as_list(statement["Action"]):
                assert json.dumps(statement["Resource"]).endswith(':repository/sealedkb"]]}')
    assert wildcard == ["ecr:GetAuthorizationToken"]
