"""The cdk-nag (AwsSolutions) findings refit accepts, each on the one CloudFormation resource that raises it, with the
exact finding (`AwsSolutions-IAM5[Action::s3:GetObject*]`, `...[Resource::<bucket>/incoming/churn/*]`) and the
reason. Nothing is acknowledged for the whole stack or a whole model: a new wildcard on any role, or a new finding
on any resource, fails synthesis until it is listed here for that resource
(tests/infrastructure/test_nag_acknowledgements.py compares these with cdk-nag's raw findings).

cdk-nag 3 honours an acknowledgement on the resource or any construct above it, and matches ids exactly.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from aws_cdk import Acknowledgment, CfnResource, Stack, Validations
from aws_cdk import aws_iam as iam
from constructs import IConstruct
from refit_core import names

from stacks.sagemaker_access import model_prefixes

if TYPE_CHECKING:
    from stacks.refit_stack import ModelPipeline
    from stacks.storage import Storage

IAM5 = "AwsSolutions-IAM5"
SAGEMAKER_ARN = "arn:<AWS::Partition>:sagemaker:<AWS::Region>:<AWS::AccountId>"

# CDK's grants on refit's buckets, key and topic use these wildcarded actions; each statement that carries them is
# limited to one refit bucket (and a prefix), the project key, or the topic.
S3_READ = {
    "Action::s3:GetObject*": "CDK's S3 read grant (GetObject, GetObjectVersion, tags, ACL); limited to this role's "
    "prefixes of one refit bucket",
    "Action::s3:GetBucket*": "CDK's S3 read grant (bucket location and settings); limited to refit's own bucket",
    "Action::s3:List*": "CDK's S3 read grant (ListBucket, ListBucketVersions: refit lists batches and versions); "
    "limited to refit's own bucket",
}
S3_PUT = {"Action::s3:Abort*": "CDK's S3 put grant (AbortMultipartUpload); limited to this role's put prefixes"}
S3_DELETE = {"Action::s3:DeleteObject*": "CDK's S3 delete grant; limited to the one prefix this role deletes under"}
KEY_WRITE = {
    "Action::kms:GenerateDataKey*": "CDK's grant to write SSE-KMS objects or publish to the encrypted topic; "
    "limited to the project key",
}
KEY_REENCRYPT = {
    "Action::kms:ReEncrypt*": "CDK's S3 put grant on an SSE-KMS bucket adds it; limited to the project key",
}
XRAY = "X-Ray tracing: xray:PutTraceSegments and PutTelemetryRecords have no resource-level permissions"


def policy_of(role: iam.IRole) -> CfnResource:
    """The CloudFormation AWS::IAM::Policy of a role's default policy: the resource cdk-nag reports IAM5 on."""
    return role.node.find_child("DefaultPolicy").node.default_child


def acknowledge(resource: IConstruct, findings: dict[str, str]) -> None:
    """Acknowledge exactly `findings` (finding -> reason) on one CloudFormation resource."""
    if not CfnResource.is_cfn_resource(resource):
        raise TypeError(f"{resource.node.path}: acknowledge findings on the CloudFormation resource that raises them")
    for finding, reason in findings.items():
        Validations.of(resource).acknowledge(Acknowledgment(id=finding, reason=reason))


def _wildcards(findings: dict[str, str]) -> dict[str, str]:
    """IAM5 findings (`Action::...`, `Resource::...`) -> their full cdk-nag ids."""
    return {f"{IAM5}[{finding}]": reason for finding, reason in findings.items()}


def _objects(bucket: str, prefixes: Iterable[str], reason: str) -> dict[str, str]:
    return {f"Resource::<{bucket}.Arn>/{prefix}*": reason for prefix in prefixes}


