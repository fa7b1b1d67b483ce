"""Capacity on the local runtime (`deploy.capacity`: 2 instances a variant, autoscaling 1-4 on invocations per
instance). The first run deploys the champion and registers it for autoscaling; Application Auto Scaling then scales
it out to 3 (the UpdateEndpointWeightsAndCapacities it makes); a canary on that champion (a quiet window, so rolled
back) starts the champion at its 3 instances and the challenger at 2, deregisters the scalable target before each
UpdateEndpoint and registers the champion again after each wait for InService, returns the champion to its old config
with its 3 instances, and records the canary's instance-hours and cost. A `refit promote` of a version whose artifact
does not load (SageMaker rolls the update back) restores the endpoint and registers the champion again. The template
test reads the template the runtime stands up (cfn-lint and cdk-nag on it: tests/infrastructure/test_stack.py)."""

from __future__ import annotations

import io
import json
from datetime import datetime

import pytest
from refit_core.capacity import DIMENSION, METRIC, POLICY_NAME
from refit_core.names import endpoint_config_name

from scripts.cli import main
from scripts.local_aws.runtime import LocalRuntime
from scripts.sample_data import churn_batch, to_csv_bytes

MODEL = "capacity"  # 2 instances a variant, autoscaling 1-4 (tests/assemblies.py)
AUTOSCALING_WRITES = {"application-autoscaling:RegisterScalableTarget", "application-autoscaling:PutScalingPolicy"}


@pytest.fixture(scope="module")
def config(runs_config):
    return runs_config


@pytest.fixture(scope="module")
def aws(runs_assembly, tmp_path_factory):
    with LocalRuntime(runs_assembly, tmp_path_factory.mktemp("runtime-capacity"), seed=3) as runtime:
        yield runtime


def statements(aws, role_fragment: str) -> list[dict]:
    template = aws.assembly.template["Resources"]
    found = []
    for resource in template.values():
        if resource["Type"] != "AWS::IAM::Policy":
            continue
        roles = json.dumps(resource["Properties"]["Roles"])
        if f"Model{MODEL}Functions{role_fragment}" in roles:
            found.extend(resource["Properties"]["PolicyDocument"]["Statement"])
    return found


def autoscaling_grants(aws, role_fragment: str) -> dict[str, dict]:
    """Each Application Auto Scaling (and service-linked role) action the role's policies grant -> its statement
    (CDK merges statements with the same resources and conditions, so a statement may carry other actions too)."""
    return {
        action: statement
        for statement in statements(aws, role_fragment)
        for action in _list(statement["Action"])
        if action.startswith(("application-autoscaling:", "iam:CreateServiceLinkedRole"))
    }


def _list(value):
    return value if isinstance(value, list) else [value]


def test_autoscaling_grants_are_scoped_to_sagemaker_variants(aws):
    by_action = autoscaling_grants(aws, "DeployRole")
    assert set(by_action) == {
        "application-autoscaling:DescribeScalableTargets",
        "application-autoscaling:DeregisterScalableTarget",
        *AUTOSCALING_WRITES,
        "iam:CreateServiceLinkedRole",
    }
    assert by_action["application-autoscaling:DescribeScalableTargets"]["Resource"] == "*"  # no resource-level perms
    for action in ("application-autoscaling:DeregisterScalableTarget", *AUTOSCALING_WRITES):
        statement = by_action[action]
        assert json.dumps(statement["Resource"]).endswith(':scalable-target/*"]]}')
        assert statement["Condition"] == {
            "StringEquals": {
                "application-autoscaling:service-namespace": "sagemaker",
                "application-autoscaling:scalable-dimension": DIMENSION,
            }
        }
    service_linked = by_action["iam:CreateServiceLinkedRole"]
    assert "AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint" in json.dumps(service_linked["Resource"])
    assert service_linked["Condition"] == {
        "StringLike": {"iam:AWSServiceName": "sagemaker.application-autoscaling.amazonaws.com"}
    }
    # Cleanup (a run that died) may only look and deregister; no other function touches scaling.
    cleanup = set(autoscaling_grants(aws, "CleanupRole"))
    assert cleanup == {
        "application-autoscaling:DescribeScalableTargets",
        "application-autoscaling:DeregisterScalableTarget",
    }
    for other in ("PrepareRole", "FinalizeRole", "MonitorRole", "CheckBatchRole"):
        assert autoscaling_grants(aws, other) == {}


