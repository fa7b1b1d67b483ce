"""deploy.mode guardrails on the local runtime: the retrain run updates the single-variant endpoint with UpdateEndpoint's
DeploymentConfig (all at once, a bake of a few seconds, the stack's 5XX and latency alarms) and reads the outcome from
the config the endpoint ends InService on. A healthy challenger is promoted; one that answers 5XX is rolled back by
SageMaker's (the bridge's) alarm rollback, which the run records; a rollback that itself fails ends the run FAILED
with the endpoint's true state in the audit record. In every case the registry agrees with the endpoint. The faulty
challengers and the traffic are those of the staged-canary tests. The tests share one runtime and run in order: the
healthy run comes before the faulty ones, whose 5XX keep the alarm in ALARM for minutes (as CloudWatch would)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from refit_core.champion import find_champion, find_serving_package
from refit_core.guardrails import alarm_names

from scripts.local_aws.runtime import LocalRuntime
from scripts.sample_data import churn_batch, to_csv_bytes
from tests.e2e.helpers import FaultAfterTraining, Traffic

MODEL = "guard"  # deploy.mode guardrails, all at once (tests/assemblies.py)
ROW = "12.0,70.5,1,48.0,basic,north"


@pytest.fixture(scope="module")
def aws(modes_assembly, tmp_path_factory):
    with LocalRuntime(modes_assembly, tmp_path_factory.mktemp("runtime-guardrails"), seed=11) as runtime:
        yield runtime


def run_with(aws, batch_name: str, seed: int, traffic: Traffic | None, shift: float = 1.0) -> tuple[dict, dict]:
    """A run on a drifted batch (`shift` away from the first batch's distribution), with `traffic` during each poll of
    the guarded update and its fault wrapped into the challenger."""
    if traffic is not None:
        aws.on_wait("Wait for guarded update", traffic)
        if traffic.fault:
            aws.on_wait("Wait for training", FaultAfterTraining(aws, traffic.fault, traffic.scratch))
    try:
        execution = aws.wait_for(
            aws.land_batch(MODEL, batch_name, to_csv_bytes(churn_batch(3000, seed, shift=shift))), timeout=600
        )
    finally:
        aws.on_wait("Wait for guarded update", None)
        aws.on_wait("Wait for training", None)
    name = execution["executionArn"].rsplit(":", 1)[-1]
    record = next(r for r in aws.audit_records(MODEL) if r["execution"] == name)
    return execution, json.loads(json.dumps(record, default=float))  # DynamoDB numbers are Decimals


def describe(aws) -> dict:
    return aws.client("sagemaker").describe_endpoint(EndpointName=aws.model(MODEL).endpoint_name)


def package(aws, record) -> dict:
    return aws.client("sagemaker").describe_model_package(ModelPackageName=record["registry"]["model_package_arn"])


def assert_serves(aws, record, config: str) -> None:
    """InService on `config` with the one variant, answering, and the audit record says the same."""
    endpoint = describe(aws)
    assert (endpoint["EndpointStatus"], endpoint["EndpointConfigName"]) == ("InService", config)
    assert (record["endpoint"]["status"], record["endpoint"]["config"]) == ("InService", config)
    assert aws.endpoint_weights(MODEL) == {"champion": 1.0}
    assert "probabilities" in json.loads(aws.invoke_endpoint(MODEL, ROW)["body"])
    assert_registry_agrees(aws)


def assert_registry_agrees(aws) -> None:
    """The package the registry alone marks serving is the one the endpoint's model names."""
    sagemaker = aws.client("sagemaker")
    serving = find_serving_package(sagemaker, aws.model(MODEL).package_group)
    assert serving["model_package_arn"] == find_champion(sagemaker, aws.model(MODEL).endpoint_name)["model_package_arn"]


def test_the_first_batch_creates_the_endpoint(aws):
    execution = aws.wait_for(aws.land_batch(MODEL, "first.csv", to_csv_bytes(churn_batch(3000, 1))), timeout=600)
    assert execution["status"] == "SUCCEEDED"
    assert aws.endpoint_weights(MODEL) == {"champion": 1.0}


def test_a_healthy_challenger_is_promoted_by_the_guarded_update(aws):
    before = describe(aws)["EndpointConfigName"]
    traffic = Traffic(aws, MODEL, 20)
    execution, record = run_with(aws, "healthy.csv", 8, traffic)
    assert (execution["status"], record["outcome"]) == ("SUCCEEDED", "promoted"), record["message"]
    guarded = record["guardrails"]
    assert guarded["next"] == "promoted" and guarded["previous_config"] == before
    assert guarded["config"] == guarded["expected_config"] == record["endpoint"]["config"] != before
    policy = guarded["deployment_config"]["BlueGreenUpdatePolicy"]
    assert policy["TrafficRoutingConfiguration"] == {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 3}
    # Requests sent while the update ran (each poll of the run's status loop) were all served.
    assert traffic.bakes >= 1 and traffic.errors == 0 and traffic.variants == {"champion": 20 * traffic.bakes}
    assert_serves(aws, record, guarded["expected_config"])
    serving = find_serving_package(aws.client("sagemaker"), aws.model(MODEL).package_group)
    assert serving["model_package_arn"] == record["registry"]["model_package_arn"]  # the run's package serves
    assert package(aws, record)["ModelApprovalStatus"] == "Approved"


def test_a_5xx_burst_is_rolled_back_by_the_alarm_and_the_run_records_it(aws, tmp_path):
    before = describe(aws)["EndpointConfigName"]
    traffic = Traffic(aws, MODEL, 30, "5xx", tmp_path)
    execution, record = run_with(aws, "errors.csv", 6, traffic, shift=2.0)  # drifted from the new champion
    assert (execution["status"], record["outcome"]) == ("SUCCEEDED", "rolled_back"), record["message"]
    guarded = record["guardrails"]
    assert guarded["next"] == "rolled_back" and guarded["config"] == before != guarded["expected_config"]
    assert "refit-guard--guardrails-5xx" in guarded["reason"] and "refit-guard--guardrails-5xx" in record["message"]
    assert {a["name"]: a["state"] for a in guarded["alarms"]}["refit-guard--guardrails-5xx"] == "ALARM"
    assert traffic.errors > 0  # the new fleet took the traffic and failed it
    assert_serves(aws, record, before)  # the champion serves again
    rejected = package(aws, record)
    assert rejected["ModelApprovalStatus"] == "Rejected" and "guardrails-5xx" in rejected["ApprovalDescription"]


def test_a_rollback_that_fails_ends_the_run_failed_with_the_endpoints_true_state(aws, tmp_path):
    before = describe(aws)["EndpointConfigName"]
    traffic = Traffic(aws, MODEL, 30, "5xx", tmp_path)
    aws.bridges.fail_guarded_rollbacks = True
    try:
        execution, record = run_with(aws, "broken.csv", 9, traffic, shift=2.0)
    finally:
        aws.bridges.fail_guarded_rollbacks = False
    assert (execution["status"], record["status"], record["outcome"]) == ("FAILED", "FAILED", "failed")
    assert "GuardedUpdateFailed" in record["error"] and "UpdateRollbackFailed" in record["error"]
    true_state = describe(aws)
    assert true_state["EndpointStatus"] == "UpdateRollbackFailed"
    for seen in (record["guardrails"], record["endpoint"]):  # as the status check saw it and as Finalize read it
        assert (seen["status"], seen["config"]) == ("UpdateRollbackFailed", true_state["EndpointConfigName"])
        assert seen["variants"] == [{"name": "champion", "weight": 1.0}]
        assert "rollback failed" in seen["failure_reason"]
    assert package(aws, record)["ModelApprovalStatus"] == "Rejected"
    # SageMaker's remedy is another UpdateEndpoint, an operator's call: it puts the champion back.
    aws.client("sagemaker").update_endpoint(EndpointName=aws.model(MODEL).endpoint_name, EndpointConfigName=before)
    assert describe(aws)["EndpointStatus"] == "InService"
    assert "probabilities" in json.loads(aws.invoke_endpoint(MODEL, ROW)["body"])
    assert_registry_agrees(aws)  # the champion the run left marked is the one serving again


def test_a_quiet_bake_is_not_promoted_refit_rolls_the_finished_update_back(aws):
    """SageMaker's alarms treat missing data as not breaching, so a bake without traffic completes on the new config;
    refit's bake verdict then finds fewer than min_invocations and returns the endpoint to the previous config with a
    second UpdateEndpoint. Registry and audit record agree with the endpoint."""
    before = describe(aws)["EndpointConfigName"]
    # The earlier 5XX bursts left the rollback alarms in ALARM, and the local runtime evaluates an alarm only when its
    # metric gets data, which a quiet bake never gives; CloudWatch evaluates every period and would be back to OK once
    # the burst left the evaluation range (missing data is not breaching). Evaluating them a few minutes ahead stands
    # in for that wait.
    # SageMaker's metrics have a one-minute resolution: the bakes' window starts at the minute of the UpdateEndpoint,
    # so the earlier tests' requests of this same minute would count (on AWS a run is minutes long). The clock passes
    # into the next minute first (at most 60 s; no state to poll stands for it).
    time.sleep(60 - datetime.now(UTC).second + 1)
    ahead = datetime.now(UTC) + timedelta(minutes=4)
    aws.bridges.evaluate_alarms(now=ahead, names=set(alarm_names(aws.model(MODEL).endpoint_name)))
    assert {
        a["StateValue"]
        for a in aws.client("cloudwatch").describe_alarms(AlarmNames=alarm_names(aws.model(MODEL).endpoint_name))[
            "MetricAlarms"
        ]
    } == {"OK"}
    execution, record = run_with(aws, "quiet.csv", 12, None, shift=2.0)  # no traffic during the update
    assert (execution["status"], record["outcome"]) == ("SUCCEEDED", "rolled_back"), record["message"]
    guarded = record["guardrails"]
    assert guarded["next"] == "rollback" and guarded["config"] == guarded["expected_config"] != before
    assert "quiet window" in guarded["reason"] and "quiet window" in record["message"]
    assert guarded["bake"]["healthy"] is False and guarded["bake"]["bake"]["invocations"] < 20
    assert_serves(aws, record, before)  # the champion serves again, on its own config
    rejected = package(aws, record)
    assert rejected["ModelApprovalStatus"] == "Rejected" and "quiet window" in rejected["ApprovalDescription"]