def _sagemaker(endpoint_name: str, package_group: str, kinds: Iterable[str]) -> dict[str, str]:
    resources = {
        "endpoint-config": f"endpoint-config/{names.pattern(endpoint_name)}",
        "model": f"model/{names.pattern(endpoint_name)}",
        "model-package": f"model-package/{package_group}/*",
        "training-job": f"training-job/{names.pattern(endpoint_name)}",
    }
    reason = (
        "SageMaker names carry the run id, known only at run time; limited to this model's prefix and '--', which no "
        "other model's names start with (package versions: this model's group)"
    )
    return {f"Resource::{SAGEMAKER_ARN}:{resources[kind]}": reason for kind in kinds}


def acknowledge_findings(stack: Stack, storage: Storage, pipelines: list[ModelPipeline]) -> None:
    data = stack.get_logical_id(storage.data_bucket.node.default_child)
    artifacts = stack.get_logical_id(storage.artifact_bucket.node.default_child)

    acknowledge(
        storage.dead_letters.node.default_child,
        {
            "AwsSolutions-SQS3": "this queue is the dead-letter queue of refit's EventBridge targets; a dead-letter "
            "queue has none of its own (its alarm notifies the team)"
        },
    )
    for pipeline in pipelines:
        _acknowledge_pipeline(stack, pipeline, data, artifacts)


