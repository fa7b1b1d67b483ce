"""The monthly training budget refuses a job before it starts, with the reason; under the cap the job starts."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import boto3
import pytest
from moto import mock_aws
from refit_handlers.training import StartEvent, start_training

from tests.conftest import create_audit_table, handler_settings


@pytest.fixture
def setup():
    with mock_aws():
        s3, dynamodb = boto3.client("s3"), boto3.client("dynamodb")
        s3.create_bucket(Bucket="data")
        s3.create_bucket(Bucket="art")
        s3.put_object(Bucket="data", Key="incoming/churn/b.csv", Body=b"a,churned\n1,0\n")
        create_audit_table(dynamodb)
        month = datetime.now(UTC).strftime("%Y-%m")
        dynamodb.put_item(
            TableName="audit",
            Item={
                "pk": {"S": "churn"},
                "sk": {"S": f"run#{month}-01T00:00:00#r0"},
                "training": {"M": {"estimated_cost_usd": {"N": "4.90"}}},
            },
        )
        yield s3, dynamodb, boto3.client("sagemaker")


def settings(cap):
    return handler_settings(monthly_training_budget_usd=cap)


def test_budget_cap_refuses_a_job_that_could_pass_it(setup):
    s3, dynamodb, sagemaker = setup
    event = StartEvent(run_id="r1", data_uri="s3://data/incoming/churn/b.csv")
    refused = start_training(event, settings(5.0), s3, sagemaker, dynamodb)
    assert refused["next"] == "refused"
    assert "$4.90 spent this month + up to $0.12" in refused["reason"] and "$5.00 monthly cap" in refused["reason"]
    assert sagemaker.list_training_jobs()["TrainingJobSummaries"] == []
    started = start_training(event, settings(10.0), s3, sagemaker, dynamodb)
    assert started["next"] == "wait" and len(sagemaker.list_training_jobs()["TrainingJobSummaries"]) == 1
    key = f"reports/churn/r1/inputs/{started['job_name']}.json"
    manifest = json.loads(s3.get_object(Bucket="art", Key=key)["Body"].read())
    assert manifest["inputs"][0]["uri"] == "s3://data/incoming/churn/b.csv"


def test_parallel_candidates_are_refused_together_when_all_of_them_could_pass_the_cap(setup):
    """One job (up to $0.115) fits under a $5.20 cap after $4.90; three parallel candidates (up to $0.345) do not,
    and every candidate sees the same sum, so none starts."""
    s3, dynamodb, sagemaker = setup
    single = start_training(
        StartEvent(run_id="r1", data_uri="s3://data/incoming/churn/b.csv"), settings(5.2), s3, sagemaker, dynamodb
    )
    assert single["next"] == "wait"
    for family in ("hgb", "linear", "forest"):
        event = StartEvent(run_id="r2", data_uri="s3://data/incoming/churn/b.csv", family=family)
        refused = start_training(event, settings(5.2), s3, sagemaker, dynamodb)
        assert refused["next"] == "refused" and refused["family"] == family
        assert "up to $0.35 for 3 parallel jobs" in refused["reason"]
    assert len(sagemaker.list_training_jobs()["TrainingJobSummaries"]) == 1


def test_a_fixed_holdout_and_a_drift_reference_become_channels_recorded_in_the_inputs_manifest(setup):
    s3, dynamodb, sagemaker = setup
    s3.put_object(Bucket="data", Key="training/churn/r0-a.csv", Body=b"a,churned\n2,1\n")
    s3.put_object(Bucket="data", Key="validation/churn/golden.csv", Body=b"a,churned\n3,0\n")
    s3.put_object(Bucket="data", Key="baseline/churn/reference.csv", Body=b"a,churned\n4,1\n")
    s3.put_object(Bucket="data", Key="validation/other-model/x.csv", Body=b"a\n1\n")  # another model's: not read
    started = start_training(
        StartEvent(run_id="r1", data_uri="s3://data/incoming/churn/b.csv"), settings(None), s3, sagemaker, dynamodb
    )
    job = sagemaker.describe_training_job(TrainingJobName=started["job_name"])
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in job["InputDataConfig"]}
    assert channels == {
        "config": f"s3://art/reports/churn/r1/inputs/{started['job_name']}/",
        # The new batch and the training window are read from the versions pinned for this job (refit_core.window).
        "current": f"s3://art/job-data/churn/r1/{started['job_name']}/current/",
        "train": f"s3://art/job-data/churn/r1/{started['job_name']}/train/",
        "validation": "s3://data/validation/churn/",
        "baseline": "s3://data/baseline/churn/",
    }
    key = f"reports/churn/r1/inputs/{started['job_name']}.json"
    manifest = json.loads(s3.get_object(Bucket="art", Key=key)["Body"].read())
    assert [(i["channel"], i["uri"]) for i in manifest["inputs"]] == [
        ("current", "s3://data/incoming/churn/b.csv"),
        ("train", "s3://data/training/churn/r0-a.csv"),
        ("validation", "s3://data/validation/churn/golden.csv"),
        ("baseline", "s3://data/baseline/churn/reference.csv"),
    ]
    # The job's settings are the config channel's one object, and the manifest records them as they were sent.
    settings_object = s3.get_object(Bucket="art", Key=f"reports/churn/r1/inputs/{started['job_name']}/config.json")
    sent = settings_object["Body"].read().decode()
    assert json.loads(sent)["target"] == "churned" and manifest["hyperparameters"] == {"config": sent}
