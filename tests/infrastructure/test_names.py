"""Two projects in one account, and two models whose names prefix each other (churn / churn-eu) in one project:
no physical name collides, and no model's IAM resource patterns match another model's resources."""

from __future__ import annotations

import json
import uuid

import pytest
from refit_core import names

from scripts.local_aws.cloud_assembly import CloudAssembly
from tests.conftest import ROOT
from tests.unit.test_names import iam_matches

# Properties that give a resource an account-wide (per region) physical name.
NAME_PROPERTIES = {
    "StateMachineName",
    "AlarmName",
    "ModelPackageGroupName",
    "RuleName",
    "FunctionName",
    "RoleName",
    "TableName",
    "BucketName",
    "TopicName",
    "LogGroupName",
    "RepositoryName",
    "ScheduleName",
    "EndpointName",
}


@pytest.fixture(scope="module")
def other_project(two_models_assembly):
    """Project `other` with churn and churn-eu (tests/conftest.py)."""
    return CloudAssembly.load(two_models_assembly)


def physical_names(assembly: CloudAssembly) -> set[str]:
    found = {f"stack/{assembly.stack_name}"}
    for resource in assembly.resources.values():
        for key, value in resource.get("Properties", {}).items():
            if key in NAME_PROPERTIES and isinstance(value, str):
                found.add(f"{resource['Type']}/{value}")
    return found


def test_two_projects_share_no_physical_name(cloud_assembly, other_project):
    refit = CloudAssembly.load(cloud_assembly)
    assert (refit.stack_name, other_project.stack_name) == ("refit", "other")
    mine, theirs = physical_names(refit), physical_names(other_project)
    assert "AWS::StepFunctions::StateMachine/refit-churn" in mine
    assert "AWS::StepFunctions::StateMachine/other-churn" in theirs
    assert "AWS::StepFunctions::StateMachine/other-churn-eu" in theirs
    assert "AWS::CloudWatch::Alarm/other-churn-eu--quality" in theirs
    assert mine & theirs == set()
    outputs = {o["Value"] for o in other_project.template["Outputs"].values() if isinstance(o["Value"], str)}
    assert {"other", "other-churn", "other-churn-eu"} <= outputs  # the Project output and the two endpoints


def sagemaker_patterns(assembly: CloudAssembly, logical_prefix: str) -> list[str]:
    """The SageMaker resource parts (`endpoint-config/...`) of every IAM statement in the model's policies."""
    patterns = []
    for logical, resource in assembly.resources.items():
        if resource["Type"] != "AWS::IAM::Policy" or not logical.startswith(logical_prefix):
            continue
        for statement in resource["Properties"]["PolicyDocument"]["Statement"]:
            arns = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            for arn in arns:
                parts = arn.get("Fn::Join", ["", []])[1] if isinstance(arn, dict) else [arn]
                text = "".join(p for p in parts if isinstance(p, str))
                if ":sagemaker:" in text:
                    patterns.append(text.rsplit(":", 1)[-1])
    return patterns


def resources_of(prefix: str) -> list[str]:
    runs = ["r1", "eu--r1", str(uuid.UUID(int=5)), "m" * 80]
    return (
        [f"endpoint/{prefix}", f"model-package-group/{prefix}", f"model-package/{prefix}/1"]
        + [f"model/{names.model_name(prefix, run)}" for run in runs]
        + [f"endpoint-config/{names.endpoint_config_name(prefix, run, s)}" for run in runs for s in ("first", "final")]
        + [f"training-job/{names.training_job_name(prefix, run, 1, True, 'hgb')}" for run in runs]
    )


@pytest.mark.parametrize(("one", "other"), [("churn", "churn-eu"), ("churn-eu", "churn")])
def test_iam_patterns_of_one_model_do_not_reach_the_other(other_project, one, other):
    patterns = sagemaker_patterns(other_project, f"Model{one.replace('-', '')}Functions")
    assert any(p.startswith("training-job/") for p in patterns) and any(p.startswith("model/") for p in patterns)
    own = resources_of(f"other-{one}")
    assert all(any(iam_matches(p, r) for p in patterns) for r in own if not r.startswith("model-package-group/"))
    reached = [r for r in resources_of(f"other-{other}") if any(iam_matches(p, r) for p in patterns)]
    assert reached == [], json.dumps({"patterns": patterns, "reached": reached})


def test_the_cli_reads_the_stack_named_after_the_project(monkeypatch):
    import argparse

    import boto3
    from moto import mock_aws

    from scripts import run_commands

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    template = {"Resources": {"T": {"Type": "AWS::SNS::Topic"}}, "Outputs": {"AuditTable": {"Value": "audit-1"}}}
    with mock_aws():
        boto3.client("cloudformation").create_stack(StackName="refit", TemplateBody=json.dumps(template))
        args = argparse.Namespace(audit_table=None, stack=None, config=str(ROOT / "refit.toml"))
        assert run_commands.Resources.from_args(args).audit_table == "audit-1"