def _acknowledge_pipeline(stack: Stack, pipeline: ModelPipeline, data: str, artifacts: str) -> None:
    model = pipeline.functions.model
    f = pipeline.functions.functions
    batches = "batches are objects with user-chosen names under this model's own prefix"
    runs = "run artifacts are keyed by run id under this model's own prefix"
    feedback_batches = f"{model.feedback_prefix}batches/"
    endpoint = pipeline.endpoint_name
    group = pipeline.package_group.model_package_group_name
    reads_endpoint = _sagemaker(endpoint, group, ("endpoint-config", "model", "model-package"))
    scalable_targets = {
        "Resource::arn:<AWS::Partition>:application-autoscaling:<AWS::Region>:<AWS::AccountId>:scalable-target/*": (
            "Application Auto Scaling names a scalable target by an id it assigns; the grant is limited by condition "
            "to SageMaker variants' instance counts (service-namespace, scalable-dimension)"
        )
    }
    describe_targets = "; application-autoscaling:DescribeScalableTargets has none either"
    s3_writer = {**S3_READ, **S3_PUT, **KEY_WRITE, **KEY_REENCRYPT, "Resource::*": XRAY}

    findings: dict[str, dict[str, str]] = {
        "Prepare": {
            **s3_writer,
            **S3_DELETE,
            **_objects(data, [model.new_data_prefix], batches),
            **_objects(
                data,
                [model.feedback_prefix],
                "an alarm run reads this model's gathered feedback (parts and batches) by run-time names",
            ),
            **_objects(data, [feedback_batches], "an alarm run's batch is named after the run, known at run time"),
            **_objects(
                data, [f"{model.feedback_prefix}pending/"], "the monitor writes a part per run; Prepare deletes them"
            ),
        },
        "CheckBatch": {
            **s3_writer,
            **reads_endpoint,
            **_objects(data, [model.new_data_prefix, feedback_batches], batches),
            **_objects(artifacts, [f"models/{model.name}/", f"reports/{model.name}/", f"training/{model.name}/"], runs),
        },
        "StartTraining": {
            **s3_writer,
            **_sagemaker(endpoint, group, ("training-job",)),
            **_objects(
                data,
                [
                    model.new_data_prefix,
                    model.training_data_prefix,
                    model.validation_data_prefix,
                    model.baseline_data_prefix,
                    feedback_batches,
                ],
                batches,
            ),
            **_objects(artifacts, [f"reports/{model.name}/", f"job-data/{model.name}/"], runs),
        },
        "PollTraining": {"Resource::*": XRAY, **_sagemaker(endpoint, group, ("training-job",))},
        "Gate": {
            **s3_writer,
            **_objects(artifacts, [f"models/{model.name}/", f"reports/{model.name}/", f"training/{model.name}/"], runs),
        },
        "Register": {
            **s3_writer,
            **_sagemaker(endpoint, group, ("model-package",)),
            **_objects(artifacts, [f"models/{model.name}/", f"reports/{model.name}/"], runs),
            **_objects(
                artifacts,
                [f"training/{model.name}/"],
                "Register reads the challenger's model.tar.gz (a training job's output, named by the job at run time) "
                "to record its model file's SHA-256",
            ),
        },
        "Deploy": {
            **S3_READ,
            "Resource::*": XRAY
            + "; cloudwatch:GetMetricStatistics and GetMetricData (the canary's metrics) have none either"
            + describe_targets,
            **reads_endpoint,
            **_objects(
                data, [model.capture_prefix], "Data Capture names its files by endpoint, variant, hour and a UUID"
            ),
            **_objects(artifacts, [f"reports/{model.name}/"], runs),
            **scalable_targets,
        },
        "Finalize": {
            **s3_writer,
            **reads_endpoint,
            **_objects(data, [model.new_data_prefix, feedback_batches], batches),
            **_objects(
                data,
                [model.training_data_prefix, model.quarantine_prefix],
                "Finalize keeps a checked batch under its own name (history) or quarantines it as <run>-<file>",
            ),
        },
        "RequestApproval": {
            "Action::kms:GenerateDataKey*": KEY_WRITE["Action::kms:GenerateDataKey*"],
            "Resource::*": XRAY,
        },
        "ExpireApproval": {"Resource::*": XRAY, **_sagemaker(endpoint, group, ("model-package",))},
        "Approve": {
            "Resource::*": XRAY + "; states:SendTaskSuccess has none either (the Service Authorization Reference lists "
            "no resource type and no condition key: the task token names the task); this role reads tokens only from "
            "this model's approval items, and only this function of the model holds the action",
            **_sagemaker(endpoint, group, ("model-package",)),
        },
        "Cleanup": {
            "Action::kms:GenerateDataKey*": KEY_WRITE["Action::kms:GenerateDataKey*"],
            "Resource::*": XRAY + describe_targets,
            **reads_endpoint,
            **scalable_targets,
            "Resource::arn:<AWS::Partition>:states:<AWS::Region>:<AWS::AccountId>:execution:"
            f"{pipeline.retrain.state_machine_name}:*": "the run-end cleanup reads the history of whichever run of "
            "this model's own state machine ended; execution names are chosen when a run starts",
        },
        "Monitor": {
            **s3_writer,
            "Resource::*": XRAY + "; cloudwatch:PutMetricData has none either and is limited to refit's namespace",
            **reads_endpoint,
            **_objects(
                data,
                [model.capture_prefix],
                "Data Capture names its files by endpoint, variant, hour and a UUID",
            ),
            **_objects(
                data, [model.ground_truth_prefix], "labels are files with user-chosen names under this model's prefix"
            ),
            **_objects(
                data, [model.labeling_prefix], "active learning writes a manifest per day and an object per request"
            ),
            **_objects(
                data,
                [f"{model.feedback_prefix}pending/"],
                "the monitor writes a feedback part per run, named at run time",
            ),
            **_objects(artifacts, [f"models/{model.name}/", f"training/{model.name}/"], runs),
            **_objects(
                artifacts,
                [model.monitoring_prefix],
                "the monitor's state, parts and reports are keyed by capture file and run under this model's prefix",
            ),
        },
        "PickCandidate": {**S3_READ, "Resource::*": XRAY, **_objects(artifacts, [f"training/{model.name}/"], runs)},
        "JudgeAb": {
            **S3_READ,
            "Resource::*": XRAY
            + "; cloudwatch:GetMetricStatistics and GetMetricData (the guards' per-variant metrics) have none"
            " either",
            **_objects(
                artifacts,
                [f"{model.monitoring_prefix}captured/", f"{model.monitoring_prefix}labels/"],
                "the A/B decision reads the monitor's parts, keyed by capture and label file under this model's prefix",
            ),
            **_objects(data, [model.labeling_prefix], "active learning's picks: a manifest per day"),
            **_objects(
                data, [model.capture_prefix], "Data Capture names its files by endpoint, variant, hour and a UUID"
            ),
            **_objects(artifacts, [f"reports/{model.name}/"], runs),
        },
        # `[mlflow]` only: reads the run's lineage and evaluation documents; its sagemaker-mlflow actions (a managed
        # tracking server) are scoped to that server's ARN, no wildcard.
        "MlflowSync": {
            **S3_READ,
            "Resource::*": XRAY,
            f"Resource::<{artifacts}.Arn>/models/{model.name}/*/lineage.json": "a registered run's lineage document, "
            "keyed by run id at run time under this model's own prefix",
            f"Resource::<{artifacts}.Arn>/reports/{model.name}/*/evaluation.json": "a gated run's evaluation document, "
            "keyed by run id at run time under this model's own prefix",
        },
    }
    _acknowledge_sagemaker_role(pipeline, data, artifacts)
    for name, function in f.items():
        if name not in findings:
            raise KeyError(f"stacks/nag.py: list the cdk-nag findings of function {name!r} and why they are accepted")
        acknowledge(policy_of(function.role), _wildcards(findings[name]))

    invoked = {
        f"Resource::<{stack.get_logical_id(function.node.default_child)}.Arn>:*": "Step Functions may invoke the "
        "function's versions and aliases; limited to this model's own function"
        for name, function in f.items()
        if name not in ("Cleanup", "Monitor", "Approve")
    }
    acknowledge(
        policy_of(pipeline.retrain.state_machine.role),
        _wildcards({"Resource::*": XRAY + " (the state machine's tracing)", **invoked}),
    )


