"""The training/hosting image and the role SageMaker assumes to train and serve it."""

from __future__ import annotations

from pathlib import Path

from aws_cdk import Aws, Stack
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_iam as iam
from constructs import Construct

from stacks.storage import Storage

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
    def __init__(self, scope: Construct, construct_id: str, *, storage: Storage) -> None:
        super().__init__(scope, construct_id)
        self.image = ecr_assets.DockerImageAsset(
            self,
            "TrainingImage",
            directory=str(REPO_ROOT),
            file="training_container/Dockerfile",
            exclude=TRAINING_IMAGE_CONTEXT,
            platform=ecr_assets.Platform.LINUX_AMD64,
        )
        self.role = iam.Role(
            self,
            "ExecutionRole",
            assumed_by=iam.ServicePrincipal("sagemaker.amazonaws.com"),
            description="refit: SageMaker training jobs and endpoints",
        )
        storage.data_bucket.grant_read(self.role)
        storage.artifact_bucket.grant_read_write(self.role)
        # Data Capture writes each endpoint's requests and responses as the model's execution role.
        storage.data_bucket.grant_put(self.role, "capture/*")
        # Reads SSE-KMS data (Decrypt), writes artifacts and checkpoints (GenerateDataKey), and Data Capture with the
        # project key needs Encrypt as the model's role.
        storage.key.grant(self.role, "kms:Decrypt", "kms:DescribeKey", "kms:GenerateDataKey", "kms:Encrypt")
        self.image.repository.grant_pull(self.role)
        stack = Stack.of(self)
        self.role.add_to_policy(
            iam.PolicyStatement(
                sid="EcrAuthorizationToken",
                actions=["ecr:GetAuthorizationToken"],
                resources=["*"],  # GetAuthorizationToken has no resource-level permissions
            )
        )
        self.role.add_to_policy(
            iam.PolicyStatement(
                sid="TrainingAndEndpointLogs",
                actions=["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
                resources=[
                    f"arn:{Aws.PARTITION}:logs:{stack.region}:{stack.account}:log-group:/aws/sagemaker/TrainingJobs:*",
                    f"arn:{Aws.PARTITION}:logs:{stack.region}:{stack.account}:log-group:/aws/sagemaker/Endpoints/*",
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
