"""The training/hosting image, and the role SageMaker assumes to train and serve each model."""

from __future__ import annotations

from pathlib import Path

from aws_cdk import Aws, Stack
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_iam as iam
from constructs import Construct
from refit_core import names
from refit_core.config import ModelConfig

from stacks.storage import Storage, deny_listing_outside

REPO_ROOT = Path(__file__).resolve().parent.parent
# Only what the image needs enters its build context (and the asset hash).
TRAINING_IMAGE_CONTEXT = [
    "*",
    "!functions",
    "!functions/refit_core",
    "!functions/refit_core/**",
    "!training_container",
    "!training_container/**",
    "**/__pycache__",
]


class SageMakerAccess(Construct):
    """The training and hosting image every model's jobs and endpoints run."""

    def __init__(self, scope: Construct, construct_id: str) -> None:
        super().__init__(scope, construct_id)
        self.image = ecr_assets.DockerImageAsset(
            self,
            "TrainingImage",
            directory=str(REPO_ROOT),
            file="training_container/Dockerfile",
            exclude=TRAINING_IMAGE_CONTEXT,
            platform=ecr_assets.Platform.LINUX_AMD64,
        )


def model_prefixes(model: ModelConfig) -> dict[str, list[str]]:
    """What one model's SageMaker role may read, by bucket ("data", "artifacts"): the optional validation and baseline
    channels (read in place), the pinned window StartTraining copies the batch, history and feedback into
    (refit_core.training.job_data_prefix), the job's settings (refit_core.training.settings_prefix), the champion's
    model.tar.gz a job scores and an endpoint serves, and the checkpoints it resumes from."""
    return {
        "data": [f"{model.validation_data_prefix}*", f"{model.baseline_data_prefix}*"],
        "artifacts": [
            f"job-data/{model.name}/*",
            f"reports/{model.name}/*/inputs/*",
            f"training/{model.name}/*",
            f"checkpoints/{model.name}/*",
        ],
    }


class ModelExecutionRole(Construct):
    """The role SageMaker assumes for one model's training jobs and endpoint models, and nothing of another model's:
    it reads the model's channels and champion, writes its training output (`training/<model>/<job>/`) and
    checkpoints, deletes only its checkpoints, writes Data Capture under `capture/<model>/`, and writes the log streams
    of its own jobs and endpoint. Explicit denies keep every job from writing or deleting what a run relies on after
    it is written (`models/`, `reports/`, training output), whatever else is granted later."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        model: ModelConfig,
        name_prefix: str,
        storage: Storage,
        access: SageMakerAccess,
    ) -> None:
        super().__init__(scope, construct_id)
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("sagemaker.amazonaws.com"),
            description=f"refit {model.name}: SageMaker training jobs and endpoint models of this model only",
        )
        reads = model_prefixes(model)
        for bucket, patterns in ((storage.data_bucket, reads["data"]), (storage.artifact_bucket, reads["artifacts"])):
            for pattern in patterns:
                bucket.grant_read(self.role, pattern)
            deny_listing_outside(self.role, bucket, patterns)
        storage.artifact_bucket.grant_put(self.role, f"training/{model.name}/*")  # the job's output
        storage.artifact_bucket.grant_put(self.role, f"checkpoints/{model.name}/*")
        # SageMaker's checkpoint sync removes checkpoint files the job deleted locally.
        storage.artifact_bucket.grant_delete(self.role, f"checkpoints/{model.name}/*")
        # Data Capture writes the endpoint's requests and responses as the model's execution role.
        storage.data_bucket.grant_put(self.role, f"{model.capture_prefix}*")
        self.role.add_to_policy(
            iam.PolicyStatement(
                sid="ArtifactsAreWrittenOnce",
                effect=iam.Effect.DENY,
                actions=["s3:PutObject*", "s3:DeleteObject*"],
                resources=[
                    storage.artifact_bucket.arn_for_objects("models/*"),
                    storage.artifact_bucket.arn_for_objects("reports/*"),
                ],
            )
        )
        self.role.add_to_policy(
            iam.PolicyStatement(
                sid="TrainingOutputIsNeverDeleted",
                effect=iam.Effect.DENY,
                actions=["s3:DeleteObject*"],
                resources=[storage.artifact_bucket.arn_for_objects("training/*")],
            )
        )
        # Reads SSE-KMS data (Decrypt), writes artifacts and checkpoints (GenerateDataKey), and Data Capture with the
        # project key needs Encrypt as the model's role.
        storage.key.grant(self.role, "kms:Decrypt", "kms:DescribeKey", "kms:GenerateDataKey", "kms:Encrypt")
        # The training volume (VolumeKmsKeyId) is encrypted with the project key: SageMaker grants the instance's
        # volume the key as this role. Only for an AWS resource, only through SageMaker or the EC2 volume it attaches.
        stack = Stack.of(self)
        self.role.add_to_policy(
            iam.PolicyStatement(
                sid="VolumeKeyGrant",
                actions=["kms:CreateGrant"],
                resources=[storage.key.key_arn],
                conditions={
                    "StringEquals": {
                        "kms:ViaService": [
                            f"sagemaker.{stack.region}.amazonaws.com",
                            f"ec2.{stack.region}.amazonaws.com",
                        ]
                    },
                    "Bool": {"kms:GrantIsForAWSResource": "true"},
                },
            )
        )
        access.image.repository.grant_pull(self.role)
        self.role.add_to_policy(
            iam.PolicyStatement(
                sid="EcrAuthorizationToken",
                actions=["ecr:GetAuthorizationToken"],
                resources=["*"],  # GetAuthorizationToken has no resource-level permissions
            )
        )
        logs = f"arn:{Aws.PARTITION}:logs:{stack.region}:{stack.account}:log-group:/aws/sagemaker"
        # SageMaker's training log group is shared by every job of the account; each job writes streams named
        # `<job>/algo-1-<time>`, and this model's job names match `{prefix}--*` only (refit_core.names).
        self.role.add_to_policy(
            iam.PolicyStatement(
                sid="LogGroups",
                actions=["logs:CreateLogGroup", "logs:DescribeLogStreams"],
                resources=[f"{logs}/TrainingJobs:*", f"{logs}/Endpoints/{name_prefix}:*"],
            )
        )
        self.role.add_to_policy(
            iam.PolicyStatement(
                sid="OwnLogStreams",
                actions=["logs:CreateLogStream", "logs:PutLogEvents"],
                resources=[
                    f"{logs}/TrainingJobs:log-stream:{names.pattern(name_prefix)}",
                    f"{logs}/Endpoints/{name_prefix}:log-stream:*",
                ],
            )
        )
        self.role.add_to_policy(
            iam.PolicyStatement(
                sid="TrainingMetrics",
                actions=["cloudwatch:PutMetricData"],
                resources=["*"],  # PutMetricData has no resource-level permissions; narrowed by namespace below
                conditions={"StringEquals": {"cloudwatch:namespace": ["/aws/sagemaker/TrainingJobs", "AWS/SageMaker"]}},
            )
        )
