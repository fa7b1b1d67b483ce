"""A second configuration of the example model — manual approval with separation of duties, no on-demand fallback —
on the local runtime: approve, reject and timeout through the `refit` CLI (a SigV4-signed request to the model's
Approve function URL, which decides as the verified caller), lineage and diff, a spot job that finds no capacity, and
an approval by the stack's approver role (its synthesized policy enforced by the local IAM) of a run another identity
started, after the starter's own approval was refused by the function, through the CLI and calling the URL directly."""

from __future__ import annotations

import io
import json
import time

import boto3
import pytest
from botocore.exceptions import ClientError
from refit_core.approvals import approval_key
from refit_core.identity import CallerIdentity

from scripts.cli import main as refit
from scripts.local_aws.runtime import LocalRuntime
from scripts.run_commands import signed_post
from scripts.sample_data import churn_batch, to_csv_bytes
from stacks.app_builder import code_version
from tests.conftest import ROOT

MODEL = "manual"  # approval manual, a 30 s timeout; the project's separation_of_duties (tests/assemblies.py)


@pytest.fixture(scope="module")
def config_path(runs_config):
    return runs_config


@pytest.fixture(scope="module")
def aws(runs_assembly, tmp_path_factory):
    with LocalRuntime(runs_assembly, tmp_path_factory.mktemp("runtime-manual"), seed=5) as runtime:
        yield runtime


