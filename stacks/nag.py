"""The cdk-nag (AwsSolutions) findings refit accepts, one by one, each with the reason.

cdk-nag 3 matches finding ids exactly, so ids that name a resource are built from its logical id.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aws_cdk import Acknowledgment, Stack, Validations
from refit_core import names

if TYPE_CHECKING:
    from stacks.refit_stack import ModelPipeline
    from stacks.storage import Storage

CDK_GRANT_ACTIONS = {
    "s3:GetObject*": "CDK's S3 read grant; every statement is limited to one refit bucket and a per-model prefix",
    "s3:GetBucket*": "CDK's S3 read grant; limited to refit's own buckets",
    "s3:List*": "CDK's S3 read grant; limited to refit's own buckets",
    "s3:Abort*": "CDK's S3 put grant (abort multipart uploads); limited to a per-model prefix",
    "s3:DeleteObject*": "SageMaker checkpoint sync removes stale checkpoint files; limited to refit's artifact bucket",
    "kms:ReEncrypt*": "CDK's key grant; limited to refit's single customer-managed key",
    "kms:GenerateDataKey*": "CDK's key grant; limited to refit's single customer-managed key",
}
NO_RESOURCE_LEVEL = (
    "only actions without resource-level permissions use '*': xray:PutTraceSegments/PutTelemetryRecords, "
    "ecr:GetAuthorizationToken, cloudwatch:GetMetricStatistics, and cloudwatch:PutMetricData (namespace-conditioned)"
)


def _ack(scope: Any, finding: str, reason: str) -> None:
    Validations.of(scope).acknowledge(Acknowledgment(id=finding, reason=reason))


def acknowledge_findings(stack: Stack, storage: Storage, pipelines: list[ModelPipeline]) -> None:
    data = stack.get_logical_id(storage.data_bucket.node.default_child)
    artifacts = stack.get_logical_id(storage.artifact_bucket.node.default_child)
    for action, reason in CDK_GRANT_ACTIONS.items():
        _ack(stack, f"AwsSolutions-IAM5[Action::{action}]", reason)
    _ack(stack, "AwsSolutions-IAM5[Resource::*]", NO_RESOURCE_LEVEL)
    _ack(
        stack,
        "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole]",
        "CDK's own handler that switches on S3->EventBridge delivery for the data bucket; the policy only writes logs",
    )
    _ack(
        stack,
        f"AwsSolutions-IAM5[Resource::<{data}.Arn>/*]",
        "SageMaker reads the data bucket's objects for training channels; the bucket holds only refit data",
    )
    _ack(
        stack,
        f"AwsSolutions-IAM5[Resource::<{data}.Arn>/capture/*]",
        "Data Capture writes as the model's role under capture/<model>/<endpoint>/<variant>/<hour>/ with file names "
        "SageMaker generates; put only, under the capture prefix",
    )
    _ack(
        stack,
        f"AwsSolutions-IAM5[Resource::<{artifacts}.Arn>/*]",
        "SageMaker writes model artifacts and checkpoints under job names it generates at run time",
    )
    for suffix in ("TrainingJobs:*", "Endpoints/*"):
        _ack(
            stack,
            f"AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:logs:<AWS::Region>:<AWS::AccountId>:"
            f"log-group:/aws/sagemaker/{suffix}]",
            "SageMaker names a log stream per job or endpoint at run time; limited to SageMaker's log groups",
        )
    sagemaker_arn = "arn:<AWS::Partition>:sagemaker:<AWS::Region>:<AWS::AccountId>"
    for pipeline in pipelines:
        model = pipeline.functions.model
        for prefix in (
            model.new_data_prefix,
            model.training_data_prefix,
            model.validation_data_prefix,
            model.baseline_data_prefix,
            model.quarantine_prefix,
        ):
            _ack(
                pipeline,
                f"AwsSolutions-IAM5[Resource::<{data}.Arn>/{prefix}*]",
                "batches are objects with user-chosen names under this model's own prefix",
            )
        for prefix, reason in (
            (model.capture_prefix, "Data Capture names its files by endpoint, variant, hour and a UUID"),
            (model.ground_truth_prefix, "labels are files with user-chosen names under this model's own prefix"),
            (model.labeling_prefix, "active learning writes a manifest per day and an object per picked request"),
            (model.feedback_prefix, "feedback parts are named by monitor run, batches by the alarm run taking them"),
            (f"{model.feedback_prefix}pending/", "the monitor writes a part per run; Prepare gathers and deletes them"),
            (f"{model.feedback_prefix}batches/", "an alarm run's batch is named after the run, known at run time"),
        ):
            _ack(pipeline, f"AwsSolutions-IAM5[Resource::<{data}.Arn>/{prefix}*]", reason)
        _ack(
            pipeline,
            f"AwsSolutions-IAM5[Resource::<{artifacts}.Arn>/{model.monitoring_prefix}*]",
            "the monitor's state, parts and reports are keyed by capture file and run under this model's own prefix",
        )
        for prefix in (
            f"models/{model.name}/",
            f"reports/{model.name}/",
            f"training/{model.name}/",
            f"job-data/{model.name}/",
        ):
            _ack(
                pipeline,
                f"AwsSolutions-IAM5[Resource::<{artifacts}.Arn>/{prefix}*]",
                "run artifacts are keyed by run id under this model's own prefix",
            )
        for resource in (
            f"endpoint-config/{names.pattern(pipeline.endpoint_name)}",
            f"model/{names.pattern(pipeline.endpoint_name)}",
            f"model-package/{pipeline.package_group.model_package_group_name}/*",
            f"training-job/{names.pattern(pipeline.endpoint_name)}",
        ):
            _ack(
                pipeline,
                f"AwsSolutions-IAM5[Resource::{sagemaker_arn}:{resource}]",
                "SageMaker resource names carry the run id, known only at run time; limited to this model's prefix "
                "and '--', which no other model's names start with",
            )
        _ack(
            pipeline,
            "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:states:<AWS::Region>:<AWS::AccountId>:execution:"
            f"{pipeline.retrain.state_machine_name}:*]",
            "the run-end cleanup reads the history of whichever run of this model's own state machine ended; "
            "execution names are chosen when a run starts",
        )
        for function in pipeline.functions.functions.values():
            logical = stack.get_logical_id(function.node.default_child)
            _ack(
                pipeline.retrain,
                f"AwsSolutions-IAM5[Resource::<{logical}.Arn>:*]",
                "Step Functions may invoke the function's versions; limited to refit's own function",
            )
