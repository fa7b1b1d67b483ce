"""Where SageMaker runs the project's training jobs and endpoints (`[network]` in refit.toml), and the IAM conditions
that make every SageMaker create request private and encrypted with the project key.

With a VPC, SageMaker puts the instances' network interfaces in its subnets and security groups and copies the
channels, checkpoints, output and model artifacts through them (network isolation keeps the container itself off
the network, refit_core.network). So the subnets need a route to S3, and nothing else: SageMaker pulls the image
from ECR and ships logs and metrics itself, outside the VPC, and neither `train` nor `serve` calls any AWS API.
The created VPC therefore has an S3 gateway endpoint (free; its policy admits only the project's two buckets) and no
interface endpoint, no NAT and no internet gateway. The Lambdas stay outside the VPC: they call SageMaker, Step
Functions, DynamoDB, SNS, CloudWatch and STS APIs, which inside an isolated VPC would need six interface endpoints
(about $88 a month in two zones) for no reduction of what they can reach (their IAM policies decide that).
"""

from __future__ import annotations

from typing import Any

from aws_cdk import Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from constructs import Construct
from refit_core.config import NetworkSettings

from stacks.storage import Storage

# SageMaker's VpcConfig as the request condition keys name it (Service Authorization Reference: both are
# ArrayOfString keys of CreateTrainingJob, CreateModel and CreateEndpointConfig).
VPC_KEYS = {"Subnets": "sagemaker:VpcSubnets", "SecurityGroupIds": "sagemaker:VpcSecurityGroupIds"}


class SageMakerNetwork(Construct):
    """The project's VPC for SageMaker: none, an existing one, or a new minimal one."""

    def __init__(self, scope: Construct, construct_id: str, *, settings: NetworkSettings, storage: Storage) -> None:
        super().__init__(scope, construct_id)
        self.settings = settings
        self.vpc: ec2.Vpc | None = None
        self.security_group: ec2.SecurityGroup | None = None
        self.vpc_config: dict[str, list[str]] | None = None
        if settings.create:
            self.vpc = ec2.Vpc(
                self,
                "Vpc",
                ip_addresses=ec2.IpAddresses.cidr("10.42.0.0/16"),
                max_azs=2,
                nat_gateways=0,
                subnet_configuration=[
                    ec2.SubnetConfiguration(name="SageMaker", subnet_type=ec2.SubnetType.PRIVATE_ISOLATED, cidr_mask=20)
                ],
                # The default security group is unused; restricting it takes a custom-resource Lambda.
                restrict_default_security_group=False,
            )
            self.vpc.add_flow_log(
                "FlowLog",
                destination=ec2.FlowLogDestination.to_cloud_watch_logs(storage.log_group(self, "FlowLogs")),
                traffic_type=ec2.FlowLogTrafficType.ALL,
            )
            s3 = self.vpc.add_gateway_endpoint("S3", service=ec2.GatewayVpcEndpointAwsService.S3)
            buckets = (storage.data_bucket, storage.artifact_bucket)
            s3.add_to_policy(
                iam.PolicyStatement(
                    sid="ProjectBucketsOnly",
                    principals=[iam.AnyPrincipal()],
                    actions=[
                        "s3:GetObject",
                        "s3:GetObjectVersion",
                        "s3:PutObject",
                        "s3:DeleteObject",
                        "s3:AbortMultipartUpload",
                        "s3:ListBucket",
                        "s3:ListMultipartUploadParts",
                        "s3:GetBucketLocation",
                    ],
                    resources=[arn for b in buckets for arn in (b.bucket_arn, b.arn_for_objects("*"))],
                )
            )
            self.security_group = ec2.SecurityGroup(
                self,
                "SecurityGroup",
                vpc=self.vpc,
                description="refit SageMaker training jobs and endpoints: no ingress, HTTPS out to S3 only",
                allow_all_outbound=False,
            )
            # The subnets have no route out but the S3 gateway endpoint's (no NAT, no internet gateway), so HTTPS to
            # anywhere reaches S3 only; S3's prefix list id cannot be read at synth time without an account lookup.
            self.security_group.add_egress_rule(
                ec2.Peer.any_ipv4(), ec2.Port.tcp(443), "HTTPS to S3 through the gateway endpoint"
            )
            self.vpc_config = {
                "Subnets": [subnet.subnet_id for subnet in self.vpc.isolated_subnets],
                "SecurityGroupIds": [self.security_group.security_group_id],
            }
        elif settings.vpc_id is not None:
            self.vpc_config = {
                "Subnets": list(settings.subnet_ids),
                "SecurityGroupIds": list(settings.security_group_ids),
            }

    def environment(self) -> str:
        """`REFIT_VPC_CONFIG` for the functions (refit_core.network): SageMaker's VpcConfig as JSON, or empty."""
        return Stack.of(self).to_json_string(self.vpc_config) if self.vpc_config else ""

    def conditions(self, *, isolation: bool, vpc: bool, kms_keys: tuple[str, ...], key_arn: str) -> dict[str, Any]:
        """IAM conditions on a SageMaker create action: with `isolation` network isolation on, each of `kms_keys`
        (condition keys) the project key, and with `vpc` and a configured VPC its subnets and security groups, all of
        them and nothing else (`Null` false, as `ForAllValues` alone would also pass a request without a VPC)."""
        conditions: dict[str, Any] = {}
        if isolation:
            conditions["Bool"] = {"sagemaker:NetworkIsolation": "true"}
        if kms_keys:
            conditions["ArnEquals"] = {key: key_arn for key in kms_keys}
        if vpc and self.vpc_config:
            conditions["ForAllValues:StringEquals"] = {VPC_KEYS[k]: v for k, v in self.vpc_config.items()}
            conditions["Null"] = {VPC_KEYS[k]: "false" for k in self.vpc_config}
        return conditions
