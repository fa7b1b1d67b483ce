"""The whole loop on the local runtime, from the synthesized template. Tests in this module share one runtime
and run in order: the first model is deployed once, then every scenario checks what it must leave untouched."""

from __future__ import annotations

import json

import pytest

from scripts.local_aws.runtime import LocalRuntime
from scripts.sample_data import churn_batch, to_csv_bytes

MODEL = "churn"


@pytest.fixture(scope="module")
def aws(cloud_assembly, tmp_path_factory):
    with LocalRuntime(cloud_assembly, tmp_path_factory.mktemp("runtime"), spot_discount=0.7, seed=3) as runtime:
        yield runtime


def record_for(aws, execution_arn):
    name = execution_arn.rsplit(":", 1)[-1]
    return next(r for r in aws.audit_records(MODEL) if r["execution"] == name)


def champion_model(aws):
    sagemaker = aws.client("sagemaker")
    endpoint = sagemaker.describe_endpoint(EndpointName=aws.model(MODEL).endpoint_name)
    config = sagemaker.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    return endpoint["EndpointConfigName"], [v["ModelName"] for v in config["ProductionVariants"]]


def training_jobs(aws):
    return aws.client("sagemaker").list_training_jobs(MaxResults=100)["TrainingJobSummaries"]


def test_first_batch_trains_and_creates_the_endpoint(aws):
    execution = aws.wait_for(aws.land_batch(MODEL, "first.csv", to_csv_bytes(churn_batch(3000, 1))))
    assert execution["status"] == "SUCCEEDED"
    record = record_for(aws, execution["executionArn"])
    assert (record["trigger"], record["outcome"]) == ("s3", "deployed_first")
    assert record["training"]["spot"] is True and record["training"]["savings_percent"] > 0
    assert aws.endpoint_weights(MODEL) == {"champion": 1.0}
    packages = aws.client("sagemaker").list_model_packages(ModelPackageGroupName=aws.model(MODEL).package_group)
    assert [p["ModelApprovalStatus"] for p in packages["ModelPackageSummaryList"]] == ["Approved"]
    reply = json.loads(aws.invoke_endpoint(MODEL, "12.0,70.5,1,48.0,basic,north")["body"])
    assert 0.0 <= reply["probabilities"][0] <= 1.0
    assert len(aws.published_summaries()) == 1


def test_batch_without_drift_stops_with_reason(aws):
    before = champion_model(aws)
    execution = aws.wait_for(aws.land_batch(MODEL, "same.csv", to_csv_bytes(churn_batch(3000, 2))))
    record = record_for(aws, execution["executionArn"])
    assert execution["status"] == "SUCCEEDED"
    assert record["outcome"] == "no_drift" and record["drift"]["detected"] is False
    assert record["training"] is None or "training" not in record
    assert champion_model(aws) == before


def test_malformed_file_fails_before_training(aws):
    before_jobs, before = len(training_jobs(aws)), champion_model(aws)
    execution = aws.wait_for(aws.land_batch(MODEL, "broken.csv", b"\xff\xfe\x00garbage,\n\x01"))
    record = record_for(aws, execution["executionArn"])
    assert execution["status"] == "FAILED"
    assert record["outcome"] == "bad_data" and "broken.csv: not UTF-8 text" in record["message"]
    assert len(training_jobs(aws)) == before_jobs
    assert champion_model(aws) == before
    assert "not UTF-8" in aws.published_summaries()[-1]["message"]


def test_missing_column_fails_with_the_column_named(aws):
    batch = churn_batch(500, 4).drop(columns=["usage_gb"])
    execution = aws.wait_for(aws.land_batch(MODEL, "missing.csv", to_csv_bytes(batch)))
    record = record_for(aws, execution["executionArn"])
    assert execution["status"] == "FAILED" and "column 'usage_gb' is missing" in record["message"]


def test_invalid_manual_input_fails_at_the_first_state(aws):
    execution = aws.wait_for(aws.start_run(MODEL, {"forse": True}))
    assert execution["status"] == "FAILED"
    record = record_for(aws, execution["executionArn"])
    assert record["outcome"] == "failed" and "forse: unknown field" in record["message"]
    history = aws.client("stepfunctions").get_execution_history(executionArn=execution["executionArn"])["events"]
    failed_tasks = [e for e in history if e["type"] == "TaskFailed" or e["type"] == "LambdaFunctionFailed"]
    entered = [e["stateEnteredEventDetails"]["name"] for e in history if e["type"].endswith("StateEntered")]
    assert entered[:3] == ["Read input", "Prepare", "Finalize"] and failed_tasks


