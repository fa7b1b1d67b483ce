"""`refit rollback` and `refit promote` on the local runtime, end to end through the CLI: two versions served by
retrain runs (v1 first, v2 through the canary), a rollback to v1, a promotion back to v2, a rollback without --to,
and a redeploy whose endpoint update fails. Each redeploy is a run of the model's state machine with an audit
record; the registry marks the package that serves. Tests share one runtime and run in order."""

from __future__ import annotations

import io
import json

import pytest
from refit_core.champion import SERVING, find_champion, find_serving_package

from scripts.cli import main
from scripts.local_aws.runtime import LocalRuntime
from scripts.sample_data import churn_batch, to_csv_bytes
from tests.conftest import ROOT

MODEL = "churn"
HOST = "arn:aws:sts::123456789012:user/moto"  # the test process's STS identity on the local runtime (moto's)


@pytest.fixture(scope="module")
def aws(cloud_assembly, tmp_path_factory):
    with LocalRuntime(cloud_assembly, tmp_path_factory.mktemp("redeploy"), seed=11) as runtime:
        yield runtime


@pytest.fixture(scope="module")
def refit(aws, tmp_path_factory):
    outputs = tmp_path_factory.mktemp("outputs") / "outputs.json"
    outputs.write_text(json.dumps(aws.outputs))

    def call(*arguments: str) -> tuple[int, dict | None, str]:
        out, err = io.StringIO(), io.StringIO()
        code = main(
            ["--config", str(ROOT / "refit.toml"), *arguments, "--stack-outputs", str(outputs), "--json"],
            out=out,
            err=err,
        )
        text = out.getvalue().strip()
        return code, json.loads(text) if text else None, err.getvalue()

    return call


@pytest.fixture(scope="module")
def two_versions(aws):
    """v1 deployed by the first run, v2 promoted through the canary (traffic during the bake)."""
    first = aws.wait_for(aws.land_batch(MODEL, "first.csv", to_csv_bytes(churn_batch(3000, 1))))
    assert first["status"] == "SUCCEEDED"

    def traffic(state, seconds):
        rows = churn_batch(700, 9, shift=1.0).drop(columns=["churned"]).to_csv(index=False, header=False)
        for line in rows.splitlines():
            aws.invoke_endpoint(MODEL, line)

    aws.on_wait("Bake canary", traffic)
    try:
        second = aws.wait_for(aws.land_batch(MODEL, "drifted.csv", to_csv_bytes(churn_batch(3000, 6, shift=1.0))))
    finally:
        aws.on_wait("Bake canary", None)
    record = record_of(aws, second["executionArn"])
    assert record["outcome"] == "promoted", record["message"]
    return {v: package(aws, v) for v in (1, 2)}


def record_of(aws, execution_arn):
    name = execution_arn.rsplit(":", 1)[-1]
    return next(r for r in aws.audit_records(MODEL) if r["execution"] == name)


def package(aws, version):
    sagemaker = aws.client("sagemaker")
    summaries = sagemaker.list_model_packages(ModelPackageGroupName=aws.model(MODEL).package_group)
    arn = next(
        p["ModelPackageArn"] for p in summaries["ModelPackageSummaryList"] if p["ModelPackageVersion"] == version
    )
    return sagemaker.describe_model_package(ModelPackageName=arn)


def serving(aws):
    """(the endpoint's champion version and artifact, the registry's serving version)"""
    sagemaker = aws.client("sagemaker")
    champion = find_champion(sagemaker, aws.model(MODEL).endpoint_name)
    registry = find_serving_package(sagemaker, aws.model(MODEL).package_group)
    return champion["version"], champion["model_data_url"], registry["version"] if registry else None


def artifact(package_description):
    return package_description["InferenceSpecification"]["Containers"][0]["ModelDataUrl"]


def test_after_two_promotions_the_registry_marks_the_one_serving(aws, two_versions):
    assert serving(aws) == (2, artifact(two_versions[2]), 2)
    marked = package(aws, 2)["CustomerMetadataProperties"]
    assert marked[SERVING] == "true" and marked["refit:previous_version"] == "1"
    assert SERVING not in package(aws, 1)["CustomerMetadataProperties"]


