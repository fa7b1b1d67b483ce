"""The Lambdas of one model's retrain loop: one image, one handler each, a least-privilege role each."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aws_cdk import Duration, Size, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_s3 as s3
from constructs import Construct
from refit_core import capacity, names
from refit_core.approvals import SEPARATION_OF_DUTIES_ENV, approval_partition
from refit_core.config import AB_JUDGE_SECONDS, MlflowSettings, ModelConfig
from refit_core.metric_names import MONITOR_NAMESPACE
from refit_core.mlflow_sync import CREDENTIALS_SECRET_ENV
from refit_core.network import VPC_CONFIG_ENV

from stacks.network import SageMakerNetwork
from stacks.sagemaker_access import ModelExecutionRole, SageMakerAccess
from stacks.storage import Storage, deny_listing_outside

FUNCTIONS_DIR = Path(__file__).resolve().parent.parent / "functions"


@dataclass(frozen=True)
class FunctionSpec:
    handler: str
    memory_mb: int
    timeout_seconds: int
    ephemeral_mb: int = 512


# The batch check streams CSV from S3 but spools each Parquet object to /tmp (Parquet needs random access): its
# ephemeral storage, not its memory, bounds the size of one Parquet object.


SPECS = {
    # An alarm run's Prepare gathers the pending feedback parts into one batch (refit_core.monitor.take_feedback).
    "Prepare": FunctionSpec("refit_handlers.prepare.handler", 1024, 300),
    "CheckBatch": FunctionSpec("refit_handlers.check_batch.handler", 3008, 900, ephemeral_mb=10240),
    # StartTraining reads the header of every object in the training window and copies each chosen version
    # server-side (CopyObject up to 5 GiB, larger part by part): a long history takes minutes, not seconds.
    "StartTraining": FunctionSpec("refit_handlers.training.start_handler", 512, 900),
    "PollTraining": FunctionSpec("refit_handlers.training.poll_handler", 512, 60),
    "Gate": FunctionSpec("refit_handlers.gate.gate_handler", 2048, 600),
    "Register": FunctionSpec("refit_handlers.gate.register_handler", 512, 60),
    "Deploy": FunctionSpec("refit_handlers.deploy.handler", 512, 120),
    "Finalize": FunctionSpec("refit_handlers.finalize.handler", 512, 120),
    "RequestApproval": FunctionSpec("refit_handlers.approval.request_handler", 256, 60),
    "ExpireApproval": FunctionSpec("refit_handlers.approval.expire_handler", 256, 60),
    "Cleanup": FunctionSpec("refit_handlers.cleanup.handler", 512, 300),
    # Not a step of the run: the monitor schedule runs it (stacks/monitoring.py). It streams one capture file at a
    # time but holds the window's labels and (label, score) pairs, and may read a week of capture files.
    "Monitor": FunctionSpec("refit_handlers.monitor.handler", 3008, 900, ephemeral_mb=2048),
}


# Who uses the project key: writers put S3 objects or publish to the topic (and read); readers only read objects or
# use the audit table. Every other function gets no KMS permission.
KEY_WRITERS = (
    "Prepare",
    "CheckBatch",
    "StartTraining",
    "Gate",
    "Register",
    "Finalize",
    "RequestApproval",
    "Cleanup",
    "Monitor",
)
KEY_READERS = ("ExpireApproval", "PickCandidate", "MlflowSync", "Deploy", "Approve")
# `approval = "manual"` only: not a step of the run. Decisions reach it through its function URL (AuthType AWS_IAM),
# which gives it the caller's identity as AWS verified the request's signature; it applies the rules, records the
# decider and sends the task result itself (refit_core.approvals.answer_decision_request).
APPROVE_SPEC = FunctionSpec("refit_handlers.approval.decide_handler", 256, 30)
# After Finalize, when `[mlflow]` is configured. A request that never answers costs 3 attempts of timeout_seconds (at
# most 60) plus 3 s of backoff before the error is recorded: 300 s leaves that first failing call room to be recorded.
MLFLOW_SPEC = FunctionSpec("refit_handlers.mlflow_sync.handler", 512, 300)
MLFLOW_RETRIES = 2
# The MLflow REST operations refit_core.mlflow_sync makes, as IAM actions of a SageMaker managed tracking server
# (Service Authorization Reference, prefix sagemaker-mlflow; resource type mlflow-tracking-server).
MLFLOW_ACTIONS = tuple(
    f"sagemaker-mlflow:{operation}"
    for operation in (
        "GetExperimentByName",
        "CreateExperiment",
        "SearchRuns",
        "CreateRun",
        "GetRun",
        "LogBatch",
        "UpdateRun",
        "GetRegisteredModel",
        "CreateRegisteredModel",
        "SearchModelVersions",
        "CreateModelVersion",
        "GetModelVersionByAlias",
        "SetRegisteredModelAlias",
        "DeleteRegisteredModelAlias",
    )
)


class RetrainFunctions(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        model: ModelConfig,
        storage: Storage,
        sagemaker: SageMakerAccess,
        execution_role: ModelExecutionRole,
        network: SageMakerNetwork,
        endpoint_name: str,
        package_group_name: str,
        canary_alarm_name: str,
        quality_alarm_name: str,
        state_machine_name: str,
        instance_prices: dict[str, float],
        code_version: str,
        serving_prices: dict[str, float] | None = None,
        mlflow: MlflowSettings | None = None,
        project: str = "refit",
        separation_of_duties: bool = False,
    ) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        arn = f"arn:{stack.partition}:sagemaker:{stack.region}:{stack.account}"
        # Built from the name, not read from the state machine (which depends on these functions): no cycle.
        state_machine_arn = (
            f"arn:{stack.partition}:states:{stack.region}:{stack.account}:stateMachine:{state_machine_name}"
        )
        environment = {
            "REFIT_MODEL_CONFIG": model.to_json(),
            "REFIT_DATA_BUCKET": storage.data_bucket.bucket_name,
            "REFIT_ARTIFACT_BUCKET": storage.artifact_bucket.bucket_name,
            "REFIT_AUDIT_TABLE": storage.audit_table.table_name,
            "REFIT_TOPIC_ARN": storage.topic.topic_arn,
            "REFIT_ENDPOINT_NAME": endpoint_name,
            "REFIT_MODEL_PACKAGE_GROUP": package_group_name,
            "REFIT_SAGEMAKER_ROLE_ARN": execution_role.role.role_arn,
            "REFIT_IMAGE_URI": sagemaker.image.image_uri,
            "REFIT_CANARY_ALARM": canary_alarm_name,
            "REFIT_QUALITY_ALARM": quality_alarm_name if model.quality_alarm else "",
            "REFIT_INSTANCE_PRICES": json.dumps(instance_prices, sort_keys=True),
            "REFIT_SERVING_PRICES": json.dumps(serving_prices or {}, sort_keys=True),
            "REFIT_CODE_VERSION": code_version,
            "REFIT_STATE_MACHINE_ARN": state_machine_arn,
            "REFIT_KMS_KEY_ARN": storage.key.key_arn,
            VPC_CONFIG_ENV: network.environment(),
            "POWERTOOLS_METRICS_NAMESPACE": "Refit",
            "POWERTOOLS_LOG_LEVEL": "INFO",
        }
        self.model = model
        self.functions: dict[str, lambda_.Function] = {}
        specs = dict(SPECS)
        if model.search.parallel_jobs:
            specs["PickCandidate"] = FunctionSpec("refit_handlers.training.pick_handler", 512, 120)
        if model.deploy.mode == "ab":
            # The A/B decision reads the test's captured and labelled parts, as the monitor reads its window.
            specs["JudgeAb"] = FunctionSpec("refit_handlers.ab_test.handler", 3008, AB_JUDGE_SECONDS, ephemeral_mb=2048)
        extra_environment: dict[str, dict[str, str]] = {}
        if model.approval == "manual":
            specs["Approve"] = APPROVE_SPEC
            extra_environment["Approve"] = {SEPARATION_OF_DUTIES_ENV: "true" if separation_of_duties else "false"}
        if mlflow is not None:
            specs["MlflowSync"] = MLFLOW_SPEC
            experiment, registered_model = mlflow.names(project, model.name)
            extra_environment["MlflowSync"] = {
                "REFIT_MLFLOW_TRACKING_URI": mlflow.tracking_uri,
                "REFIT_MLFLOW_EXPERIMENT": experiment,
                "REFIT_MLFLOW_REGISTERED_MODEL": registered_model,
                "MLFLOW_HTTP_REQUEST_TIMEOUT": str(mlflow.timeout_seconds),
                "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(MLFLOW_RETRIES),
                "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                "HOME": "/tmp",  # the Lambda file system is read-only outside /tmp
            }
        for name, spec in specs.items():
            log_group = storage.log_group(self, f"{name}Logs")
            role = iam.Role(self, f"{name}Role", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"))
            log_group.grant_write(role)
            self.functions[name] = lambda_.DockerImageFunction(
                self,
                name,
                code=lambda_.DockerImageCode.from_image_asset(
                    str(FUNCTIONS_DIR), cmd=[spec.handler], exclude=["**/__pycache__", "**/*.pyc"]
                ),
                role=role,
                memory_size=spec.memory_mb,
                ephemeral_storage_size=Size.mebibytes(spec.ephemeral_mb),
                timeout=Duration.seconds(spec.timeout_seconds),
                architecture=lambda_.Architecture.X86_64,
                tracing=lambda_.Tracing.ACTIVE,
                log_group=log_group,
                environment={
                    **environment,
                    **extra_environment.get(name, {}),
                    "POWERTOOLS_SERVICE_NAME": f"refit-{model.name}-{name.lower()}",
                },
                description=f"refit {model.name}: {name}",
                # One monitor run at a time: two would both rewrite the day's labelling manifest and the state.
                reserved_concurrent_executions=1 if name == "Monitor" else None,
            )
        f = self.functions
        # What each function may read, by bucket: CDK's read grant lets it list the whole bucket (s3:List* on the
        # bucket ARN), so a deny below limits listing to these prefixes (s3:prefix).
        readable: dict[tuple[str, s3.IBucket], list[str]] = {}

        def read(bucket: s3.IBucket, function: lambda_.Function, pattern: str) -> None:
            bucket.grant_read(function, pattern)
            readable.setdefault((function.node.id, bucket), []).append(pattern)

        # The project key only for functions that touch an encrypted store (S3 objects, the audit table, the topic):
        # PollTraining calls SageMaker only; Deploy reads captured outputs for the canary (Data Capture encrypts as the
        # SageMaker role, so Deploy only decrypts).
        for name in KEY_WRITERS:
            storage.grant_key(f[name], write=True)
        for name in KEY_READERS:
            if name in f:
                storage.grant_key(f[name], write=False)

        read(storage.data_bucket, f["Prepare"], f"{model.new_data_prefix}*")
        # The lock, the batch ledger (record, list the queue, claim) and the run records a scheduled run reads.
        storage.grant_audit(
            model.name,
            f["Prepare"],
            "dynamodb:PutItem",
            "dynamodb:GetItem",
            "dynamodb:Query",
            "dynamodb:UpdateItem",
            "dynamodb:DeleteItem",  # an alarm run that takes the lock clears the alarm request waiting for it
        )

        # An alarm run's batch: the pending feedback parts, gathered into one object under feedback/<model>/batches/.
        read(storage.data_bucket, f["Prepare"], f"{model.feedback_prefix}*")
        storage.data_bucket.grant_put(f["Prepare"], f"{model.feedback_prefix}batches/*")
        storage.data_bucket.grant_delete(f["Prepare"], f"{model.feedback_prefix}pending/*")
        read(storage.artifact_bucket, f["Prepare"], f"{model.monitoring_prefix}latest.json")

        feedback_batches = f"{model.feedback_prefix}batches/*"
        for reader in ("CheckBatch", "StartTraining", "Finalize"):
            read(storage.data_bucket, f[reader], feedback_batches)

        read(storage.data_bucket, f["CheckBatch"], f"{model.new_data_prefix}*")
        read(storage.artifact_bucket, f["CheckBatch"], f"models/{model.name}/*")
        read(storage.artifact_bucket, f["CheckBatch"], f"training/{model.name}/*")
        storage.artifact_bucket.grant_put(f["CheckBatch"], f"reports/{model.name}/*")

        # The new batch (its version and ETag go into the job's inputs manifest) and the optional channels.
        for prefix in (
            model.new_data_prefix,
            model.training_data_prefix,
            model.validation_data_prefix,
            model.baseline_data_prefix,
        ):
            read(storage.data_bucket, f["StartTraining"], f"{prefix}*")
        # Private SageMaker (stacks/network.py): a request without network isolation, the project key or the VPC is
        # denied. The condition keys are those the Service Authorization Reference lists for each action.
        key_arn = storage.key.key_arn
        f["StartTraining"].add_to_role_policy(
            iam.PolicyStatement(
                actions=["sagemaker:CreateTrainingJob"],
                resources=[f"{arn}:training-job/{names.pattern(endpoint_name)}"],
                conditions=network.conditions(
                    isolation=True,
                    vpc=True,
                    kms_keys=("sagemaker:VolumeKmsKey", "sagemaker:OutputKmsKey"),
                    key_arn=key_arn,
                ),
            )
        )
        f["StartTraining"].add_to_role_policy(
            iam.PolicyStatement(
                actions=["sagemaker:AddTags"], resources=[f"{arn}:training-job/{names.pattern(endpoint_name)}"]
            )
        )
        # StartTraining passes the model's own SageMaker role to training jobs, Deploy to models; to SageMaker only.
        pass_role = iam.PolicyStatement(
            actions=["iam:PassRole"],
            resources=[execution_role.role.role_arn],
            conditions={"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}},
        )
        f["StartTraining"].add_to_role_policy(pass_role)
        f["Deploy"].add_to_role_policy(pass_role)
        f["PollTraining"].add_to_role_policy(
            iam.PolicyStatement(
                actions=["sagemaker:DescribeTrainingJob"],
                resources=[f"{arn}:training-job/{names.pattern(endpoint_name)}"],
            )
        )
        if "PickCandidate" in f:
            read(storage.artifact_bucket, f["PickCandidate"], f"training/{model.name}/*")
        read(storage.artifact_bucket, f["Gate"], f"training/{model.name}/*")
        storage.artifact_bucket.grant_put(f["Gate"], f"reports/{model.name}/*")
        storage.artifact_bucket.grant_put(f["Gate"], f"models/{model.name}/*")
        storage.artifact_bucket.grant_put(f["StartTraining"], f"reports/{model.name}/*")
        storage.artifact_bucket.grant_put(f["StartTraining"], f"job-data/{model.name}/*")  # the pinned window
        read(storage.artifact_bucket, f["Register"], f"reports/{model.name}/*")
        storage.artifact_bucket.grant_put(f["Register"], f"models/{model.name}/*")
        # The challenger's model.tar.gz: its model file's SHA-256 goes into the registry (refit_core.artifacts).
        read(storage.artifact_bucket, f["Register"], f"training/{model.name}/*")
        storage.grant_audit(model.name, f["StartTraining"], "dynamodb:Query")
        sagemaker.image.repository.grant(f["Register"], "ecr:DescribeImages")
        storage.grant_audit(approval_partition(model.name), f["RequestApproval"], "dynamodb:PutItem")
        storage.topic.grant_publish(f["RequestApproval"])
        storage.grant_audit(approval_partition(model.name), f["ExpireApproval"], "dynamodb:DeleteItem")
        # ExpireApproval rejects an undecided package; Finalize and Cleanup reject the run's package when it does
        # not serve at the run's end (rolled back, failed, timed out).
        package_updates = iam.PolicyStatement(
            actions=["sagemaker:UpdateModelPackage"],
            resources=[f"{arn}:model-package/{package_group_name}/*"],
        )
        for updater in ("ExpireApproval", "Finalize", "Cleanup"):
            f[updater].add_to_role_policy(package_updates)
        self.approve_url: lambda_.FunctionUrl | None = None
        if "Approve" in f:
            self._grant_approve(f["Approve"], storage, model, f"{arn}:model-package/{package_group_name}/*")
        f["Register"].add_to_role_policy(
            iam.PolicyStatement(
                actions=["sagemaker:CreateModelPackage", "sagemaker:DescribeModelPackage"],
                resources=[
                    f"{arn}:model-package-group/{package_group_name}",
                    f"{arn}:model-package/{package_group_name}/*",
                ],
            )
        )
        endpoint_reads = iam.PolicyStatement(
            actions=[
                "sagemaker:DescribeEndpoint",
                "sagemaker:DescribeEndpointConfig",
                "sagemaker:DescribeModel",
                "sagemaker:DescribeModelPackage",
            ],
            resources=[
                f"{arn}:endpoint/{endpoint_name}",
                f"{arn}:endpoint-config/{names.pattern(endpoint_name)}",
                f"{arn}:model/{names.pattern(endpoint_name)}",
                f"{arn}:model-package/{package_group_name}/*",
            ],
        )
        for reader in ("CheckBatch", "Deploy", "Finalize", "Cleanup", "Monitor"):
            f[reader].add_to_role_policy(endpoint_reads)

        # The monitor: reads captures and labels, keeps its parts, state and reports, writes feedback and labelling.
        monitor = f["Monitor"]
        for prefix in (model.capture_prefix, model.ground_truth_prefix, model.labeling_prefix):
            read(storage.data_bucket, monitor, f"{prefix}*")
        storage.data_bucket.grant_put(monitor, f"{model.feedback_prefix}pending/*")
        storage.data_bucket.grant_put(monitor, f"{model.labeling_prefix}*")
        # The champion's model.tar.gz (its features and numeric columns) and its baseline profile.
        read(storage.artifact_bucket, monitor, f"training/{model.name}/*")
        read(storage.artifact_bucket, monitor, f"models/{model.name}/*")
        read(storage.artifact_bucket, monitor, f"{model.monitoring_prefix}*")
        storage.artifact_bucket.grant_put(monitor, f"{model.monitoring_prefix}*")
        if model.quality_alarm:
            # It re-arms the quality alarm while a breach persists and new feedback waits (refit_core.monitor).
            read(storage.data_bucket, monitor, f"{model.feedback_prefix}pending/*")
            monitor.add_to_role_policy(
                iam.PolicyStatement(
                    actions=["cloudwatch:DescribeAlarms", "cloudwatch:SetAlarmState"],
                    resources=[
                        f"arn:{stack.partition}:cloudwatch:{stack.region}:{stack.account}:alarm:{quality_alarm_name}"
                    ],
                )
            )
        monitor.add_to_role_policy(
            iam.PolicyStatement(
                actions=["cloudwatch:PutMetricData"],
                resources=["*"],  # PutMetricData has no resource-level permissions; narrowed by namespace
                conditions={"StringEquals": {"cloudwatch:namespace": MONITOR_NAMESPACE}},
            )
        )
        f["Deploy"].add_to_role_policy(
            iam.PolicyStatement(
                actions=["sagemaker:CreateModel"],
                resources=[f"{arn}:model/{names.pattern(endpoint_name)}"],
                conditions=network.conditions(isolation=True, vpc=True, kms_keys=(), key_arn=key_arn),
            )
        )
        # Only the storage-volume key: the endpoint config's NetworkIsolation and VPC keys are for endpoints that
        # run inference components; refit's endpoint runs the models above, which carry both.
        f["Deploy"].add_to_role_policy(
            iam.PolicyStatement(
                actions=["sagemaker:CreateEndpointConfig"],
                resources=[f"{arn}:endpoint-config/{names.pattern(endpoint_name)}"],
                conditions=network.conditions(
                    isolation=False, vpc=False, kms_keys=("sagemaker:VolumeKmsKey",), key_arn=key_arn
                ),
            )
        )
        # CreateEndpoint and UpdateEndpoint on a config with KmsKeyId need kms:CreateGrant as the caller: SageMaker
        # grants itself the key for the instances' volumes. Only through SageMaker, only for an AWS resource.
        sagemaker_grant = iam.PolicyStatement(
            actions=["kms:CreateGrant"],
            resources=[key_arn],
            conditions={
                "StringEquals": {"kms:ViaService": f"sagemaker.{stack.region}.amazonaws.com"},
                "Bool": {"kms:GrantIsForAWSResource": "true"},
            },
        )
        f["Deploy"].add_to_role_policy(sagemaker_grant)
        f["Cleanup"].add_to_role_policy(sagemaker_grant)
        f["Deploy"].add_to_role_policy(
            iam.PolicyStatement(
                actions=[
                    "sagemaker:CreateEndpoint",
                    "sagemaker:UpdateEndpoint",
                    "sagemaker:UpdateEndpointWeightsAndCapacities",
                    "sagemaker:DeleteEndpoint",
                    "sagemaker:AddTags",
                    "sagemaker:ListTags",  # a retried redeploy or promotion reads what its first attempt recorded
                ],
                resources=[
                    f"{arn}:endpoint/{endpoint_name}",
                    f"{arn}:endpoint-config/{names.pattern(endpoint_name)}",
                    f"{arn}:model/{names.pattern(endpoint_name)}",
                ],
            )
        )
        f["Deploy"].add_to_role_policy(
            iam.PolicyStatement(
                actions=["cloudwatch:DescribeAlarms"],
                resources=[
                    f"arn:{stack.partition}:cloudwatch:{stack.region}:{stack.account}:alarm:{canary_alarm_name}"
                ],
            )
        )
        f["Deploy"].add_to_role_policy(
            iam.PolicyStatement(
                # GetMetricData: the p99 rule's percentile rank PR(:X), which GetMetricStatistics does not serve
                actions=["cloudwatch:GetMetricStatistics", "cloudwatch:GetMetricData"],
                resources=["*"],  # neither has resource-level permissions
            )
        )
        # The canary's prediction divergence and the shadow's comparison: captured outputs (encrypted with the project
        # key), and the gate's holdout reference (gate.json).
        read(storage.data_bucket, f["Deploy"], f"{model.capture_prefix}*")
        read(storage.artifact_bucket, f["Deploy"], f"reports/{model.name}/*")
        if model.deploy.synthetic_traffic.enabled:
            # A quiet step's top-up (refit_core.synthetic): requests to this model's endpoint only, replaying the
            # holdout rows the Gate stored under reports/<model>/ (read above).
            f["Deploy"].add_to_role_policy(
                iam.PolicyStatement(actions=["sagemaker:InvokeEndpoint"], resources=[f"{arn}:endpoint/{endpoint_name}"])
            )
        # Capacity (refit_core.capacity): every endpoint change deregisters the endpoint's scalable targets first;
        # with autoscaling configured, the serving variant is registered again with its policy. Application Auto
        # Scaling scopes writes only by its own target ids, so the grant is on SageMaker variants by condition.
        scalable_targets = {
            "StringEquals": {
                "application-autoscaling:service-namespace": capacity.NAMESPACE,
                "application-autoscaling:scalable-dimension": capacity.DIMENSION,
            }
        }
        autoscaling_arn = f"arn:{stack.partition}:application-autoscaling:{stack.region}:{stack.account}"
        describe_targets = iam.PolicyStatement(
            actions=["application-autoscaling:DescribeScalableTargets"],
            resources=["*"],  # Describe* has no resource-level permissions
        )
        deregister_targets = iam.PolicyStatement(
            actions=["application-autoscaling:DeregisterScalableTarget"],
            resources=[f"{autoscaling_arn}:scalable-target/*"],
            conditions=scalable_targets,
        )
        for changer in ("Deploy", "Cleanup"):  # Cleanup restores the endpoint of a run that died (deploy.rollback)
            f[changer].add_to_role_policy(describe_targets)
            f[changer].add_to_role_policy(deregister_targets)
        if model.deploy.capacity.autoscaling is not None:
            writes = ["application-autoscaling:RegisterScalableTarget", "application-autoscaling:PutScalingPolicy"]
            f["Deploy"].add_to_role_policy(
                iam.PolicyStatement(
                    actions=["iam:CreateServiceLinkedRole"],
                    resources=[
                        f"arn:{stack.partition}:iam::{stack.account}:role/aws-service-role/"
                        "sagemaker.application-autoscaling.amazonaws.com/"
                        "AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint"
                    ],
                    conditions={
                        "StringLike": {"iam:AWSServiceName": "sagemaker.application-autoscaling.amazonaws.com"}
                    },
                )
            )
            f["Deploy"].add_to_role_policy(
                iam.PolicyStatement(
                    actions=writes, resources=[f"{autoscaling_arn}:scalable-target/*"], conditions=scalable_targets
                )
            )
        read(storage.data_bucket, f["Finalize"], f"{model.new_data_prefix}*")
        storage.data_bucket.grant_put(f["Finalize"], f"{model.training_data_prefix}*")
        storage.data_bucket.grant_put(f["Finalize"], f"{model.quarantine_prefix}*")
        storage.grant_audit(
            model.name,
            f["Finalize"],
            "dynamodb:PutItem",
            "dynamodb:DeleteItem",
            "dynamodb:UpdateItem",
            "dynamodb:Query",
            "dynamodb:GetItem",  # the alarm run waiting for the lock (start_next_run)
        )
        storage.topic.grant_publish(f["Finalize"])
        # Finalize and Cleanup release the lock and start the next queued run: this state machine only.
        start_next = iam.PolicyStatement(actions=["states:StartExecution"], resources=[state_machine_arn])
        f["Finalize"].add_to_role_policy(start_next)
        f["Cleanup"].add_to_role_policy(start_next)

        # Cleanup: a run that ended without Finalize. It reads the run's history, puts the endpoint back on the
        # champion's config, writes the audit record and releases the lock.
        f["Cleanup"].add_to_role_policy(
            iam.PolicyStatement(
                actions=["states:GetExecutionHistory"],
                resources=[
                    f"arn:{stack.partition}:states:{stack.region}:{stack.account}:execution:{state_machine_name}:*"
                ],
            )
        )
        f["Cleanup"].add_to_role_policy(
            iam.PolicyStatement(
                actions=["sagemaker:UpdateEndpoint", "sagemaker:UpdateEndpointWeightsAndCapacities"],
                resources=[
                    f"{arn}:endpoint/{endpoint_name}",
                    f"{arn}:endpoint-config/{names.pattern(endpoint_name)}",
                ],
            )
        )
        storage.grant_audit(
            model.name,
            f["Cleanup"],
            "dynamodb:Query",
            "dynamodb:PutItem",
            "dynamodb:DeleteItem",
            "dynamodb:UpdateItem",
            "dynamodb:GetItem",  # the alarm run waiting for the lock (start_next_run)
        )
        storage.topic.grant_publish(f["Cleanup"])

        if "JudgeAb" in f:
            # The monitor's parts (captured requests and labels), active learning's picks, the endpoint, the challenger's
            # error alarm (the canary alarm), and for the guards at each check (the canary's rules on the window so
            # far) the variants' metrics, the captured outputs and the gate's holdout reference: nothing else.
            judge = f["JudgeAb"]
            judge.add_to_role_policy(
                iam.PolicyStatement(
                    actions=["cloudwatch:GetMetricStatistics", "cloudwatch:GetMetricData"],
                    resources=["*"],  # neither has resource-level permissions
                )
            )
            read(storage.data_bucket, judge, f"{model.capture_prefix}*")
            read(storage.artifact_bucket, judge, f"reports/{model.name}/*")
            storage.grant_key(judge, write=False)
            for kind in ("captured", "labels"):
                read(storage.artifact_bucket, judge, f"{model.monitoring_prefix}{kind}/*")
            read(storage.data_bucket, judge, f"{model.labeling_prefix}*")
            judge.add_to_role_policy(
                iam.PolicyStatement(
                    actions=["sagemaker:DescribeEndpoint"], resources=[f"{arn}:endpoint/{endpoint_name}"]
                )
            )
            judge.add_to_role_policy(
                iam.PolicyStatement(
                    actions=["cloudwatch:DescribeAlarms"],
                    resources=[
                        f"arn:{stack.partition}:cloudwatch:{stack.region}:{stack.account}:alarm:{canary_alarm_name}"
                    ],
                )
            )
        if "MlflowSync" in f:
            self._grant_mlflow_sync(f["MlflowSync"], model, storage, mlflow, read)
            # A run that ended without Finalize: Cleanup starts the sync of the record it stored (asynchronously),
            # this one function only (its ARN, no version or alias wildcard).
            f["Cleanup"].add_environment("REFIT_MLFLOW_FUNCTION", f["MlflowSync"].function_name)
            f["Cleanup"].add_to_role_policy(
                iam.PolicyStatement(actions=["lambda:InvokeFunction"], resources=[f["MlflowSync"].function_arn])
            )

        for (name, bucket), patterns in readable.items():
            deny_listing_outside(f[name], bucket, patterns)

    def _grant_approve(self, approve: lambda_.Function, storage: Storage, model: ModelConfig, packages: str) -> None:
        """The Approve function and its URL: the only holder of the model's task tokens (its approval items) and of
        states:SendTaskSuccess. AuthType AWS_IAM: AWS verifies the caller's SigV4 signature and passes the identity."""
        self.approve_url = approve.add_function_url(auth_type=lambda_.FunctionUrlAuthType.AWS_IAM)
        # UpdateItem: the conditional claim of a pending item, so two decisions at once cannot both go on.
        storage.grant_audit(
            approval_partition(model.name), approve, "dynamodb:GetItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"
        )
        approve.add_to_role_policy(
            iam.PolicyStatement(
                actions=["sagemaker:DescribeModelPackage", "sagemaker:UpdateModelPackage"], resources=[packages]
            )
        )
        # The Service Authorization Reference lists no resource type and no condition key for states:SendTaskSuccess:
        # the task token names the task. A reject is a success with `approved: false`: no SendTaskFailure.
        approve.add_to_role_policy(iam.PolicyStatement(actions=["states:SendTaskSuccess"], resources=["*"]))

    @staticmethod
    def _grant_mlflow_sync(
        function: lambda_.Function, model: ModelConfig, storage: Storage, mlflow: MlflowSettings, read: Callable
    ) -> None:
        """MlflowSync reads the run's audit record and writes its `mlflow` field, reads the run's lineage and
        evaluation documents, and (for a SageMaker managed server) calls that one tracking server's MLflow API, or
        (with `credentials_secret`) reads that one secret."""
        storage.grant_audit(model.name, function, "dynamodb:GetItem", "dynamodb:UpdateItem")
        read(storage.artifact_bucket, function, f"models/{model.name}/*/lineage.json")
        read(storage.artifact_bucket, function, f"reports/{model.name}/*/evaluation.json")
        if mlflow.server_arn:
            function.add_to_role_policy(
                iam.PolicyStatement(actions=list(MLFLOW_ACTIONS), resources=[mlflow.server_arn])
            )
        if mlflow.credentials_secret:
            RetrainFunctions.grant_mlflow_credentials(function, mlflow.credentials_secret)

    @staticmethod
    def grant_mlflow_credentials(function: lambda_.Function, secret_arn: str) -> None:
        """The secret's ARN in the function's environment and GetSecretValue on exactly that secret. A secret
        encrypted with a customer managed KMS key also needs kms:Decrypt, which the key's owner grants (README
        'MLflow'): refit does not grant kms on keys it does not know."""
        function.add_environment(CREDENTIALS_SECRET_ENV, secret_arn)
        function.add_to_role_policy(
            iam.PolicyStatement(actions=["secretsmanager:GetSecretValue"], resources=[secret_arn])
        )