def test_forced_run_with_no_better_challenger_keeps_the_champion(aws):
    before = champion_model(aws)
    noisy = churn_batch(3000, 7)
    noisy["churned"] = noisy["churned"].sample(frac=1.0, random_state=7).to_numpy()  # labels carry no signal
    aws.wait_for(aws.land_batch(MODEL, "noisy.csv", to_csv_bytes(noisy)))
    key = f"s3://{aws.data_bucket}/incoming/{MODEL}/noisy.csv"
    execution = aws.wait_for(aws.start_run(MODEL, {"data_uri": key, "force": True, "reason": "weekly refresh"}))
    record = record_for(aws, execution["executionArn"])
    assert (execution["status"], record["outcome"]) == ("SUCCEEDED", "not_promoted"), (
        record["gate"],
        record["data_uri"],
        record["training"],
    )
    assert record["gate"]["promote"] is False and record["gate"]["champion"] is not None
    assert record["registry"]["approval"] == "Rejected"
    assert champion_model(aws) == before


def test_training_failure_ends_failed_with_reason(aws):
    before = champion_model(aws)
    aws.next_training_outcome("internal_error", "InternalServerError: the training instance failed")
    key = f"s3://{aws.data_bucket}/incoming/{MODEL}/same.csv"
    execution = aws.wait_for(aws.start_run(MODEL, {"data_uri": key, "force": True}))
    record = record_for(aws, execution["executionArn"])
    assert execution["status"] == "FAILED" and record["outcome"] == "training_failed"
    assert "the training instance failed" in record["message"]
    assert champion_model(aws) == before


def test_spot_capacity_timeout_falls_back_to_on_demand(aws):
    aws.next_training_outcome("capacity")
    key = f"s3://{aws.data_bucket}/incoming/{MODEL}/same.csv"
    execution = aws.wait_for(aws.start_run(MODEL, {"data_uri": key, "force": True}))
    record = record_for(aws, execution["executionArn"])
    assert execution["status"] == "SUCCEEDED"
    assert record["training"]["spot"] is False and record["training"]["job_name"].endswith("-od2")
    jobs = {j["TrainingJobName"]: j["TrainingJobStatus"] for j in training_jobs(aws)}
    assert jobs[record["training"]["job_name"].replace("-od2", "-s1")] == "Failed"


def test_a_single_class_holdout_is_refused_and_nothing_is_registered(aws):
    before = champion_model(aws)
    packages_before = len(
        aws.client("sagemaker").list_model_packages(ModelPackageGroupName=aws.model(MODEL).package_group)[
            "ModelPackageSummaryList"
        ]
    )
    batch = churn_batch(3000, 8).assign(churned=0)  # label balance drifts; AUC is undefined on one class
    execution = aws.wait_for(aws.land_batch(MODEL, "one-class.csv", to_csv_bytes(batch)))
    record = record_for(aws, execution["executionArn"])
    assert (execution["status"], record["outcome"]) == ("FAILED", "training_failed"), record["message"]
    assert record["drift"]["target_drifted"] and "single class" in record["message"]
    assert record["registry"] is None and champion_model(aws) == before
    assert (
        len(
            aws.client("sagemaker").list_model_packages(ModelPackageGroupName=aws.model(MODEL).package_group)[
                "ModelPackageSummaryList"
            ]
        )
        == packages_before
    )


def checkpoint_events(aws, run_id):
    body = aws.client("s3").get_object(Bucket=aws.artifact_bucket, Key=f"checkpoints/{MODEL}/{run_id}/events.jsonl")
    return [json.loads(line) for line in body["Body"].read().decode().splitlines()]


def test_spot_interruption_resumes_from_checkpoints(aws):
    aws.next_training_outcome("interrupt", after_folds=2)
    key = f"s3://{aws.data_bucket}/incoming/{MODEL}/same.csv"
    execution = aws.wait_for(aws.start_run(MODEL, {"data_uri": key, "force": True}))
    record = record_for(aws, execution["executionArn"])
    assert execution["status"] == "SUCCEEDED" and record["training"]["spot"] is True, record["message"]
    events = checkpoint_events(aws, record["run_id"])
    done = [e["key"] for e in events if e["event"] == "fold_done"]
    assert len(done) == len(set(done)) and len({e["pid"] for e in events}) == 2
    resumed = [len(e["finished"]) for e in events if e["event"] == "resumed"]
    assert len(resumed) == 1 and 2 <= resumed[0] < len(done)  # a fold in flight at SIGTERM may still finish


def test_fallback_job_resumes_the_interrupted_spot_jobs_checkpoints(aws):
    aws.next_training_outcome("capacity", after_folds=2)
    key = f"s3://{aws.data_bucket}/incoming/{MODEL}/same.csv"
    execution = aws.wait_for(aws.start_run(MODEL, {"data_uri": key, "force": True}))
    record = record_for(aws, execution["executionArn"])
    assert execution["status"] == "SUCCEEDED" and record["training"]["job_name"].endswith("-od2"), record["message"]
    events = checkpoint_events(aws, record["run_id"])
    done = [e["key"] for e in events if e["event"] == "fold_done"]
    assert len(done) == len(set(done))
    resumed = [len(e["finished"]) for e in events if e["event"] == "resumed"]
    assert len(resumed) == 1 and 2 <= resumed[0] < len(done)  # a fold in flight at SIGTERM may still finish