def test_rollback_to_v1_serves_v1_and_is_recorded_as_a_run(aws, two_versions, refit, monkeypatch):
    monkeypatch.setenv("REFIT_USER", "ana")  # ignored: who asked is the caller's STS identity
    code, result, err = refit("rollback", MODEL, "--to", "1", "--reason", "p99 doubled since v2", "--follow")
    assert code == 0, err
    record = result["record"]
    assert (result["status"], record["status"], record["outcome"]) == ("SUCCEEDED", "SUCCEEDED", "redeployed")
    assert record["trigger"] == "manual" and record["execution"].startswith("rollback-")
    assert record["redeploy"]["kind"] == "rollback" and record["redeploy"]["requested_by"] == HOST
    assert (record["redeploy"]["version"], record["redeploy"]["previous_version"]) == (1, 2)
    assert "p99 doubled since v2" in record["trigger_reason"]
    assert [s["name"] for s in result["states"]][:4] == ["Read input", "Prepare", "Keep run context", "Lock acquired?"]
    assert not {"Check batch", "Start training", "Gate challenger"} & {s["name"] for s in result["states"]}
    # The endpoint serves v1's artifact as the single champion, and the registry says so
    assert serving(aws) == (1, artifact(two_versions[1]), 1)
    assert aws.endpoint_weights(MODEL) == {"champion": 1.0}
    assert record["endpoint"]["config"] == record["redeploy"]["expected_config"]
    v1, v2 = package(aws, 1)["CustomerMetadataProperties"], package(aws, 2)["CustomerMetadataProperties"]
    assert v1[SERVING] == "true" and v1["refit:previous_version"] == "2" and v1["refit:deployed_by"] == HOST
    assert SERVING not in v2 and v2["refit:rolled_back_by"] == HOST
    assert "p99 doubled since v2" in v2["refit:rolled_back_reason"] and v2["refit:rolled_back_run"] == record["run_id"]
    assert package(aws, 2)["ModelApprovalStatus"] == "Approved"  # rolled back by hand, not rejected
    reply = json.loads(aws.invoke_endpoint(MODEL, "12.0,70.5,1,48.0,basic,north")["body"])
    assert 0.0 <= reply["probabilities"][0] <= 1.0
    code, status, _ = refit("status", MODEL)
    assert code == 0 and status["registry"]["version"] == 1 and status["registry"]["agrees_with_endpoint"]


def test_promote_back_to_v2_then_rollback_without_to_returns_to_v1(aws, two_versions, refit):
    code, result, err = refit("promote", MODEL, "2", "--follow")
    assert code == 0 and result["record"]["outcome"] == "redeployed", err
    assert result["record"]["redeploy"]["kind"] == "promote"
    assert serving(aws) == (2, artifact(two_versions[2]), 2)
    assert SERVING not in package(aws, 1)["CustomerMetadataProperties"]
    # refused before anything starts: exit 2, one line
    executions = len(aws.executions(MODEL))
    for arguments, message in (
        (("promote", MODEL, "2"), "version 2 is already serving"),
        (("promote", MODEL, "99"), "version 99 is not in model package group refit-churn"),
    ):
        code, _, err = refit(*arguments)
        assert code == 2 and message in err and err.count("\n") == 1, err
    assert len(aws.executions(MODEL)) == executions
    # without --to: the version that served before the champion (the registry's refit:previous_version)
    code, result, err = refit("rollback", MODEL, "--follow")
    assert code == 0, err
    assert result["record"]["redeploy"]["version"] == 1 and serving(aws)[::2] == (1, 1)


def test_a_redeploy_whose_endpoint_update_fails_ends_failed_and_the_champion_keeps_serving(aws, two_versions, refit):
    """A registered version whose artifact does not load: SageMaker's health check fails and the update is rolled
    back (InService on the old config). The run sees the wrong config, restores, and ends FAILED with the
    endpoint's true state in its record."""
    sagemaker = aws.client("sagemaker")
    key = f"models/{MODEL}/broken/model.tar.gz"
    aws.put_object(aws.artifact_bucket, key, b"not a model archive")
    container = two_versions[1]["InferenceSpecification"]["Containers"][0]
    sagemaker.create_model_package(
        ModelPackageGroupName=aws.model(MODEL).package_group,
        ModelApprovalStatus="Approved",
        InferenceSpecification={
            "Containers": [{"Image": container["Image"], "ModelDataUrl": f"s3://{aws.artifact_bucket}/{key}"}],
            "SupportedContentTypes": ["text/csv"],
            "SupportedResponseMIMETypes": ["text/csv"],
        },
    )
    before = sagemaker.describe_endpoint(EndpointName=aws.model(MODEL).endpoint_name)["EndpointConfigName"]
    code, result, err = refit("promote", MODEL, "3", "--follow")
    assert code == 1, err
    record = result["record"]
    assert (result["status"], record["status"], record["outcome"]) == ("FAILED", "FAILED", "failed")
    assert "not the requested" in record["message"] and record["redeploy"]["version"] == 3
    # the endpoint's true state: InService on the old config, SageMaker's reason recorded
    assert record["endpoint"]["status"] == "InService" and record["endpoint"]["config"] == before
    assert "health check" in record["endpoint"]["failure_reason"]
    assert "Restore endpoint (redeploy)" in [s["name"] for s in result["states"]]
    assert serving(aws)[::2] == (1, 1)
    assert SERVING not in (package(aws, 3).get("CustomerMetadataProperties") or {})
    reply = json.loads(aws.invoke_endpoint(MODEL, "12.0,70.5,1,48.0,basic,north")["body"])
    assert 0.0 <= reply["probabilities"][0] <= 1.0
    # a Rejected version needs --force
    sagemaker.update_model_package(
        ModelPackageArn=package(aws, 3)["ModelPackageArn"], ModelApprovalStatus="Rejected", ApprovalDescription="bad"
    )
    code, _, err = refit("promote", MODEL, "3")
    assert code == 2 and "version 3 is Rejected in the registry (bad); pass --force" in err
