"""Buckets, the audit table, the notification topic and the key that encrypts them."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct


class Storage(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, notification_email: str | None) -> None:
        super().__init__(scope, construct_id)
        self.key = kms.Key(
            self,
            "Key",
            description="refit: encrypts data, artifacts, the audit table and run summaries",
            enable_key_rotation=True,
            removal_policy=RemovalPolicy.RETAIN,
        )
        self.access_logs = s3.Bucket(
            self,
            "AccessLogs",
            encryption=s3.BucketEncryption.S3_MANAGED,  # S3 server access logging cannot deliver to SSE-KMS buckets
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            versioned=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_PREFERRED,
            lifecycle_rules=[s3.LifecycleRule(expiration=Duration.days(365))],
            removal_policy=RemovalPolicy.RETAIN,
        )
        common = {
            "encryption": s3.BucketEncryption.KMS,
            "encryption_key": self.key,
            "bucket_key_enabled": True,
            "block_public_access": s3.BlockPublicAccess.BLOCK_ALL,
            "enforce_ssl": True,
            "versioned": True,
            "server_access_logs_bucket": self.access_logs,
            "removal_policy": RemovalPolicy.RETAIN,
        }
        self.data_bucket = s3.Bucket(
            self,
            "Data",
            event_bridge_enabled=True,
            server_access_logs_prefix="data/",
            # Captured traffic outlives the longest monitor window (90 days); gathered feedback parts are deleted
            # by the run that takes them, and their old versions go after 30 days.
            lifecycle_rules=[
                s3.LifecycleRule(prefix="capture/", expiration=Duration.days(120)),
                s3.LifecycleRule(prefix="feedback/", noncurrent_version_expiration=Duration.days(30)),
            ],
            **common,
        )
        self.artifact_bucket = s3.Bucket(
            self,
            "Artifacts",
            server_access_logs_prefix="artifacts/",
            lifecycle_rules=[
                s3.LifecycleRule(prefix="checkpoints/", expiration=Duration.days(30)),
                # Pinned copies of what each training job read (refit_core.window); lineage names the source versions.
                s3.LifecycleRule(prefix="job-data/", expiration=Duration.days(30)),
                # The monitor's parts of captured traffic and labels (its state and reports are rewritten or small).
                s3.LifecycleRule(prefix="monitoring/", expiration=Duration.days(120)),
                s3.LifecycleRule(noncurrent_version_expiration=Duration.days(90)),
            ],
            **common,
        )
        self.audit_table = dynamodb.Table(
            self,
            "Audit",
            partition_key=dynamodb.Attribute(name="pk", type=dynamodb.AttributeType.STRING),
            sort_key=dynamodb.Attribute(name="sk", type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            encryption=dynamodb.TableEncryption.CUSTOMER_MANAGED,
            encryption_key=self.key,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            removal_policy=RemovalPolicy.RETAIN,
        )
        self.topic = sns.Topic(
            self, "RunSummaries", display_name="refit run summaries", master_key=self.key, enforce_ssl=True
        )
        # CloudWatch alarm actions publish to this topic; with a customer-managed key, SNS drops their messages unless
        # CloudWatch may use the key (the key policy; no identity policy can give a service principal this).
        self.key.grant(iam.ServicePrincipal("cloudwatch.amazonaws.com"), "kms:Decrypt", "kms:GenerateDataKey*")
        if notification_email:
            self.topic.add_subscription(subscriptions.EmailSubscription(notification_email))