def test_canary_alarm_rolls_back(aws):
    before = champion_model(aws)
    alarm = aws.model(MODEL).canary_alarm
    seen = {}

    def during_bake(state, seconds):
        seen["weights"] = aws.endpoint_weights(MODEL)
        aws.set_alarm_state(alarm, "ALARM", "challenger 5XX")

    aws.on_wait("Bake canary", during_bake)
    try:
        execution = aws.wait_for(aws.land_batch(MODEL, "drifted-a.csv", to_csv_bytes(churn_batch(3000, 5, shift=1.0))))
    finally:
        aws.on_wait("Bake canary", None)
        aws.set_alarm_state(alarm, "OK")
    record = record_for(aws, execution["executionArn"])
    assert "weights" in seen, (record["outcome"], record["message"], record.get("gate"))
    assert seen["weights"] == {"champion": 0.8, "challenger": 0.2}
    assert record["outcome"] == "rolled_back" and "canary alarm is in ALARM" in record["message"]
    assert champion_model(aws) == before
    # The registry no longer offers the rolled-back challenger as the latest approved package.
    package = aws.client("sagemaker").describe_model_package(ModelPackageName=record["registry"]["model_package_arn"])
    assert package["ModelApprovalStatus"] == "Rejected" and "rolled_back" in package["ApprovalDescription"]
    assert record["registry_update"].startswith(f"model package {record['registry']['model_package_arn']} set Rejected")
    assert aws.endpoint_weights(MODEL) == {"champion": 1.0}


def test_drift_retrains_and_promotes_through_the_canary(aws):
    before_config, before_models = champion_model(aws)

    def traffic(state, seconds):
        for line in (
            churn_batch(700, 9, shift=1.0).drop(columns=["churned"]).to_csv(index=False, header=False).splitlines()
        ):
            aws.invoke_endpoint(MODEL, line)

    aws.on_wait("Bake canary", traffic)
    try:
        execution = aws.wait_for(aws.land_batch(MODEL, "drifted-b.csv", to_csv_bytes(churn_batch(3000, 6, shift=1.0))))
    finally:
        aws.on_wait("Bake canary", None)
    record = record_for(aws, execution["executionArn"])
    assert (execution["status"], record["outcome"]) == ("SUCCEEDED", "promoted"), record["message"]
    assert record["drift"]["detected"] and "usage_gb" in record["drift"]["drifted_features"]
    bucket, key = record["drift"]["report_html_uri"].removeprefix("s3://").split("/", 1)
    page = aws.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    assert "Drift detected" in page and "<svg" in page
    assert record["gate"]["promote"] and record["gate"]["test"] == "delong"
    assert record["canary"]["invocations"] >= 20
    after_config, after_models = champion_model(aws)
    assert after_config != before_config and after_models != before_models
    assert aws.endpoint_weights(MODEL) == {"champion": 1.0}
    packages = aws.client("sagemaker").list_model_packages(ModelPackageGroupName=aws.model(MODEL).package_group)
    statuses = sorted(p["ModelApprovalStatus"] for p in packages["ModelPackageSummaryList"])
    assert statuses.count("Approved") >= 2


def test_schedule_and_quality_alarm_triggers_start_runs(aws):
    execution = aws.wait_for(aws.fire_schedule(MODEL))
    record = record_for(aws, execution["executionArn"])
    # No batch arrived since the last run: the schedule does not check and retrain on the same bytes again.
    assert (record["trigger"], record["outcome"], record["training"]) == ("schedule", "already_checked", None)
    earlier = max(
        (r for r in aws.audit_records(MODEL) if r["data_uri"] == record["data_uri"] and r["sk"] < record["sk"]),
        key=lambda r: r["sk"],
    )
    assert record["message"].startswith(f"no new batch since run {earlier['run_id']} checked {record['data_uri']}")
    assert record["data_etag"] == earlier["data_etag"] is not None
    before = {e["executionArn"] for e in aws.executions(MODEL)}
    aws.set_alarm_state(aws.model(MODEL).quality_alarm, "ALARM", "AUC dropped")
    started = [e for e in aws.executions(MODEL) if e["executionArn"] not in before]
    assert len(started) == 1
    execution = aws.wait_for(started[0]["executionArn"])
    record = record_for(aws, execution["executionArn"])
    assert record["trigger"] == "alarm" and record["training"]["job_name"]
    aws.set_alarm_state(aws.model(MODEL).quality_alarm, "OK")


def test_every_run_left_an_audit_record_and_a_summary(aws):
    executions = aws.executions(MODEL)
    records = aws.audit_records(MODEL)
    assert {e["name"] for e in executions} == {r["execution"] for r in records}
    assert len(aws.published_summaries()) == len(records)