def _acknowledge_sagemaker_role(pipeline: ModelPipeline, data: str, artifacts: str) -> None:
    model = pipeline.functions.model
    prefix = pipeline.endpoint_name
    logs = "Resource::arn:<AWS::Partition>:logs:<AWS::Region>:<AWS::AccountId>:log-group:/aws/sagemaker"
    reads = model_prefixes(model)
    acknowledge(
        policy_of(pipeline.execution_role.role),
        _wildcards(
            {
                **S3_READ,
                **S3_PUT,
                "Action::s3:DeleteObject*": "SageMaker's checkpoint sync removes stale checkpoint files; limited to "
                "this model's checkpoints/<model>/",
                **KEY_WRITE,
                **KEY_REENCRYPT,
                "Resource::*": "ecr:GetAuthorizationToken has no resource-level permissions; cloudwatch:PutMetricData "
                "has none either and is limited to SageMaker's namespaces by condition",
                **_objects(
                    data,
                    [p.removesuffix("*") for p in reads["data"]],
                    "a training job reads this model's optional validation and baseline channels by prefix",
                ),
                **_objects(
                    data,
                    [model.capture_prefix],
                    "Data Capture writes as the model's role under capture/<model>/<endpoint>/<variant>/<hour>/ with "
                    "file names SageMaker generates; put only",
                ),
                **_objects(
                    artifacts,
                    [p.removesuffix("*") for p in reads["artifacts"]],
                    "a training job's channels, output and checkpoints are named by run and job at run time, under "
                    "this model's own prefixes",
                ),
                f"{logs}/TrainingJobs:*": "SageMaker's training log group, shared by every job of the account: "
                "create it and describe its streams; writing is limited to this model's streams",
                f"{logs}/TrainingJobs:log-stream:{names.pattern(prefix)}": "a job's log streams are named "
                "<job>/algo-1-<time> at run time; this model's job names only",
                f"{logs}/Endpoints/{prefix}:*": "the log group of this model's endpoint; SageMaker names a stream per "
                "instance",
                f"{logs}/Endpoints/{prefix}:log-stream:*": "SageMaker names a stream per instance of this model's "
                "endpoint",
            }
        ),
    )
