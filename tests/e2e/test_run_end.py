"""Every run ends with a record, however it ends: an input that is not a JSON object, a run that times out, a run
that is stopped. Tests in this module share one runtime and run in order (the first deploys the champion)."""

from __future__ import annotations

import json
import time

import pytest

from scripts.local_aws.runtime import LocalRuntime
from scripts.sample_data import churn_batch, to_csv_bytes

MODEL = "churn"


@pytest.fixture(scope="module")
def aws(cloud_assembly, tmp_path_factory):
    with LocalRuntime(cloud_assembly, tmp_path_factory.mktemp("run-end"), seed=11) as runtime:
        yield runtime


def record_when_written(aws, execution_arn, timeout=60):
    """The run's audit record; the run-end cleanup writes it shortly after the execution ends (an async event)."""
    name = execution_arn.rsplit(":", 1)[-1]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [r for r in aws.audit_records(MODEL) if r["execution"] == name]
        if found:
            return found[0]
        time.sleep(0.1)
    raise AssertionError(f"no audit record for {name}")


def lock(aws):
    key = {"pk": {"S": MODEL}, "sk": {"S": "lock"}}
    return aws.client("dynamodb").get_item(TableName=aws.audit_table, Key=key).get("Item")


def endpoint_config(aws):
    return aws.client("sagemaker").describe_endpoint(EndpointName=aws.model(MODEL).endpoint_name)["EndpointConfigName"]


@pytest.mark.parametrize("payload", ["[1, 2]", '"weekly"', "null"])
def test_an_input_that_is_not_an_object_ends_with_a_record_and_a_summary(aws, payload):
    summaries = len(aws.published_summaries())
    execution = aws.wait_for(aws.start_run(MODEL, payload))
    assert execution["status"] == "FAILED"
    record = record_when_written(aws, execution["executionArn"])
    assert record["outcome"] == "failed" and "execution input must be a JSON object" in record["message"]
    assert len(aws.published_summaries()) == summaries + 1
    assert lock(aws) is None


def test_first_model_is_deployed(aws):
    execution = aws.wait_for(aws.land_batch(MODEL, "first.csv", to_csv_bytes(churn_batch(3000, 1))))
    assert execution["status"] == "SUCCEEDED" and aws.endpoint_weights(MODEL) == {"champion": 1.0}


def test_a_run_that_times_out_during_the_bake_is_cleaned_up(aws):
    champion_config = endpoint_config(aws)
    summaries = len(aws.published_summaries())
    seen = {}

    def bake_outlasts_the_run(state, seconds):
        running = [e for e in aws.executions(MODEL) if e["status"] == "RUNNING"]
        seen["weights"] = aws.endpoint_weights(MODEL)
        for execution in running:
            aws.advance_clock(execution["executionArn"], 400 * 86400)

    aws.on_wait("Bake canary", bake_outlasts_the_run)
    try:
        execution = aws.wait_for(aws.land_batch(MODEL, "drifted.csv", to_csv_bytes(churn_batch(3000, 5, shift=1.0))))
    finally:
        aws.on_wait("Bake canary", None)
    assert seen["weights"] == {"champion": 0.8, "challenger": 0.2}  # the canary was live when time ran out
    assert execution["status"] == "TIMED_OUT"
    record = record_when_written(aws, execution["executionArn"])
    assert (record["status"], record["outcome"]) == ("TIMED_OUT", "timed_out")
    assert "timed out before Finalize" in record["message"] and champion_config in record["message"]
    assert record["drift"]["detected"] and record["training"]["job_name"]  # what the run did before, kept
    assert endpoint_config(aws) == champion_config and aws.endpoint_weights(MODEL) == {"champion": 1.0}
    assert lock(aws) is None
    package_arn = record["registry"]["model_package_arn"]
    package = aws.client("sagemaker").describe_model_package(ModelPackageName=package_arn)
    assert package["ModelApprovalStatus"] == "Rejected" and "timed out" in package["ApprovalDescription"]
    summary = aws.published_summaries()[-1]
    assert len(aws.published_summaries()) == summaries + 1 and "TIMED_OUT" in summary["subject"]


def test_a_stopped_run_is_recorded_and_its_lock_released(aws):
    stopped = {}

    def stop_it(state, seconds):
        if not stopped:
            running = [e for e in aws.executions(MODEL) if e["status"] == "RUNNING"]
            for execution in running:
                aws.client("stepfunctions").stop_execution(executionArn=execution["executionArn"], cause="operator")
                stopped[execution["executionArn"]] = True

    aws.on_wait("Wait for training", stop_it)
    try:
        arn = aws.start_run(MODEL, {"force": True, "reason": "to be stopped"})
        execution = aws.wait_for(arn)
    finally:
        aws.on_wait("Wait for training", None)
    assert execution["status"] == "ABORTED" and arn in stopped
    record = record_when_written(aws, arn)
    assert (record["status"], record["outcome"]) == ("ABORTED", "aborted")
    assert "was stopped before Finalize" in record["message"] and record["trigger"] == "manual"
    assert lock(aws) is None
    assert json.loads(json.dumps(aws.endpoint_weights(MODEL))) == {"champion": 1.0}


def test_a_run_that_reached_finalize_is_not_recorded_twice(aws):
    execution = aws.wait_for(aws.start_run(MODEL, {"forse": 1}))
    assert execution["status"] == "FAILED"  # Finalize ran, then the run failed: the cleanup must leave it alone
    record_when_written(aws, execution["executionArn"])
    time.sleep(1.0)
    name = execution["executionArn"].rsplit(":", 1)[-1]
    assert len([r for r in aws.audit_records(MODEL) if r["execution"] == name]) == 1
