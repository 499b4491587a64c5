"""The AWS deployment of sealedkb as one CDK stack (docs/AWS-DEPLOYMENT.md).

What it builds, and why each part is there:

- Three customer-managed KMS keys, each for one job, each with its own key policy:
  ``DatabaseKey`` (RDS storage, Performance Insights, the database secret, used
  only through RDS and Secrets Manager: ``kms:ViaService``), ``EnvelopeKey`` (the
  aws-kms provider of sealedkb: it wraps the data keys; only the task role may use
  it, and only with sealedkb's encryption context) and ``OpsKey`` (CloudTrail,
  logs, the SNS topic, the snapshot bucket). Symmetric keys rotate every year and
  wait 30 days before deletion. ``AuditMacKey`` is an HMAC_256 key that signs the
  audit checkpoints and token MACs (``SEALEDKB_AWS_MAC_KEY_ID``).
- RDS PostgreSQL (a pinned minor version) in isolated subnets: storage and
  Performance Insights encrypted under ``DatabaseKey``, ``rds.force_ssl=1``,
  automated backups (7-35 days), deletion protection, Multi-AZ; its credentials in
  Secrets Manager.
- ECS Fargate: N replicas of ``sealedkb serve`` behind an ALB with TLS (the
  certificate from the context), the ALB to the tasks over TLS too; a CloudWatch
  agent beside each replica ships sealedkb's encryption-health metrics.
- An S3 bucket with Object Lock for snapshots and audit checkpoints.
- CloudTrail (log-file validation, management events with KMS events, encrypted),
  metric filters and alarms: KMS key-access failures, KMS call volume over 200 %
  of its baseline, the RDS inaccessible-encryption-credentials event, sealedkb's
  own metrics; all notify one encrypted SNS topic.

Every security property is asserted by tests/deploy/test_aws_stack.py; the
``unsafe`` setting exists only so that the tests can prove they notice a change.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from aws_cdk import (
    CfnResource,
    Duration,
    RemovalPolicy,
    Stack,
)
from aws_cdk import aws_certificatemanager as acm
from aws_cdk import aws_cloudtrail as cloudtrail
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_rds as rds
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from constructs import Construct

# The engine is pinned to a minor version: an upgrade is a reviewed change.
POSTGRES_VERSION = rds.PostgresEngineVersion.VER_17_6
DB_NAME = "sealedkb"
DB_USER = "sealedkb"
DB_INSTANCE_ID = "sealedkb-db"
SNAPSHOT_PREFIXES = ("snapshots", "checkpoints")
APP_PORT = 8765
METRICS_PORT = 9464
METRICS_NAMESPACE = "sealedkb"
# Where the image keeps the RDS CA bundle (deploy/Dockerfile).
RDS_CA_BUNDLE = "/etc/ssl/certs/rds-global-bundle.pem"
# sealedkb's aws-kms provider sends this entry in every encryption context
# (keys/aws_kms.py); the key policy refuses cryptographic calls without it.
SEALEDKB_CONTEXT_KEY = "sealedkb:kms_version"
CLOUDWATCH_AGENT_IMAGE = "public.ecr.aws/cloudwatch-agent/cloudwatch-agent:1.300060.0b1248"
AWS_CLI_IMAGE = "public.ecr.aws/aws-cli/aws-cli:2.31.0"


@dataclass(frozen=True)
class DeploymentSettings:
    """What an operator chooses (cdk.json context or ``-c name=value``)."""

    certificate_arn: str
    image: str = "sealedkb:latest"
    replicas: int = 2
    backup_retention_days: int = 14
    # KMS calls per 5 minutes in normal use (docs/AWS-DEPLOYMENT.md §8 measures it);
    # the volume alarm fires above twice this.
    kms_call_baseline: int = 500
    alarm_email: str | None = None
    snapshot_retention_days: int = 35
    db_instance_type: str = "t4g.medium"
    allowed_cidr: str = "0.0.0.0/0"
    # Test-only switches that turn one protection off (tests/deploy's mutation test).
    unsafe: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if not self.certificate_arn.startswith("arn:aws:acm:"):
            raise ValueError("certificateArn must be an ACM certificate ARN (arn:aws:acm:...)")
        if not 1 <= self.replicas <= 20:
            raise ValueError("replicas must be between 1 and 20")
        if not 7 <= self.backup_retention_days <= 35:
            raise ValueError("backupRetentionDays must be between 7 and 35")
        if self.kms_call_baseline < 1:
            raise ValueError("kmsCallBaseline must be at least 1")
        unknown = self.unsafe - UNSAFE_SWITCHES
        if unknown:
            raise ValueError(f"unknown unsafe switch(es): {', '.join(sorted(unknown))}")


UNSAFE_SWITCHES = frozenset(
    {"storage-unencrypted", "no-force-ssl", "no-key-rotation", "no-log-validation"}
)


ECR_IMAGE = re.compile(
    r"^(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com/"
    r"(?P<name>[a-z0-9][a-z0-9._/-]*):(?P<tag>[A-Za-z0-9_.-]{1,128})$"
)


def _symmetric_key(scope: Construct, name: str, description: str, rotate: bool) -> kms.Key:
    return kms.Key(
        scope,
        name,
        description=description,
        enable_key_rotation=rotate,
        rotation_period=Duration.days(365) if rotate else None,
        pending_window=Duration.days(30),
        removal_policy=RemovalPolicy.RETAIN,
    )


def _checkov_skip(construct: Construct, check: str, reason: str) -> None:
    """A checkov finding accepted on one resource, with its reason (template Metadata)."""
    resource = construct.node.default_child
    assert isinstance(resource, CfnResource)
    resource.add_metadata("checkov", {"skip": [{"id": check, "comment": reason}]})


class SealedkbStack(Stack):
    """sealedkb on ECS Fargate, RDS PostgreSQL and KMS (module docstring)."""

    def __init__(
        self, scope: Construct, construct_id: str, settings: DeploymentSettings, **kwargs: object
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)  # type: ignore[arg-type]
        # Server access logs are allowed by a bucket policy, not a legacy ACL.
        self.node.set_context("@aws-cdk/aws-s3:serverAccessLogsUseBucketPolicy", True)
        self.settings = settings
        unsafe = settings.unsafe
        region, account = Stack.of(self).region, Stack.of(self).account

        # --- notifications ---------------------------------------------------------
        self.ops_key = _symmetric_key(
            self, "OpsKey", "sealedkb: CloudTrail, logs, alarms topic, snapshot bucket", True
        )
        for principal in ("cloudwatch.amazonaws.com", "events.amazonaws.com"):
            # Alarms and EventBridge publish to the encrypted topic.
            self.ops_key.add_to_resource_policy(
                iam.PolicyStatement(
                    sid=f"Publish from {principal.split('.')[0]}",
                    principals=[iam.ServicePrincipal(principal)],
                    actions=["kms:Decrypt", "kms:GenerateDataKey*"],
                    resources=["*"],
                    conditions={"StringEquals": {"aws:SourceAccount": account}},
                )
            )
        self.ops_key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="CloudWatch Logs of this account",
                principals=[iam.ServicePrincipal(f"logs.{region}.amazonaws.com")],
                actions=[
                    "kms:Encrypt*",
                    "kms:Decrypt*",
                    "kms:ReEncrypt*",
                    "kms:GenerateDataKey*",
                    "kms:Describe*",
                ],
                resources=["*"],
                conditions={
                    "ArnLike": {
                        "kms:EncryptionContext:aws:logs:arn": (
                            f"arn:{Stack.of(self).partition}:logs:{region}:{account}:*"
                        )
                    }
                },
            )
        )
        self.topic = sns.Topic(
            self,
            "Notifications",
            display_name="sealedkb alarms",
            master_key=self.ops_key,
            enforce_ssl=True,
        )
        if settings.alarm_email:
            sns.Subscription(
                self,
                "AlarmEmail",
                topic=self.topic,
                protocol=sns.SubscriptionProtocol.EMAIL,
                endpoint=settings.alarm_email,
            )
        alarm_action = cw_actions.SnsAction(self.topic)

        # --- network -------------------------------------------------------------
        flow_logs = logs.LogGroup(
            self,
            "VpcFlowLogs",
            encryption_key=self.ops_key,
            retention=logs.RetentionDays.ONE_YEAR,
            removal_policy=RemovalPolicy.RETAIN,
        )
        self.vpc = ec2.Vpc(
            self,
            "Vpc",
            max_azs=2,
            nat_gateways=1,
            subnet_configuration=[
                ec2.SubnetConfiguration(name="public", subnet_type=ec2.SubnetType.PUBLIC),
                ec2.SubnetConfiguration(name="app", subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS),
                ec2.SubnetConfiguration(name="db", subnet_type=ec2.SubnetType.PRIVATE_ISOLATED),
            ],
            flow_logs={
                "all": ec2.FlowLogOptions(
                    destination=ec2.FlowLogDestination.to_cloud_watch_logs(flow_logs)
                )
            },
        )
        self.app_security_group = ec2.SecurityGroup(
            self,
            "AppSecurityGroup",
            vpc=self.vpc,
            description="sealedkb tasks: MCP from the load balancer only",
        )
        # KMS and Secrets Manager without leaving the VPC, for the tasks only.
        endpoint_security_group = ec2.SecurityGroup(
            self,
            "EndpointSecurityGroup",
            vpc=self.vpc,
            allow_all_outbound=False,
            description="KMS and Secrets Manager endpoints: HTTPS from the sealedkb tasks",
        )
        endpoint_security_group.add_ingress_rule(
            self.app_security_group, ec2.Port.tcp(443), "HTTPS from sealedkb"
        )
        for name, service in (
            ("KmsEndpoint", ec2.InterfaceVpcEndpointAwsService.KMS),
            ("SecretsEndpoint", ec2.InterfaceVpcEndpointAwsService.SECRETS_MANAGER),
        ):
            self.vpc.add_interface_endpoint(
                name,
                service=service,
                subnets=ec2.SubnetSelection(subnet_group_name="app"),
                open=False,
                security_groups=[endpoint_security_group],
            )

        # --- the roles (the task role is referenced by the envelope key's policy) ----
        self.task_role = iam.Role(
            self,
            "TaskRole",
            assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"),
            description="sealedkb serve: its KMS keys and the snapshot bucket only",
        )
        self.execution_role = iam.Role(
            self,
            "ExecutionRole",
            assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"),
            description="ECS agent: pulls the image, reads the database secret, writes logs",
        )

        # --- the database key and the database -------------------------------------
        self.database_key = _symmetric_key(
            self,
            "DatabaseKey",
            "sealedkb: RDS storage, Performance Insights and the database secret",
            "no-key-rotation" not in unsafe,
        )
        self.database_key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="RDS in this account, through RDS only",
                principals=[iam.AccountRootPrincipal()],
                actions=[
                    "kms:Encrypt",
                    "kms:Decrypt",
                    "kms:ReEncrypt*",
                    "kms:GenerateDataKey*",
                    "kms:CreateGrant",
                    "kms:ListGrants",
                    "kms:DescribeKey",
                ],
                resources=["*"],
                conditions={
                    "StringEquals": {
                        "kms:ViaService": f"rds.{region}.amazonaws.com",
                        "kms:CallerAccount": account,
                    }
                },
            )
        )
        self.database_key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="The ECS agent reads the database secret, through Secrets Manager only",
                principals=[iam.ArnPrincipal(self.execution_role.role_arn)],
                actions=["kms:Decrypt", "kms:DescribeKey"],
                resources=["*"],
                conditions={
                    "StringEquals": {"kms:ViaService": f"secretsmanager.{region}.amazonaws.com"}
                },
            )
        )
        parameters = {"rds.force_ssl": "0" if "no-force-ssl" in unsafe else "1"}
        parameters["ssl_min_protocol_version"] = "TLSv1.2"
        parameters["log_connections"] = "1"
        parameters["log_disconnections"] = "1"
        engine = rds.DatabaseInstanceEngine.postgres(version=POSTGRES_VERSION)
        self.parameter_group = rds.ParameterGroup(
            self,
            "DbParameters",
            engine=engine,
            description="sealedkb: TLS only (rds.force_ssl=1)",
            parameters=parameters,
        )
        self.db_security_group = ec2.SecurityGroup(
            self,
            "DbSecurityGroup",
            vpc=self.vpc,
            allow_all_outbound=False,
            description="sealedkb database: PostgreSQL from the sealedkb tasks only",
        )
        encrypted = "storage-unencrypted" not in unsafe
        self.database = rds.DatabaseInstance(
            self,
            "Database",
            engine=engine,
            instance_type=ec2.InstanceType(settings.db_instance_type),
            vpc=self.vpc,
            vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED),
            security_groups=[self.db_security_group],
            database_name=DB_NAME,
            credentials=rds.Credentials.from_generated_secret(
                DB_USER, encryption_key=self.database_key
            ),
            parameter_group=self.parameter_group,
            storage_encrypted=encrypted,
            storage_encryption_key=self.database_key if encrypted else None,
            allocated_storage=50,
            max_allocated_storage=500,
            storage_type=rds.StorageType.GP3,
            multi_az=True,
            backup_retention=Duration.days(settings.backup_retention_days),
            preferred_backup_window="02:00-02:30",
            copy_tags_to_snapshot=True,
            deletion_protection=True,
            removal_policy=RemovalPolicy.SNAPSHOT,
            enable_performance_insights=True,
            performance_insight_encryption_key=self.database_key,
            performance_insight_retention=rds.PerformanceInsightRetention.DEFAULT,
            instance_identifier=DB_INSTANCE_ID,
            cloudwatch_logs_exports=["postgresql"],
            iam_authentication=True,
            monitoring_interval=Duration.seconds(60),
            auto_minor_version_upgrade=False,
            publicly_accessible=False,
        )
        assert self.database.secret is not None
        # The exported PostgreSQL log, made here so it is encrypted and kept a year.
        db_logs = logs.LogGroup(
            self,
            "DbLogs",
            log_group_name=f"/aws/rds/instance/{DB_INSTANCE_ID}/postgresql",
            encryption_key=self.ops_key,
            retention=logs.RetentionDays.ONE_YEAR,
            removal_policy=RemovalPolicy.RETAIN,
        )
        self.database.node.add_dependency(db_logs)

        # --- sealedkb's own keys -------------------------------------------------------
        self.envelope_key = _symmetric_key(
            self,
            "EnvelopeKey",
            "sealedkb: envelope encryption of the knowledge base's data keys (aws-kms provider)",
            True,
        )
        self.envelope_key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="sealedkb wraps and unwraps data keys, with its encryption context only",
                principals=[iam.ArnPrincipal(self.task_role.role_arn)],
                actions=[
                    "kms:Encrypt",
                    "kms:Decrypt",
                    "kms:GenerateDataKey",
                    "kms:ReEncryptFrom",
                    "kms:ReEncryptTo",
                ],
                resources=["*"],
                conditions={"Null": {f"kms:EncryptionContext:{SEALEDKB_CONTEXT_KEY}": "false"}},
            )
        )
        self.envelope_key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="sealedkb reads the key's state and rotations",
                principals=[iam.ArnPrincipal(self.task_role.role_arn)],
                actions=["kms:DescribeKey", "kms:GetKeyRotationStatus", "kms:ListKeyRotations"],
                resources=["*"],
            )
        )
        self.mac_key = kms.Key(
            self,
            "AuditMacKey",
            description="sealedkb: HMAC key of audit checkpoints and token MACs",
            key_spec=kms.KeySpec.HMAC_256,
            key_usage=kms.KeyUsage.GENERATE_VERIFY_MAC,
            pending_window=Duration.days(30),
            removal_policy=RemovalPolicy.RETAIN,
        )
        _checkov_skip(
            self.mac_key,
            "CKV_AWS_7",
            "KMS rotates symmetric encryption keys only; an HMAC key is rotated by making "
            "a new one and re-signing (docs/AWS-DEPLOYMENT.md §5)",
        )
        self.mac_key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="sealedkb signs and verifies audit checkpoints",
                principals=[iam.ArnPrincipal(self.task_role.role_arn)],
                actions=["kms:GenerateMac", "kms:VerifyMac", "kms:DescribeKey"],
                resources=["*"],
            )
        )

        # --- snapshots and checkpoints -------------------------------------------------
        access_logs = s3.Bucket(
            self,
            "AccessLogs",
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            versioned=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            removal_policy=RemovalPolicy.RETAIN,
            lifecycle_rules=[s3.LifecycleRule(expiration=Duration.days(400))],
        )
        _checkov_skip(
            access_logs,
            "CKV_AWS_18",
            "This is the access-log bucket of the other buckets and the ALB; logging its "
            "own access would log into itself",
        )
        self.snapshots = s3.Bucket(
            self,
            "Snapshots",
            encryption=s3.BucketEncryption.KMS,
            encryption_key=self.ops_key,
            bucket_key_enabled=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            versioned=True,
            object_lock_enabled=True,
            object_lock_default_retention=s3.ObjectLockRetention.compliance(
                Duration.days(settings.snapshot_retention_days)
            ),
            server_access_logs_bucket=access_logs,
            server_access_logs_prefix="snapshots/",
            removal_policy=RemovalPolicy.RETAIN,
        )
        # The tasks add and read objects under two prefixes; they cannot delete them,
        # and Object Lock keeps every version for the retention period anyway.
        prefixes = [self.snapshots.arn_for_objects(f"{p}/*") for p in SNAPSHOT_PREFIXES]
        self.task_role.add_to_policy(
            iam.PolicyStatement(
                sid="SnapshotObjects",
                actions=["s3:PutObject", "s3:GetObject"],
                resources=prefixes,
            )
        )
        self.task_role.add_to_policy(
            iam.PolicyStatement(
                sid="SnapshotListing",
                actions=["s3:ListBucket"],
                resources=[self.snapshots.bucket_arn],
                conditions={"StringLike": {"s3:prefix": [f"{p}/*" for p in SNAPSHOT_PREFIXES]}},
            )
        )
        self.task_role.add_to_policy(
            iam.PolicyStatement(
                sid="SnapshotEncryption",
                actions=["kms:GenerateDataKey", "kms:Decrypt"],
                resources=[self.ops_key.key_arn],
                conditions={"StringEquals": {"kms:ViaService": f"s3.{region}.amazonaws.com"}},
            )
        )

        # --- CloudTrail ------------------------------------------------------------
        trail_logs = logs.LogGroup(
            self,
            "TrailLogs",
            encryption_key=self.ops_key,
            retention=logs.RetentionDays.ONE_YEAR,
            removal_policy=RemovalPolicy.RETAIN,
        )
        trail_bucket = s3.Bucket(
            self,
            "TrailBucket",
            encryption=s3.BucketEncryption.KMS,
            encryption_key=self.ops_key,
            bucket_key_enabled=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            versioned=True,
            server_access_logs_bucket=access_logs,
            server_access_logs_prefix="trail/",
            removal_policy=RemovalPolicy.RETAIN,
        )
        self.trail = cloudtrail.Trail(
            self,
            "Trail",
            bucket=trail_bucket,
            encryption_key=self.ops_key,
            enable_file_validation="no-log-validation" not in unsafe,
            include_global_service_events=True,
            is_multi_region_trail=True,
            management_events=cloudtrail.ReadWriteType.ALL,
            send_to_cloud_watch_logs=True,
            cloud_watch_log_group=trail_logs,
        )
        # KMS events are management events: ALL (read and write) keeps every
        # Decrypt/GenerateDataKey; the CloudFormation property says so explicitly.
        cfn_trail = self.trail.node.default_child
        assert isinstance(cfn_trail, cloudtrail.CfnTrail)
        cfn_trail.add_property_override(
            "EventSelectors",
            [
                {
                    "IncludeManagementEvents": True,
                    "ReadWriteType": "All",
                    "ExcludeManagementEventSources": [],
                }
            ],
        )

        # --- the service ---------------------------------------------------------
        self.cluster = ecs.Cluster(
            self,
            "Cluster",
            vpc=self.vpc,
            container_insights_v2=ecs.ContainerInsights.ENHANCED,
        )
        app_logs = logs.LogGroup(
            self,
            "AppLogs",
            encryption_key=self.ops_key,
            retention=logs.RetentionDays.ONE_YEAR,
            removal_policy=RemovalPolicy.RETAIN,
        )
        self.task = ecs.FargateTaskDefinition(
            self,
            "Task",
            cpu=1024,
            memory_limit_mib=3072,
            task_role=self.task_role,
            execution_role=self.execution_role,
            runtime_platform=ecs.RuntimePlatform(
                cpu_architecture=ecs.CpuArchitecture.X86_64,
                operating_system_family=ecs.OperatingSystemFamily.LINUX,
            ),
        )
        for volume in ("home", "tmp"):
            self.task.add_volume(name=volume)
        endpoint = self.database.db_instance_endpoint_address
        port = self.database.db_instance_endpoint_port
        self.image = self._image(settings.image)
        # What every sealedkb container of the stack is configured with.
        sealedkb_env = {
            "SEALEDKB_DATABASE_URL": (
                f"postgresql://{DB_USER}@{endpoint}:{port}/{DB_NAME}?sslmode=verify-full"
            ),
            "SEALEDKB_DATABASE_SSLROOTCERT": RDS_CA_BUNDLE,
            "SEALEDKB_KMS_KEY_URI": f"aws-kms:{self.envelope_key.key_arn}",
            "SEALEDKB_AWS_MAC_KEY_ID": self.mac_key.key_arn,
            "SEALEDKB_AWS_REGION": region,
        }
        password = ecs.Secret.from_secrets_manager(self.database.secret, "password")
        app = self.task.add_container(
            "sealedkb",
            image=self.image,
            essential=True,
            user="10001:10001",
            readonly_root_filesystem=True,
            # TLS from the ALB to the task too: the entry point makes a certificate
            # in /tmp at start (the ALB does not check it; nothing else can connect).
            command=[
                "serve",
                "--transport",
                "http",
                "--host",
                "0.0.0.0",
                "--port",
                str(APP_PORT),
                "--tls-cert",
                "/tmp/tls/cert.pem",
                "--tls-key",
                "/tmp/tls/key.pem",
            ],
            environment={
                **sealedkb_env,
                "SEALEDKB_METRICS_BIND": f"127.0.0.1:{METRICS_PORT}",
                "SEALEDKB_SNAPSHOT_WINDOW": "off",
                "SEALEDKB_TLS_SELF_SIGNED_DIR": "/tmp/tls",
                "SEALEDKB_HEALTH_URL": f"https://localhost:{APP_PORT}/healthz",
                "SEALEDKB_HEALTH_CA": "/tmp/tls/cert.pem",
                "SEALEDKB_LOG_LEVEL": "INFO",
            },
            secrets={"PGPASSWORD": password},
            port_mappings=[ecs.PortMapping(container_port=APP_PORT)],
            health_check=ecs.HealthCheck(
                command=["CMD", "python", "/usr/local/lib/sealedkb-healthcheck.py"],
                interval=Duration.seconds(15),
                timeout=Duration.seconds(5),
                retries=3,
                start_period=Duration.seconds(60),
            ),
            logging=ecs.LogDrivers.aws_logs(stream_prefix="sealedkb", log_group=app_logs),
        )
        app.add_mount_points(
            ecs.MountPoint(
                container_path="/var/lib/sealedkb", source_volume="home", read_only=False
            ),
            ecs.MountPoint(container_path="/tmp", source_volume="tmp", read_only=False),
        )
        self._add_metrics_agent(app_logs)

        self.db_security_group.add_ingress_rule(
            self.app_security_group, ec2.Port.tcp(5432), "PostgreSQL from sealedkb"
        )
        self.service = ecs.FargateService(
            self,
            "Service",
            cluster=self.cluster,
            task_definition=self.task,
            desired_count=settings.replicas,
            min_healthy_percent=100,
            max_healthy_percent=200,
            security_groups=[self.app_security_group],
            vpc_subnets=ec2.SubnetSelection(subnet_group_name="app"),
            circuit_breaker=ecs.DeploymentCircuitBreaker(rollback=True),
            enable_execute_command=False,
        )

        alb_security_group = ec2.SecurityGroup(
            self,
            "AlbSecurityGroup",
            vpc=self.vpc,
            allow_all_outbound=False,
            description="sealedkb load balancer: HTTPS from the allowed network",
        )
        alb_security_group.add_ingress_rule(
            ec2.Peer.ipv4(settings.allowed_cidr), ec2.Port.tcp(443), "HTTPS (MCP)"
        )
        alb_security_group.add_egress_rule(
            self.app_security_group, ec2.Port.tcp(APP_PORT), "to sealedkb"
        )
        self.app_security_group.add_ingress_rule(
            alb_security_group, ec2.Port.tcp(APP_PORT), "MCP from the load balancer"
        )
        self.alb = elbv2.ApplicationLoadBalancer(
            self,
            "LoadBalancer",
            vpc=self.vpc,
            internet_facing=True,
            security_group=alb_security_group,
            drop_invalid_header_fields=True,
            vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PUBLIC),
        )
        self.alb.log_access_logs(access_logs, prefix="alb")
        listener = self.alb.add_listener(
            "Https",
            port=443,
            protocol=elbv2.ApplicationProtocol.HTTPS,
            certificates=[
                acm.Certificate.from_certificate_arn(self, "Certificate", settings.certificate_arn)
            ],
            ssl_policy=elbv2.SslPolicy.RECOMMENDED_TLS,
            open=False,
        )
        listener.add_targets(
            "Sealedkb",
            port=APP_PORT,
            protocol=elbv2.ApplicationProtocol.HTTPS,
            targets=[self.service],
            health_check=elbv2.HealthCheck(
                path="/readyz",
                protocol=elbv2.Protocol.HTTPS,
                healthy_http_codes="200",
                interval=Duration.seconds(15),
            ),
            deregistration_delay=Duration.seconds(30),
        )

        self._add_snapshot_schedule(sealedkb_env, password, app_logs)
        self._add_alarms(trail_logs, alarm_action)

    def _image(self, uri: str) -> ecs.ContainerImage:
        """An ECR image is pulled with the execution role (granted here, that
        repository only); any other reference as a public registry image."""
        found = ECR_IMAGE.match(uri)
        if found is None:
            return ecs.ContainerImage.from_registry(uri)
        name = found["name"]
        repository = ecr.Repository.from_repository_attributes(
            self,
            "ImageRepository",
            repository_arn=(
                f"arn:{Stack.of(self).partition}:ecr:{found['region']}:{found['account']}:"
                f"repository/{name}"
            ),
            repository_name=name,
        )
        return ecs.ContainerImage.from_ecr_repository(repository, found["tag"])

    # --- snapshots -----------------------------------------------------------------

    def _add_snapshot_schedule(
        self, sealedkb_env: dict[str, str], password: ecs.Secret, log_group: logs.LogGroup
    ) -> None:
        """Daily at 03:00 UTC, a one-off task takes a sealedkb snapshot and copies it,
        with the audit checkpoints, to the Object Lock bucket (the service's replicas
        take none: SEALEDKB_SNAPSHOT_WINDOW=off)."""
        task = ecs.FargateTaskDefinition(
            self,
            "SnapshotTask",
            cpu=512,
            memory_limit_mib=2048,
            task_role=self.task_role,
            execution_role=self.execution_role,
        )
        for volume in ("home", "tmp"):
            task.add_volume(name=volume)
        mounts = (
            ecs.MountPoint(
                container_path="/var/lib/sealedkb", source_volume="home", read_only=False
            ),
            ecs.MountPoint(container_path="/tmp", source_volume="tmp", read_only=False),
        )
        snapshot = task.add_container(
            "snapshot",
            image=self.image,
            essential=False,
            user="10001:10001",
            readonly_root_filesystem=True,
            command=["snapshot", "create", "--name", "scheduled"],
            environment={**sealedkb_env, "SEALEDKB_LOG_LEVEL": "INFO"},
            secrets={"PGPASSWORD": password},
            logging=ecs.LogDrivers.aws_logs(stream_prefix="snapshot", log_group=log_group),
        )
        snapshot.add_mount_points(*mounts)
        bucket = self.snapshots.bucket_name
        ship = task.add_container(
            "ship",
            image=ecs.ContainerImage.from_registry(AWS_CLI_IMAGE),
            essential=True,
            user="10001:10001",
            readonly_root_filesystem=True,
            entry_point=["/bin/sh", "-c"],
            command=[
                f"aws s3 cp --recursive --no-progress /var/lib/sealedkb/snapshots "
                f"s3://{bucket}/snapshots/ && "
                f"aws s3 cp --recursive --no-progress /var/lib/sealedkb/audit "
                f"s3://{bucket}/checkpoints/"
            ],
            environment={"HOME": "/tmp", "AWS_REGION": Stack.of(self).region},
            logging=ecs.LogDrivers.aws_logs(stream_prefix="ship", log_group=log_group),
        )
        ship.add_mount_points(*mounts)
        ship.add_container_dependencies(
            ecs.ContainerDependency(
                container=snapshot, condition=ecs.ContainerDependencyCondition.SUCCESS
            )
        )
        events.Rule(
            self,
            "SnapshotSchedule",
            description="sealedkb: the daily snapshot to the Object Lock bucket",
            schedule=events.Schedule.cron(minute="0", hour="3"),
            targets=[
                targets.EcsTask(
                    cluster=self.cluster,
                    task_definition=task,
                    subnet_selection=ec2.SubnetSelection(subnet_group_name="app"),
                    security_groups=[self.app_security_group],
                    platform_version=ecs.FargatePlatformVersion.LATEST,
                )
            ],
        )

    # --- metrics -------------------------------------------------------------------

    def _add_metrics_agent(self, log_group: logs.LogGroup) -> None:
        """A CloudWatch agent beside sealedkb scrapes its metrics-only listener
        (127.0.0.1, the task's own network namespace) and writes the encryption-health
        series as CloudWatch metrics (namespace ``sealedkb``), one per cluster."""
        prometheus = {
            "global": {"scrape_interval": "30s", "scrape_timeout": "10s"},
            "scrape_configs": [
                {
                    "job_name": "sealedkb",
                    "static_configs": [{"targets": [f"127.0.0.1:{METRICS_PORT}"]}],
                }
            ],
        }
        agent = {
            "logs": {
                "metrics_collected": {
                    "prometheus": {
                        "prometheus_config_path": "env:PROMETHEUS_CONFIG_CONTENT",
                        "log_group_name": log_group.log_group_name,
                        "emf_processor": {
                            "metric_namespace": METRICS_NAMESPACE,
                            "metric_declaration": [
                                {
                                    "source_labels": ["job"],
                                    "label_matcher": "^sealedkb$",
                                    "dimensions": [["job"]],
                                    "metric_selectors": [
                                        f"^{name}$" for name in HEALTH_METRICS.values()
                                    ],
                                }
                            ],
                        },
                    }
                }
            }
        }
        self.task.add_container(
            "metrics-agent",
            image=ecs.ContainerImage.from_registry(CLOUDWATCH_AGENT_IMAGE),
            essential=False,
            readonly_root_filesystem=False,
            memory_reservation_mib=128,
            environment={
                "PROMETHEUS_CONFIG_CONTENT": json.dumps(prometheus),
                "CW_CONFIG_CONTENT": json.dumps(agent),
            },
            logging=ecs.LogDrivers.aws_logs(stream_prefix="metrics-agent", log_group=log_group),
        )
        log_group.grant_write(self.task_role)

    def _add_alarms(self, trail_logs: logs.LogGroup, action: cw_actions.SnsAction) -> None:
        def alarm(
            name: str,
            description: str,
            metric: cloudwatch.IMetric,
            threshold: float,
            comparison_operator: cloudwatch.ComparisonOperator,
            evaluation_periods: int,
            treat_missing_data: cloudwatch.TreatMissingData = (
                cloudwatch.TreatMissingData.NOT_BREACHING
            ),
        ) -> cloudwatch.Alarm:
            made = cloudwatch.Alarm(
                self,
                name,
                alarm_description=description,
                metric=metric,
                threshold=threshold,
                comparison_operator=comparison_operator,
                evaluation_periods=evaluation_periods,
                treat_missing_data=treat_missing_data,
            )
            made.add_alarm_action(action)
            return made

        # KMS key-access failures: any KMS call of this account that AWS refused.
        failures = logs.MetricFilter(
            self,
            "KmsFailuresFilter",
            log_group=trail_logs,
            metric_namespace=METRICS_NAMESPACE,
            metric_name="KmsKeyAccessFailures",
            filter_pattern=logs.FilterPattern.literal(
                '{ ($.eventSource = "kms.amazonaws.com") && ('
                + " || ".join(f'($.errorCode = "{code}")' for code in KMS_FAILURE_CODES)
                + ") }"
            ),
            metric_value="1",
            default_value=0,
        )
        alarm(
            "KmsKeyAccessFailuresAlarm",
            "KMS refused a call of this account (AccessDenied, disabled or pending-deletion "
            "key, bad ciphertext): docs/AWS-DEPLOYMENT.md §8",
            metric=failures.metric(statistic="Sum", period=Duration.minutes(1)),
            threshold=0,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluation_periods=1,
        )
        # KMS call volume: more than 200 % of the measured baseline, and an anomaly band.
        calls = logs.MetricFilter(
            self,
            "KmsCallsFilter",
            log_group=trail_logs,
            metric_namespace=METRICS_NAMESPACE,
            metric_name="KmsCalls",
            filter_pattern=logs.FilterPattern.literal(
                '{ ($.eventSource = "kms.amazonaws.com") && '
                f'($.resources[0].ARN = "{self.envelope_key.key_arn}") }}'
            ),
            metric_value="1",
            default_value=0,
        )
        calls_metric = calls.metric(statistic="Sum", period=Duration.minutes(5))
        alarm(
            "KmsCallVolumeAlarm",
            "KMS calls on the envelope key above 200 % of the baseline "
            "(kmsCallBaseline per 5 minutes): bulk decryption? docs/AWS-DEPLOYMENT.md §8",
            metric=cloudwatch.MathExpression(
                expression=f"100 * calls / {self.settings.kms_call_baseline}",
                using_metrics={"calls": calls_metric},
                period=Duration.minutes(5),
                label="KMS calls, % of baseline",
            ),
            threshold=200,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluation_periods=1,
        )
        anomaly = cloudwatch.CfnAlarm(
            self,
            "KmsCallAnomalyAlarm",
            alarm_description=(
                "KMS calls on the envelope key above their learned band (anomaly detection)"
            ),
            comparison_operator="GreaterThanUpperThreshold",
            evaluation_periods=2,
            threshold_metric_id="band",
            treat_missing_data="notBreaching",
            alarm_actions=[self.topic.topic_arn],
            metrics=[
                cloudwatch.CfnAlarm.MetricDataQueryProperty(
                    id="calls",
                    return_data=True,
                    metric_stat=cloudwatch.CfnAlarm.MetricStatProperty(
                        metric=cloudwatch.CfnAlarm.MetricProperty(
                            namespace=METRICS_NAMESPACE, metric_name="KmsCalls"
                        ),
                        period=300,
                        stat="Sum",
                    ),
                ),
                cloudwatch.CfnAlarm.MetricDataQueryProperty(
                    id="band", expression="ANOMALY_DETECTION_BAND(calls, 3)", return_data=True
                ),
            ],
        )
        anomaly.node.add_dependency(calls)

        # RDS lost its KMS key: the inaccessible-encryption-credentials state.
        rule = events.Rule(
            self,
            "RdsKeyInaccessibleRule",
            description="RDS cannot use its KMS key (inaccessible-encryption-credentials)",
            event_pattern=events.EventPattern(
                source=["aws.rds"],
                detail_type=["RDS DB Instance Event"],
                detail={
                    "SourceIdentifier": [DB_INSTANCE_ID],
                    "Message": [
                        {"wildcard": "*inaccessible-encryption-credentials*"},
                        {"wildcard": "*inaccessible encryption credentials*"},
                    ],
                },
            ),
            targets=[targets.SnsTopic(self.topic)],
        )
        alarm(
            "RdsKeyInaccessibleAlarm",
            "RDS reported inaccessible encryption credentials: re-enable the DatabaseKey "
            "within 7 days, docs/AWS-DEPLOYMENT.md §8",
            metric=cloudwatch.Metric(
                namespace="AWS/Events",
                metric_name="TriggeredRules",
                dimensions_map={"RuleName": rule.rule_name},
                statistic="Sum",
                period=Duration.minutes(1),
            ),
            threshold=0,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluation_periods=1,
        )

        # sealedkb's own encryption-health metrics (from the metrics agent).
        def health(name: str, statistic: str) -> cloudwatch.Metric:
            return cloudwatch.Metric(
                namespace=METRICS_NAMESPACE,
                metric_name=HEALTH_METRICS[name],
                dimensions_map={"job": "sealedkb"},
                statistic=statistic,
                period=Duration.minutes(1),
            )

        alarm(
            "SealedkbKeyProviderFailuresAlarm",
            "sealedkb: key-provider calls failed (alerts.yml SealedkbKeyAccessFailures)",
            metric=health("key_provider_failures", "Maximum"),
            threshold=0,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluation_periods=1,
        )
        alarm(
            "SealedkbUnavailableAlarm",
            "sealedkb: data keys cannot be unwrapped, the knowledge base is locked "
            "(alerts.yml SealedkbEncryptionCredentialsInaccessible)",
            metric=health("available", "Minimum"),
            threshold=1,
            comparison_operator=cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD,
            evaluation_periods=2,
            treat_missing_data=cloudwatch.TreatMissingData.BREACHING,
        )
        alarm(
            "SealedkbIntegrityFailuresAlarm",
            "sealedkb: rows failed authentication (alerts.yml SealedkbIntegrityFailures)",
            metric=health("integrity_failures", "Maximum"),
            threshold=0,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluation_periods=1,
        )
        alarm(
            "SealedkbAuditChainAlarm",
            "sealedkb: the audit chain does not verify (alerts.yml SealedkbAuditChainBroken)",
            metric=health("audit_chain_ok", "Minimum"),
            threshold=1,
            comparison_operator=cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD,
            evaluation_periods=1,
        )


# KMS errors that mean a key could not be used (CloudTrail errorCode values).
KMS_FAILURE_CODES = (
    "AccessDenied*",
    "*Disabled*",
    "KMSInvalidStateException",
    "NotFoundException",
    "InvalidCiphertextException",
    "IncorrectKeyException",
)

# sealedkb's Prometheus series (monitoring/metrics.py) that become CloudWatch metrics.
HEALTH_METRICS = {
    "key_provider_failures": "sealedkb_key_provider_failures_total",
    "available": "sealedkb_available",
    "integrity_failures": "sealedkb_integrity_failures_total",
    "audit_chain_ok": "sealedkb_audit_chain_ok",
    "checkpoint_lag": "sealedkb_audit_checkpoint_lag_seconds",
}
