"""Buckets, the audit table, the notification topic, the dead-letter queue and the key that encrypts them."""

from __future__ import annotations

from aws_cdk import Aws, Duration, RemovalPolicy
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from aws_cdk import aws_sqs as sqs
from constructs import Construct
from refit_core.config import LOG_RETENTION_DAYS, RetentionSettings

# What a principal needs of the project key to use refit's encrypted stores (S3 SSE-KMS, the audit table, the topic):
# reading an object or an item decrypts its data key; writing an object, or publishing, generates one.
KEY_READ = ("kms:Decrypt", "kms:DescribeKey")
KEY_WRITE = ("kms:GenerateDataKey",)
# CDK's RetentionDays lists CloudWatch's periods in the same order (then INFINITE); a test checks the template.
RETENTION_DAYS = dict(zip(LOG_RETENTION_DAYS, logs.RetentionDays, strict=False))


def _days(days: int | None) -> Duration | None:
    return None if days is None else Duration.days(days)


class Storage(Construct):
    def __init__(
        self, scope: Construct, construct_id: str, *, notification_email: str | None, retention: RetentionSettings
    ) -> None:
        super().__init__(scope, construct_id)
        self.retention = retention
        self.key = kms.Key(
            self,
            "Key",
            description="refit: encrypts data, artifacts, the audit table, run summaries, logs and dead letters",
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
            # ACLs off: S3's log delivery writes by bucket policy (cdk.json: serverAccessLogsUseBucketPolicy), not by
            # the legacy LogDeliveryWrite ACL (cfn-lint W3045).
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
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
        # Lifecycle (refit.toml [retention]): captured traffic outlives the longest monitor window (90 days); gathered
        # feedback parts are deleted by the run that takes them, and their old versions go after a while. The
        # training history, validation and baseline prefixes have no rule: lineage names their versions.
        data_rules = [
            s3.LifecycleRule(
                prefix="incoming/",
                expiration=_days(retention.incoming_days),
                noncurrent_version_expiration=_days(retention.incoming_noncurrent_days),
            ),
            s3.LifecycleRule(prefix="capture/", expiration=_days(retention.capture_days)),
            s3.LifecycleRule(
                prefix="feedback/", noncurrent_version_expiration=_days(retention.feedback_noncurrent_days)
            ),
        ]
        self.data_bucket = s3.Bucket(
            self,
            "Data",
            server_access_logs_prefix="data/",
            lifecycle_rules=[r for r in data_rules if r.expiration or r.noncurrent_version_expiration],
            **common,
        )
        # S3 -> EventBridge delivery (the new-data trigger) set on the bucket itself: CDK's `event_bridge_enabled`
        # would set it through a custom resource, a CDK-owned Lambda whose log group has no retention and no key.
        self.data_bucket.node.default_child.notification_configuration = s3.CfnBucket.NotificationConfigurationProperty(
            event_bridge_configuration=s3.CfnBucket.EventBridgeConfigurationProperty(event_bridge_enabled=True)
        )
        artifact_rules = [
            s3.LifecycleRule(prefix="checkpoints/", expiration=_days(retention.checkpoint_days)),
            # Pinned copies of what each training job read (refit_core.window); lineage names the source versions.
            s3.LifecycleRule(prefix="job-data/", expiration=_days(retention.job_data_days)),
            # The monitor's parts of captured traffic and labels (its state and reports are rewritten or small).
            s3.LifecycleRule(prefix="monitoring/", expiration=_days(retention.monitoring_days)),
            s3.LifecycleRule(noncurrent_version_expiration=_days(retention.artifact_noncurrent_days)),
        ]
        self.artifact_bucket = s3.Bucket(
            self,
            "Artifacts",
            server_access_logs_prefix="artifacts/",
            lifecycle_rules=[r for r in artifact_rules if r.expiration or r.noncurrent_version_expiration],
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
            deletion_protection=True,
            removal_policy=RemovalPolicy.RETAIN,
        )
        self.topic = sns.Topic(
            self, "RunSummaries", display_name="refit run summaries", master_key=self.key, enforce_ssl=True
        )
        # CloudWatch alarm actions publish to this topic; with a customer-managed key, SNS drops their messages unless
        # CloudWatch may use the key (the key policy; no identity policy can give a service principal this).
        self.key.grant(iam.ServicePrincipal("cloudwatch.amazonaws.com"), "kms:Decrypt", "kms:GenerateDataKey*")
        # CloudWatch Logs encrypts refit's log groups with the key: only for log groups of this account and region
        # (the encryption context CloudWatch Logs sends names the log group).
        self.key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="CloudWatchLogsEncryptsRefitLogGroups",
                principals=[iam.ServicePrincipal(f"logs.{Aws.REGION}.amazonaws.com")],
                actions=["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"],
                resources=["*"],
                conditions={
                    "ArnLike": {
                        "kms:EncryptionContext:aws:logs:arn": (
                            f"arn:{Aws.PARTITION}:logs:{Aws.REGION}:{Aws.ACCOUNT_ID}:log-group:*"
                        )
                    }
                },
            )
        )
        # Events an EventBridge target could not take after its retries land here, encrypted with the key; EventBridge
        # needs the key to send them (key policy, this account's rules only).
        self.dead_letters = sqs.Queue(
            self,
            "DeadLetters",
            encryption=sqs.QueueEncryption.KMS,
            encryption_master_key=self.key,
            enforce_ssl=True,
            retention_period=Duration.days(14),
            removal_policy=RemovalPolicy.RETAIN,
        )
        self.key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="EventBridgeSendsDeadLetters",
                principals=[iam.ServicePrincipal("events.amazonaws.com")],
                actions=["kms:Decrypt", "kms:GenerateDataKey"],
                resources=["*"],
                conditions={"StringEquals": {"aws:SourceAccount": Aws.ACCOUNT_ID}},
            )
        )
        self.dead_letter_alarm = cloudwatch.Alarm(
            self,
            "DeadLettersVisible",
            alarm_description="refit: an EventBridge trigger could not deliver an event (a new batch, a schedule, an "
            "alarm or a run's end); the message in the dead-letter queue names it",
            metric=self.dead_letters.metric_approximate_number_of_messages_visible(
                period=Duration.minutes(5), statistic="Maximum"
            ),
            threshold=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            evaluation_periods=1,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        self.dead_letter_alarm.add_alarm_action(cloudwatch_actions.SnsAction(self.topic))
        if notification_email:
            self.topic.add_subscription(subscriptions.EmailSubscription(notification_email))

    def log_group(self, scope: Construct, construct_id: str, name: str | None = None) -> logs.LogGroup:
        """A log group kept after the stack (RETAIN), encrypted with the project key, for `retention.log_days`;
        `name` for one a service writes under a name of its own (SageMaker's endpoint logs)."""
        return logs.LogGroup(
            scope,
            construct_id,
            log_group_name=name,
            encryption_key=self.key,
            retention=RETENTION_DAYS[self.retention.log_days],
            removal_policy=RemovalPolicy.RETAIN,
        )

    def grant_key(self, grantee: iam.IGrantable, *, write: bool) -> None:
        """The key for a principal that reads refit's encrypted stores, and with `write` also writes objects or
        publishes (KEY_READ, KEY_WRITE). Only principals that touch an encrypted store get it."""
        self.key.grant(grantee, *KEY_READ, *(KEY_WRITE if write else ()))

    def grant_audit(self, partition: str | list[str], grantee: iam.IGrantable, *actions: str) -> None:
        """Item `actions` on the audit table, only on items whose partition key (`pk`) is `partition` (or one of a
        list): a model's runs, ledger and lock are keyed by the model's name, its pending approvals by
        `approval#<model>` (refit_core.approvals.approval_partition)."""
        keys = [partition] if isinstance(partition, str) else list(partition)
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(
                actions=list(actions),
                resources=[self.audit_table.table_arn],
                conditions={"ForAllValues:StringEquals": {"dynamodb:LeadingKeys": keys}},
            )
        )


def deny_listing_outside(grantee: iam.IGrantable, bucket: s3.IBucket, patterns: list[str]) -> None:
    """Limit a grantee's listing of `bucket` to the key `patterns` it reads. CDK's read grant allows `s3:List*` on the
    whole bucket; a listing request carries `s3:prefix`, while a read of a missing object also checks s3:ListBucket
    without the key (S3 then answers 404, not 403), so the deny applies only when `s3:prefix` is present."""
    grantee.grant_principal.add_to_principal_policy(
        iam.PolicyStatement(
            effect=iam.Effect.DENY,
            actions=["s3:ListBucket", "s3:ListBucketVersions", "s3:ListBucketMultipartUploads"],
            resources=[bucket.bucket_arn],
            conditions={"Null": {"s3:prefix": "false"}, "StringNotLike": {"s3:prefix": sorted(set(patterns))}},
        )
    )