def pending(aws, version, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        item = (
            aws.client("dynamodb")
            .get_item(
                TableName=aws.audit_table,
                Key={"pk": {"S": f"approval#{MODEL}"}, "sk": {"S": f"approval#{version:06d}"}},
            )
            .get("Item")
        )
        if item:
            return item
        time.sleep(0.1)
    raise AssertionError(f"version {version} never waited for approval")


def record_for(aws, execution_arn):
    return next(r for r in aws.audit_records(MODEL) if r["execution"] == execution_arn.rsplit(":", 1)[-1])


def package_status(aws, version):
    packages = aws.client("sagemaker").list_model_packages(ModelPackageGroupName=aws.model(MODEL).package_group)
    return next(
        p["ModelApprovalStatus"] for p in packages["ModelPackageSummaryList"] if p["ModelPackageVersion"] == version
    )


def outputs_file(aws) -> str:
    """The stack's outputs as `cdk deploy --outputs-file` writes them: where `refit approve` finds the URLs."""
    path = aws.workdir / "outputs.json"
    path.write_text(json.dumps(aws.outputs))
    return str(path)


def cli(config_path, *arguments):
    out, err = io.StringIO(), io.StringIO()
    code = refit(["--config", str(config_path), *arguments], out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_approved_version_is_deployed_and_the_endpoint_waits_untouched(aws, config_path):
    execution_arn = aws.land_batch(MODEL, "first.csv", to_csv_bytes(churn_batch(3000, 1)))
    pending(aws, 1)
    assert package_status(aws, 1) == "PendingManualApproval"
    assert aws.client("sagemaker").list_endpoints()["Endpoints"] == []
    assert "awaits approval" in aws.published_summaries()[-1]["subject"]
    code, out, err = cli(
        config_path, "approve", MODEL, "1", "--stack-outputs", outputs_file(aws), "--comment", "checked the holdout"
    )
    assert code == 0 and json.loads(out)["status"] == "Approved", err
    record = record_for(aws, aws.wait_for(execution_arn)["executionArn"])
    assert record["outcome"] == "deployed_first" and record["approval"]["approved"] is True
    assert package_status(aws, 1) == "Approved"
    assert aws.endpoint_weights(MODEL) == {"champion": 1.0}


def test_rejected_version_leaves_the_champion(aws, config_path):
    before = (
        aws.endpoint_weights(MODEL),
        aws.client("sagemaker").describe_endpoint(EndpointName=aws.model(MODEL).endpoint_name)["EndpointConfigName"],
    )
    execution_arn = aws.land_batch(MODEL, "drifted.csv", to_csv_bytes(churn_batch(3000, 2, shift=1.0)))
    pending(aws, 2)
    code, out, _ = cli(
        config_path,
        "reject",
        MODEL,
        "2",
        "--stack-outputs",
        outputs_file(aws),
        "--comment",
        "segment south looks off",
    )
    assert code == 0
    record = record_for(aws, aws.wait_for(execution_arn)["executionArn"])
    assert record["outcome"] == "not_approved" and "segment south looks off" in record["message"]
    assert package_status(aws, 2) == "Rejected"
    after = (
        aws.endpoint_weights(MODEL),
        aws.client("sagemaker").describe_endpoint(EndpointName=aws.model(MODEL).endpoint_name)["EndpointConfigName"],
    )
    assert after == before
    code, _, err = cli(config_path, "approve", MODEL, "2", "--stack-outputs", outputs_file(aws))
    assert code == 2 and err.strip() == "refit: no approval is pending for manual version 2"


def test_no_decision_before_the_timeout_rejects(aws):
    execution_arn = aws.land_batch(MODEL, "drifted-again.csv", to_csv_bytes(churn_batch(3000, 3, shift=1.0)))
    pending(aws, 3)
    record = record_for(aws, aws.wait_for(execution_arn, timeout=120)["executionArn"])
    assert record["outcome"] == "approval_timed_out"
    assert package_status(aws, 3) == "Rejected"


def test_lineage_and_diff_name_data_code_settings_and_metrics(aws, config_path):
    code, out, err = cli(config_path, "lineage", MODEL, "1")
    assert code == 0, err
    lineage = json.loads(out)
    assert code == 0 and lineage["version"] == 1 and lineage["approval"] == "Approved"
    assert lineage["inputs"][0]["uri"].endswith(f"incoming/{MODEL}/first.csv") and lineage["inputs"][0]["version_id"]
    assert lineage["code_version"] == code_version(ROOT) and lineage["image_digest"].startswith("sha256:")
    assert lineage["hyperparameters"]["target"] == "churned" and lineage["baseline_uri"].startswith("s3://")
    assert lineage["gate"]["reason"] and lineage["training_job"]
    code, out, _ = cli(config_path, "diff", MODEL, "1", "2")
    difference = json.loads(out)
    assert code == 0 and (difference["from_version"], difference["to_version"]) == (1, 2)
    assert any(uri.endswith("drifted.csv") for uri in difference["data"]["added"])
    assert set(difference["metrics"]) >= {"roc_auc", "recall"}
    code, _, err = cli(config_path, "lineage", MODEL, "99")
    assert code == 1 and "no version 99" in err


def test_without_fallback_a_spot_capacity_timeout_fails_the_run_and_keeps_the_champion(aws):
    before = aws.client("sagemaker").describe_endpoint(EndpointName=aws.model(MODEL).endpoint_name)[
        "EndpointConfigName"
    ]
    aws.next_training_outcome("capacity")
    key = f"s3://{aws.data_bucket}/incoming/{MODEL}/first.csv"
    execution = aws.wait_for(aws.start_run(MODEL, {"data_uri": key, "force": True}))
    record = record_for(aws, execution["executionArn"])
    assert execution["status"] == "FAILED" and record["outcome"] == "training_failed"
    assert "MaxWaitTimeInSeconds" in record["message"] and record["training"]["job_name"].endswith("-s1")
    after = aws.client("sagemaker").describe_endpoint(EndpointName=aws.model(MODEL).endpoint_name)["EndpointConfigName"]
    assert after == before


def test_the_approver_is_the_callers_aws_identity_and_the_starter_may_not_approve(aws, config_path, tmp_path):
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps(aws.outputs))
    starter = CallerIdentity.of(aws.client("sts")).arn  # this process: moto's user
    key = f"s3://{aws.data_bucket}/incoming/{MODEL}/drifted.csv"
    code, out, err = cli(
        config_path, "trigger", MODEL, "--force", "--data", key, "--stack-outputs", str(outputs), "--json"
    )
    assert code == 0, err
    started = json.loads(out)
    assert started["input"]["requested_by"] == starter
    item = pending(aws, 4)
    assert item["started_by"]["S"] == starter and item["trigger"]["S"] == "manual"
    # The starter's own approval is refused by the Approve function (exit 2, one line naming the rule), through the
    # CLI and calling the URL directly naming someone else: nothing changes
    code, _, err = cli(config_path, "approve", MODEL, "4", "--stack-outputs", str(outputs))
    assert code == 2 and err.strip().startswith("refit: separation of duties:") and starter in err
    role = next(v for k, v in aws.outputs.items() if "ApproverRoleArn" in k)
    approver = f"arn:aws:sts::123456789012:assumed-role/{role.rsplit('/', 1)[-1]}/ana"
    url = json.loads(aws.outputs["ApproveUrls"])[MODEL]
    host = boto3.Session().get_credentials().get_frozen_credentials()
    decision = {"model": MODEL, "version": 4, "decision": "approve"}
    status, body = signed_post(url, json.dumps(decision).encode(), host, aws.region)
    assert status == 403 and json.loads(body)["error"].startswith(f"separation of duties: {starter} started run")
    status, body = signed_post(url, json.dumps({**decision, "by": approver}).encode(), host, aws.region)
    assert status == 400 and "by: Extra inputs are not permitted" in json.loads(body)["error"]
    assert package_status(aws, 4) == "PendingManualApproval" and pending(aws, 4, timeout=1)
    # A session of the approver role (only what its synthesized policy allows) approves: boto3.client() in this
    # thread signs as the role, the way the local runtime signs a Lambda invocation as its function's role. It cannot
    # read the task token or send a task result itself: only the Approve function can.
    aws.bridges.default_session.session = aws.bridges.role_session(role, "ana")
    try:
        with pytest.raises(ClientError, match="not authorized to perform: dynamodb:GetItem"):
            boto3.client("dynamodb").get_item(TableName=aws.audit_table, Key=approval_key(MODEL, 4))
        with pytest.raises(ClientError, match="not authorized to perform: states:SendTaskSuccess"):
            boto3.client("stepfunctions").send_task_success(taskToken=item["task_token"]["S"], output="{}")
        code, out, err = cli(config_path, "approve", MODEL, "4", "--stack-outputs", str(outputs), "--comment", "ok")
    finally:
        aws.bridges.default_session.session = None
    assert code == 0, err
    assert json.loads(out)["by"] == approver
    assert {d.request.action for d in aws.iam.decisions if d.principal == role and d.allowed} == {
        "lambda:InvokeFunctionUrl",
        "lambda:InvokeFunction",
    }
    approve_role = next(f.role_arn for f in aws.stack.functions.values() if f.handler.endswith(".decide_handler"))
    assert {d.request.action for d in aws.iam.decisions if d.principal == approve_role and d.allowed} == {
        "dynamodb:GetItem",
        "dynamodb:UpdateItem",  # its claim on the approval item
        "sagemaker:DescribeModelPackage",
        "sagemaker:UpdateModelPackage",
        "states:SendTaskSuccess",
        "dynamodb:DeleteItem",
    }
    record = record_for(aws, aws.wait_for(started["execution_arn"])["executionArn"])
    assert record["approval"]["approved"] is True and record["approval"]["by"] == approver
    assert record["approval"]["started_by"] == starter and record["approval"]["separation_of_duties"] is True
    package = aws.client("sagemaker").describe_model_package(ModelPackageName=item["model_package_arn"]["S"])
    # Who decided stays in the registry whatever the run did next (here the canary saw no traffic and rolled back,
    # so Finalize set the package Rejected with its own ApprovalDescription)
    metadata = package["CustomerMetadataProperties"]
    assert (metadata["refit:decided_by"], metadata["refit:decision"], metadata["refit:started_by"]) == (
        approver,
        "Approved",
        starter,
    )
