"""What refit asks SageMaker for is private (refit_core.network), and the local runtime refuses a VpcConfig SageMaker
would refuse (scripts/local_aws/limits.py), on moto."""

from __future__ import annotations

import dataclasses
import json

import boto3
import pytest
from botocore.exceptions import ClientError, ParamValidationError
from moto import mock_aws
from refit_core.network import vpc_config_from_json
from refit_handlers.deploy import StartDeploy, start

from scripts.local_aws.limits import enforce_aws_rules
from tests.conftest import handler_settings
from tests.integration.test_aws_limits import IMAGE, ROLE, training_job


@pytest.fixture
def aws():
    with mock_aws(), enforce_aws_rules():
        yield boto3.client("sagemaker", region_name="us-east-1"), boto3.client("ec2", region_name="us-east-1")


def network(ec2, cidr: str) -> dict[str, list[str]]:
    vpc = ec2.create_vpc(CidrBlock=cidr)["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock=cidr.replace("/16", "/24"))["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName=f"g-{cidr}", Description="d", VpcId=vpc)["GroupId"]
    return {"Subnets": [subnet], "SecurityGroupIds": [group]}


def test_the_local_runtime_refuses_a_vpc_config_sagemaker_refuses(aws):
    sagemaker, ec2 = aws
    here, there = network(ec2, "10.1.0.0/16"), network(ec2, "10.2.0.0/16")
    with pytest.raises(ParamValidationError, match="SecurityGroupIds"):  # botocore: both members are required
        sagemaker.create_training_job(**training_job("t0", VpcConfig={"Subnets": here["Subnets"]}))
    refusals = {
        "does not exist": {"Subnets": ["subnet-0123456789abcdef0"], "SecurityGroupIds": here["SecurityGroupIds"]},
        "the security group sg-0123456789abcdef0 does not exist": {
            **here,
            "SecurityGroupIds": ["sg-0123456789abcdef0"],
        },
        "more than one VPC": {"Subnets": here["Subnets"], "SecurityGroupIds": there["SecurityGroupIds"]},
    }
    for index, (message, vpc) in enumerate(refusals.items()):
        with pytest.raises(ClientError, match=message) as refused:
            sagemaker.create_training_job(**training_job(f"t{index}", VpcConfig=vpc))
        assert refused.value.response["Error"]["Code"] == "ValidationException"
        with pytest.raises(ClientError, match=message):
            sagemaker.create_model(
                ModelName=f"m{index}", ExecutionRoleArn=ROLE, PrimaryContainer={"Image": IMAGE}, VpcConfig=vpc
            )
    sagemaker.create_training_job(**training_job("t9", VpcConfig=here, EnableNetworkIsolation=True))
    assert sagemaker.describe_training_job(TrainingJobName="t9")["VpcConfig"] == here


def test_deploy_creates_an_isolated_model_in_the_vpc_and_an_encrypted_endpoint_config(aws):
    sagemaker, ec2 = aws
    vpc = network(ec2, "10.3.0.0/16")
    settings = dataclasses.replace(handler_settings(), vpc_config=vpc_config_from_json(json.dumps(vpc)))
    sagemaker.create_model_package_group(ModelPackageGroupName="g")
    package = sagemaker.create_model_package(
        ModelPackageGroupName="g",
        ModelApprovalStatus="Approved",
        InferenceSpecification={
            "Containers": [{"Image": "img:1", "ModelDataUrl": "s3://art/training/churn/j/output/model.tar.gz"}],
            "SupportedContentTypes": ["text/csv"],
            "SupportedResponseMIMETypes": ["text/csv"],
        },
    )["ModelPackageArn"]
    started = start(
        StartDeploy(
            action="start",
            run_id="r1",
            model_data_url="s3://art/training/churn/j/output/model.tar.gz",
            model_package_arn=package,
        ),
        settings,
        sagemaker,
        boto3.client("application-autoscaling", region_name="us-east-1"),
    )
    assert sagemaker.describe_model(ModelName=started["challenger_model"])["VpcConfig"] == vpc
    config = sagemaker.describe_endpoint_config(EndpointConfigName=started["expected_config"])
    assert config["KmsKeyId"] == settings.kms_key_arn
    assert config["DataCaptureConfig"]["KmsKeyId"] == settings.kms_key_arn


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not JSON"),
        ('{"Subnets": ["subnet-1"]}', "both non-empty"),
        ('{"Subnets": [], "SecurityGroupIds": ["sg-1"]}', "both non-empty"),
    ],
)
def test_a_bad_vpc_environment_is_named(text, message):
    assert vpc_config_from_json("") is None
    with pytest.raises(ValueError, match=f"REFIT_VPC_CONFIG: .*{message}"):
        vpc_config_from_json(text)