def endpoint(aws) -> dict:
    return aws.client("sagemaker").describe_endpoint(EndpointName=aws.model(MODEL).endpoint_name)


def scaling_state(aws) -> tuple[list[dict], list[dict]]:
    client = aws.client("application-autoscaling")
    targets = client.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
    policies = client.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]
    return targets, policies


def assert_champion_scales(aws) -> None:
    name = aws.model(MODEL).endpoint_name
    targets, policies = scaling_state(aws)
    assert [(t["ResourceId"], t["MinCapacity"], t["MaxCapacity"]) for t in targets] == [
        (f"endpoint/{name}/variant/champion", 1, 4)
    ]
    assert [(p["ResourceId"], p["PolicyName"], p["PolicyType"]) for p in policies] == [
        (f"endpoint/{name}/variant/champion", POLICY_NAME, "TargetTrackingScaling")
    ]
    tracking = policies[0]["TargetTrackingScalingPolicyConfiguration"]
    assert tracking["TargetValue"] == 100.0 and tracking["ScaleInCooldown"] == 600
    assert tracking["PredefinedMetricSpecification"]["PredefinedMetricType"] == METRIC


def deploy_calls(aws, since: int) -> list[str]:
    """The Deploy function's endpoint and scaling calls since decision `since`, in order (one entry per call)."""
    wanted = {
        "UpdateEndpoint",
        "CreateEndpoint",
        "DeregisterScalableTarget",
        "RegisterScalableTarget",
        "PutScalingPolicy",
    }
    calls: list[str] = []
    for decision in aws.iam.decisions[since:]:
        if "DeployRole" not in decision.principal or decision.operation not in wanted:
            continue
        if decision.request.action.startswith("iam:"):
            continue  # RegisterScalableTarget's second request (the service-linked role)
        if decision.operation.endswith("Endpoint") and decision.request.resource.split(":")[-1].startswith(
            "endpoint-config/"
        ):
            continue  # the same call's second resource
        calls.append(decision.operation)
    return calls


def test_the_first_deployment_registers_the_champion_for_autoscaling(aws):
    since = len(aws.iam.decisions)
    execution = aws.wait_for(aws.land_batch(MODEL, "first.csv", to_csv_bytes(churn_batch(3000, 1))), timeout=600)
    assert execution["status"] == "SUCCEEDED"
    assert deploy_calls(aws, since) == ["CreateEndpoint", "RegisterScalableTarget", "PutScalingPolicy"]
    assert_champion_scales(aws)
    assert [(v["VariantName"], v["CurrentInstanceCount"]) for v in endpoint(aws)["ProductionVariants"]] == [
        ("champion", 2)
    ]
    record = next(r for r in aws.audit_records(MODEL) if r["outcome"] == "deployed_first")
    assert record["capacity"]["canary"] is None and record["capacity"]["autoscaling"]["registered"] is True


