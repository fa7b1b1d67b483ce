"""The Application Auto Scaling bridge (scripts/local_aws/autoscaling.py) over moto: each gap it closes, shown with
the bridge in place and, where moto's own behaviour differs, without it."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from moto.sagemaker.exceptions import ValidationError as SageMakerValidationError
from refit_core import capacity
from refit_core.canary import variant
from refit_core.config import AutoscalingSettings

from scripts.local_aws import autoscaling

ACCOUNT, REGION = "123456789012", "us-east-1"
SCALING = AutoscalingSettings(min_instances=1, max_instances=3, target_invocations_per_instance=50)


@pytest.fixture
def aws():
    with mock_aws():
        import boto3

        sagemaker = boto3.client("sagemaker", region_name=REGION)
        sagemaker.create_model(
            ModelName="m1", ExecutionRoleArn=f"arn:aws:iam::{ACCOUNT}:role/r", PrimaryContainer={"Image": "i:1"}
        )
        sagemaker.create_endpoint_config(
            EndpointConfigName="c1", ProductionVariants=[variant("m1", "champion", 1.0, "ml.m5.large", 2)]
        )
        sagemaker.create_endpoint(EndpointName="e", EndpointConfigName="c1")
        yield sagemaker, boto3.client("application-autoscaling", region_name=REGION)


@pytest.fixture
def bridged(aws):
    patches = autoscaling.patches(ACCOUNT, REGION)
    for patch in patches:
        patch.start()
    yield aws
    for patch in patches:
        patch.stop()


def policies(client) -> list[dict]:
    return client.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]


def test_moto_alone_registers_a_variant_that_does_not_exist_and_keeps_policies_of_a_deregistered_target(aws):
    _, client = aws
    capacity.register(client, "nowhere", "champion", SCALING)  # no endpoint "nowhere": AWS refuses
    client.deregister_scalable_target(
        ServiceNamespace="sagemaker",
        ResourceId=capacity.resource_id("nowhere", "champion"),
        ScalableDimension=capacity.DIMENSION,
    )
    assert len(policies(client)) == 1  # AWS deletes a target's policies with it


def test_a_variant_must_exist_to_be_registered(bridged):
    _, client = bridged
    for endpoint, name, missing in (
        ("nowhere", "champion", "Endpoint nowhere"),
        ("e", "challenger", "Variant challenger"),
    ):
        with pytest.raises(ClientError) as error:
            capacity.register(client, endpoint, name, SCALING)
        assert error.value.response["Error"]["Code"] == "ValidationException" and missing in str(error.value)
    registered = capacity.register(client, "e", "champion", SCALING)
    assert registered["resource_id"] == "endpoint/e/variant/champion" and registered["policy_arn"]
    target = client.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"][0]
    assert (target["MinCapacity"], target["MaxCapacity"]) == (1, 3)
    policy = policies(client)[0]["TargetTrackingScalingPolicyConfiguration"]
    assert policy["TargetValue"] == 50.0
    assert policy["PredefinedMetricSpecification"]["PredefinedMetricType"] == "SageMakerVariantInvocationsPerInstance"


def test_a_new_target_needs_its_bounds_in_order(bridged):
    _, client = bridged
    resource = capacity.resource_id("e", "champion")
    with pytest.raises(ClientError, match="MinCapacity and MaxCapacity are required"):
        client.register_scalable_target(
            ServiceNamespace="sagemaker", ResourceId=resource, ScalableDimension=capacity.DIMENSION, MinCapacity=1
        )
    with pytest.raises(ClientError, match="cannot be greater"):
        client.register_scalable_target(
            ServiceNamespace="sagemaker",
            ResourceId=resource,
            ScalableDimension=capacity.DIMENSION,
            MinCapacity=3,
            MaxCapacity=2,
        )


def test_deregistering_deletes_the_policies_and_deleting_the_endpoint_deregisters(bridged):
    sagemaker, client = bridged
    capacity.register(client, "e", "champion", SCALING)
    endpoint = sagemaker.describe_endpoint(EndpointName="e")
    assert capacity.deregister(client, "e", endpoint) == ["champion"]
    assert policies(client) == [] and capacity.scalable_targets(client, "e", ["champion"]) == []
    capacity.register(client, "e", "champion", SCALING)
    sagemaker.delete_endpoint(EndpointName="e")
    assert client.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"] == []
    assert policies(client) == []


def test_update_endpoint_is_refused_while_a_variant_it_removes_or_retypes_is_registered(bridged):
    sagemaker, client = bridged
    champion = [variant("m1", "champion", 1.0, "ml.m5.large")]
    canary = [*champion, variant("m2", "challenger", 0.1, "ml.m5.large")]
    retyped = [variant("m2", "champion", 1.0, "ml.m5.xlarge")]
    promoted = [variant("m2", "champion", 1.0, "ml.m5.large")]
    capacity.register(client, "e", "champion", SCALING)
    assert autoscaling.refuse_update(ACCOUNT, REGION, "e", champion, canary) is None  # adds a variant
    assert autoscaling.refuse_update(ACCOUNT, REGION, "e", champion, promoted) is None  # a new model only
    assert "['champion']" in autoscaling.refuse_update(ACCOUNT, REGION, "e", champion, retyped)
    assert "['champion']" in autoscaling.refuse_update(ACCOUNT, REGION, "e", canary, [canary[1]])  # removes it
    capacity.deregister(client, "e", sagemaker.describe_endpoint(EndpointName="e"))
    assert autoscaling.refuse_update(ACCOUNT, REGION, "e", champion, retyped) is None


def test_restore_keeps_the_targets_of_variants_the_update_leaves_in_place():
    current = [variant("m1", "champion", 0.8, "ml.m5.large"), variant("m2", "challenger", 0.2, "ml.m5.large")]
    assert capacity.unchanged_variants(current, [variant("m1", "champion", 1.0, "ml.m5.large")]) == {"champion"}
    assert capacity.unchanged_variants(current, [variant("m1", "champion", 1.0, "ml.m5.xlarge")]) == set()


def counts(sagemaker) -> list:
    return [
        (v["VariantName"], v.get("CurrentInstanceCount"))
        for v in sagemaker.describe_endpoint(EndpointName="e")["ProductionVariants"]
    ]


def test_a_weight_change_keeps_the_instance_count(aws):
    sagemaker, _ = aws
    weights_only = [{"VariantName": "champion", "DesiredWeight": 1.0}]
    sagemaker.update_endpoint_weights_and_capacities(EndpointName="e", DesiredWeightsAndCapacities=weights_only)
    assert counts(sagemaker) == [("champion", None)]  # moto alone forgets the count
    patches = autoscaling.patches(ACCOUNT, REGION)
    for patch in patches:
        patch.start()
    try:
        scaled = [{"VariantName": "champion", "DesiredInstanceCount": 3}]
        sagemaker.update_endpoint_weights_and_capacities(EndpointName="e", DesiredWeightsAndCapacities=scaled)
        sagemaker.update_endpoint_weights_and_capacities(EndpointName="e", DesiredWeightsAndCapacities=weights_only)
        assert counts(sagemaker) == [("champion", 3)]
    finally:
        for patch in patches:
            patch.stop()


def test_update_endpoint_retains_the_variant_properties_it_is_asked_to():
    assert autoscaling.retained_properties(None, None) == frozenset()
    assert autoscaling.retained_properties(True, [{"VariantPropertyType": "DesiredWeight"}]) == {"DesiredInstanceCount"}
    assert autoscaling.retained_properties(True, []) == {"DesiredInstanceCount", "DesiredWeight"}
    # AWS documents DataCaptureConfig as not currently supported there: refused, so refit never sends it.
    with pytest.raises(SageMakerValidationError, match="DataCaptureConfig is not currently supported"):
        autoscaling.retained_properties(True, [{"VariantPropertyType": "DataCaptureConfig"}])
    old = [{"VariantName": "champion", "CurrentInstanceCount": 3, "DesiredInstanceCount": 3, "CurrentWeight": 0.8}]
    new = [
        {"VariantName": "champion", "CurrentInstanceCount": 1, "DesiredInstanceCount": 1, "CurrentWeight": 1.0},
        {"VariantName": "other", "CurrentInstanceCount": 1},
    ]
    autoscaling.retain(old, new, frozenset({"DesiredInstanceCount"}))
    assert new == [
        {"VariantName": "champion", "CurrentInstanceCount": 3, "DesiredInstanceCount": 3, "CurrentWeight": 1.0},
        {"VariantName": "other", "CurrentInstanceCount": 1},
    ]
