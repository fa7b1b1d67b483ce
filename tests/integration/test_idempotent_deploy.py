"""A retried Deploy action (Step Functions retries a Lambda that timed out or was throttled, with the same input) on
moto with SageMaker's unique names enforced (scripts/local_aws/limits.py): the second `redeploy` or `promote` neither
fails on what the first created nor creates or asks for anything twice, and returns the first one's result."""

from __future__ import annotations

import dataclasses

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from moto.sagemaker.models import sagemaker_backends
from refit_core import names
from refit_core.champion import PACKAGE_ENV
from refit_core.idempotent import ExistingResourceDiffers
from refit_handlers.deploy import Promote, Redeploy, promote, redeploy

from scripts.local_aws.limits import enforce_aws_rules
from tests.conftest import handler_settings

ACCOUNT, REGION = "123456789012", "us-east-1"
SETTINGS = dataclasses.replace(
    handler_settings(), state_machine_arn=f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:refit-churn"
)
REQUEST = Redeploy(action="redeploy", run_id="r7", version=1, kind="rollback")


class Endpoints:
    """The SageMaker client with UpdateEndpoint as SageMaker has it (moto has none): asynchronous (the endpoint is
    Updating on the new config when the call returns), refused while an update is under way, and optionally throttled
    on its first call (the Lambda's first attempt then fails after creating its model and config)."""

    def __init__(self, client, throttle_first: bool = False) -> None:
        self.client, self.throttle, self.updates = client, throttle_first, []

    def __getattr__(self, name):
        return getattr(self.client, name)

    def update_endpoint(self, EndpointName: str, EndpointConfigName: str) -> dict:  # noqa: N803 (boto3's names)
        if self.throttle:
            self.throttle = False
            raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}, "UpdateEndpoint")
        endpoint = sagemaker_backends[ACCOUNT][REGION].endpoints[EndpointName]
        if endpoint.endpoint_status == "Updating":
            raise ClientError(
                {
                    "Error": {
                        "Code": "ValidationException",
                        "Message": f"Cannot update in-progress endpoint {EndpointName}",
                    }
                },
                "UpdateEndpoint",
            )
        self.updates.append(EndpointConfigName)
        endpoint.endpoint_config_name, endpoint.endpoint_status = EndpointConfigName, "Updating"
        return {"EndpointArn": endpoint.arn}

    def finish_update(self, name: str = "e") -> None:
        sagemaker_backends[ACCOUNT][REGION].endpoints[name].endpoint_status = "InService"


@pytest.fixture
def aws():
    """Versions 1 and 2 registered; the endpoint `e` serves version 2 (config `c-v2`)."""
    with mock_aws(), enforce_aws_rules():
        sagemaker = boto3.client("sagemaker", region_name=REGION)
        sagemaker.create_model_package_group(ModelPackageGroupName="g")
        arns = [
            sagemaker.create_model_package(
                ModelPackageGroupName="g",
                ModelApprovalStatus="Approved",
                InferenceSpecification={
                    "Containers": [{"Image": "img:1", "ModelDataUrl": f"s3://art/training/churn/j{v}/model.tar.gz"}],
                    "SupportedContentTypes": ["text/csv"],
                    "SupportedResponseMIMETypes": ["text/csv"],
                },
            )["ModelPackageArn"]
            for v in (1, 2)
        ]
        sagemaker.create_model(
            ModelName="m-v2",
            ExecutionRoleArn=SETTINGS.sagemaker_role_arn,
            PrimaryContainer={
                "Image": "img:1",
                "ModelDataUrl": "s3://art/training/churn/j2/model.tar.gz",
                "Environment": {PACKAGE_ENV: arns[1]},
            },
        )
        sagemaker.create_endpoint_config(
            EndpointConfigName="c-v2",
            ProductionVariants=[
                {
                    "VariantName": "champion",
                    "ModelName": "m-v2",
                    "InitialInstanceCount": 1,
                    "InstanceType": SETTINGS.model.serving_instance_type,
                    "InitialVariantWeight": 1.0,
                }
            ],
        )
        sagemaker.create_endpoint(EndpointName="e", EndpointConfigName="c-v2")
        yield sagemaker, boto3.client("application-autoscaling", region_name=REGION)


def configs(sagemaker) -> list[str]:
    return sorted(c["EndpointConfigName"] for c in sagemaker.list_endpoint_configs()["EndpointConfigs"])


def test_a_redeploy_retried_after_its_update_reports_that_update(aws):
    client, autoscaling = aws
    sagemaker = Endpoints(client)
    first = redeploy(REQUEST, SETTINGS, sagemaker, autoscaling)
    assert (first["previous_config"], first["previous_version"], first["version"]) == ("c-v2", 2, 1)
    # The retry comes while the endpoint is still Updating (SageMaker would refuse a second UpdateEndpoint) ...
    assert redeploy(REQUEST, SETTINGS, sagemaker, autoscaling) == first
    sagemaker.finish_update()
    # ... or after the update is done (the version now serves: a fresh request for it would be refused).
    assert redeploy(REQUEST, SETTINGS, sagemaker, autoscaling) == first
    assert sagemaker.updates == [first["expected_config"]]
    assert configs(client) == sorted(["c-v2", first["expected_config"]])
    assert client.describe_endpoint(EndpointName="e")["EndpointConfigName"] == first["expected_config"]


def test_a_redeploy_whose_update_was_throttled_reuses_its_model_and_config(aws):
    client, autoscaling = aws
    sagemaker = Endpoints(client, throttle_first=True)
    with pytest.raises(ClientError, match="ThrottlingException"):
        redeploy(REQUEST, SETTINGS, sagemaker, autoscaling)  # after CreateModel and CreateEndpointConfig
    second = redeploy(REQUEST, SETTINGS, sagemaker, autoscaling)
    assert (second["previous_config"], second["previous_version"]) == ("c-v2", 2)
    assert sagemaker.updates == [second["expected_config"]]
    assert configs(client) == sorted(["c-v2", second["expected_config"]])
    assert len(client.list_models()["Models"]) == 2  # m-v2 and the run's one model


def test_an_existing_model_of_the_runs_name_that_is_not_this_version_is_an_error(aws):
    client, autoscaling = aws
    name = names.model_name("e", REQUEST.run_id)
    client.create_model(
        ModelName=name,
        ExecutionRoleArn=SETTINGS.sagemaker_role_arn,
        PrimaryContainer={"Image": "img:1", "ModelDataUrl": "s3://art/training/churn/j9/model.tar.gz"},
    )
    sagemaker = Endpoints(client)
    with pytest.raises(ExistingResourceDiffers, match=f"model {name}: ModelDataUrl is .*j9.*asks for .*j1"):
        redeploy(REQUEST, SETTINGS, sagemaker, autoscaling)
    assert sagemaker.updates == [] and configs(client) == ["c-v2"]


def test_a_promotion_retried_after_its_update_reports_that_update(aws):
    client, autoscaling = aws
    sagemaker = Endpoints(client, throttle_first=True)
    request = Promote(action="promote", run_id="r8", challenger_model="m-v2")
    with pytest.raises(ClientError, match="ThrottlingException"):
        promote(request, SETTINGS, sagemaker, autoscaling)
    first = promote(request, SETTINGS, sagemaker, autoscaling)
    assert promote(request, SETTINGS, sagemaker, autoscaling) == first
    assert sagemaker.updates == [first["expected_config"]] and first["requested_at"]
    assert configs(client) == sorted(["c-v2", first["expected_config"]])