def test_a_canary_on_a_scaled_out_champion_carries_its_scaling_and_records_its_cost(aws):
    name = aws.model(MODEL).endpoint_name
    sagemaker = aws.client("sagemaker")
    # Application Auto Scaling scales the champion out: the call it makes on the variant.
    sagemaker.update_endpoint_weights_and_capacities(
        EndpointName=name, DesiredWeightsAndCapacities=[{"VariantName": "champion", "DesiredInstanceCount": 3}]
    )
    before = endpoint(aws)["EndpointConfigName"]
    since = len(aws.iam.decisions)
    arn = aws.land_batch(MODEL, "quiet.csv", to_csv_bytes(churn_batch(3000, 5, shift=1.0)))
    execution = aws.wait_for(arn, timeout=600)
    record = next(r for r in aws.audit_records(MODEL) if r["execution"] == arn.rsplit(":", 1)[-1])
    record = json.loads(json.dumps(record, default=float))
    assert execution["status"] == "SUCCEEDED" and record["outcome"] == "rolled_back", record["message"]
    # Deregistered before each variant-changing UpdateEndpoint, registered again after each InService.
    assert deploy_calls(aws, since) == [
        "DeregisterScalableTarget",
        "UpdateEndpoint",  # the canary config
        "RegisterScalableTarget",
        "PutScalingPolicy",
        "DeregisterScalableTarget",
        "UpdateEndpoint",  # back to the champion's config
        "RegisterScalableTarget",
        "PutScalingPolicy",
    ]
    assert_champion_scales(aws)
    # The canary started the champion at its scaled-out count, the challenger at the configured one.
    canary = sagemaker.describe_endpoint_config(
        EndpointConfigName=endpoint_config_name(name, record["run_id"], "canary")
    )
    assert {v["VariantName"]: v["InitialInstanceCount"] for v in canary["ProductionVariants"]} == {
        "champion": 3,
        "challenger": 2,
    }
    # Back on its old config (which started it at 2), the champion keeps the 3 instances it serves with.
    served = endpoint(aws)
    assert served["EndpointConfigName"] == before
    assert [(v["VariantName"], v["CurrentInstanceCount"]) for v in served["ProductionVariants"]] == [("champion", 3)]
    cost = record["capacity"]["canary"]
    assert (cost["challenger_instances"], cost["instance_type"], cost["price_usd_per_hour"]) == (
        2,
        "ml.m5.large",
        0.115,
    )
    assert cost["ended_by"] == "rollback"
    seconds = (datetime.fromisoformat(cost["ended_at"]) - datetime.fromisoformat(cost["started_at"])).total_seconds()
    assert cost["seconds"] == seconds and cost["instance_hours"] == pytest.approx(2 * seconds / 3600, abs=1e-6)
    assert cost["cost_usd"] == pytest.approx(2 * seconds / 3600 * 0.115, abs=1e-6)
    assert record["capacity"]["autoscaling"]["variant"] == "champion"
    summary = next(s["message"] for s in aws.published_summaries() if record["run_id"] in s["message"])
    assert "Canary capacity: 2 x ml.m5.large" in summary


def test_a_failed_redeploy_restores_the_endpoint_and_registers_the_champion_again(aws, config, tmp_path):
    """The redeploy deregisters the champion's target before its UpdateEndpoint; SageMaker rolls the update back
    (the artifact does not load); the run restores (the endpoint is already on its config) and, once InService,
    registers the champion again: the run fails, the champion keeps serving and scaling."""
    sagemaker = aws.client("sagemaker")
    group = aws.model(MODEL).package_group
    packages = sagemaker.list_model_packages(ModelPackageGroupName=group)["ModelPackageSummaryList"]
    image = sagemaker.describe_model_package(ModelPackageName=packages[0]["ModelPackageArn"])["InferenceSpecification"]
    key = f"models/{MODEL}/broken/model.tar.gz"
    aws.put_object(aws.artifact_bucket, key, b"not a model archive")
    sagemaker.create_model_package(
        ModelPackageGroupName=group,
        ModelApprovalStatus="Approved",
        InferenceSpecification={
            "Containers": [
                {"Image": image["Containers"][0]["Image"], "ModelDataUrl": f"s3://{aws.artifact_bucket}/{key}"}
            ],
            "SupportedContentTypes": ["text/csv"],
            "SupportedResponseMIMETypes": ["text/csv"],
        },
    )
    version = len(packages) + 1
    before = endpoint(aws)["EndpointConfigName"]
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps(aws.outputs))
    since = len(aws.iam.decisions)
    out, err = io.StringIO(), io.StringIO()
    arguments = ["--config", str(config), "promote", MODEL, str(version), "--follow", "--stack-outputs", str(outputs)]
    code = main([*arguments, "--json"], out=out, err=err)
    result = json.loads(out.getvalue())
    assert code == 1 and result["record"]["outcome"] == "failed", err.getvalue()
    assert "Scale endpoint (restore, redeploy)" in [s["name"] for s in result["states"]]
    assert deploy_calls(aws, since) == [
        "DeregisterScalableTarget",
        "UpdateEndpoint",  # rolled back by SageMaker: still on the old config
        "RegisterScalableTarget",
        "PutScalingPolicy",
    ]
    assert endpoint(aws)["EndpointConfigName"] == before
    assert_champion_scales(aws)
