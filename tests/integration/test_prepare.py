"""Prepare on moto: a scheduled run does not check again a batch an earlier run settled; every run records the
batch's ETag."""

from __future__ import annotations

import boto3
import pytest
from moto import mock_aws
from refit_core.audit import summarize_run
from refit_handlers.prepare import prepare

from tests.conftest import create_audit_table, handler_settings

SCHEDULE = {
    "version": "0",
    "detail-type": "Scheduled Event",
    "source": "aws.events",
    "resources": ["arn:aws:events:us-east-1:123456789012:rule/refit-churn-schedule"],
    "detail": {},
}


@pytest.fixture
def aws():
    with mock_aws():
        s3, dynamodb = boto3.client("s3"), boto3.client("dynamodb")
        s3.create_bucket(Bucket="data")
        create_audit_table(dynamodb)
        yield s3, dynamodb


def finish(dynamodb, run: dict, outcome_state: dict, started_at: str) -> None:
    """Write the audit record Finalize would write for this run (and release its lock)."""
    record = summarize_run({"run": run, **outcome_state}, "churn", run["run_id"], started_at, started_at, None)
    item = {k: {"S": v} for k, v in record.items() if isinstance(v, str)}
    dynamodb.put_item(TableName="audit", Item=item)
    dynamodb.delete_item(TableName="audit", Key={"pk": {"S": "churn"}, "sk": {"S": "lock"}})


NO_DRIFT = {"check": {"decision": {"action": "stop", "outcome": "no_drift", "reason": "no drift"}}}


def test_a_scheduled_run_stops_on_a_batch_an_earlier_run_settled_and_checks_it_again_once_it_changes(aws):
    s3, dynamodb = aws
    config = handler_settings()
    s3.put_object(Bucket="data", Key="incoming/churn/a-older.csv", Body=b"a\n0\n")  # same second: keys break ties
    s3.put_object(Bucket="data", Key="incoming/churn/b.csv", Body=b"a\n1\n")
    event = {**SCHEDULE, "detail-type": "Object Created", "detail": {"bucket": {"name": "data"}}}
    event["detail"]["object"] = {"key": "incoming/churn/b.csv"}
    first = prepare(event, "r1", config, s3, dynamodb)
    etag = s3.head_object(Bucket="data", Key="incoming/churn/b.csv")["ETag"].strip('"')
    assert (first["trigger"], first["data_etag"], first["settled_by"]) == ("s3", etag, None)
    finish(dynamodb, first, NO_DRIFT, "2026-11-01T00:00:00+00:00")

    second = prepare(SCHEDULE, "r2", config, s3, dynamodb)
    assert second["data_uri"] == "s3://data/incoming/churn/b.csv"
    assert (
        second["settled_by"] == "no new batch since run r1 checked s3://data/incoming/churn/b.csv (outcome: no_drift)"
    )
    finish(dynamodb, second, {"check": {"decision": {"action": "stop", "outcome": "already_checked"}}}, "2026-11-02")

    manual = prepare({}, "r3", config, s3, dynamodb)  # someone asked: it is checked again
    assert manual["data_uri"] == "s3://data/incoming/churn/b.csv" and manual["settled_by"] is None
    dynamodb.delete_item(TableName="audit", Key={"pk": {"S": "churn"}, "sk": {"S": "lock"}})

    third = prepare(SCHEDULE, "r4", config, s3, dynamodb)  # the skip record settles it too
    assert third["settled_by"].startswith("no new batch since run r2 ")
    dynamodb.delete_item(TableName="audit", Key={"pk": {"S": "churn"}, "sk": {"S": "lock"}})

    s3.put_object(Bucket="data", Key="incoming/churn/b.csv", Body=b"a\n2\n")  # same name, new bytes
    changed = prepare(SCHEDULE, "r5", config, s3, dynamodb)
    assert changed["settled_by"] is None and changed["data_etag"] != etag


def test_a_batch_whose_last_run_failed_is_checked_again_by_the_schedule(aws):
    s3, dynamodb = aws
    config = handler_settings()
    s3.put_object(Bucket="data", Key="incoming/churn/b.csv", Body=b"a\n1\n")
    failed = prepare({}, "r1", config, s3, dynamodb)
    finish(dynamodb, failed, {"error": {"Error": "States.Timeout", "Cause": "training poll"}}, "2026-11-01")
    retried = prepare(SCHEDULE, "r2", config, s3, dynamodb)
    assert retried["data_uri"] == "s3://data/incoming/churn/b.csv" and retried["settled_by"] is None
