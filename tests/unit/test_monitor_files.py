"""The monitor's bookkeeping of what it read (refit_core.monitor): files landing out of key order, runs that failed
or were skipped, the per-run cap, feedback that is taken once and only once, and re-arming the quality alarm."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import boto3
import pandas as pd
import pytest
from moto import mock_aws
from refit_core.config import load_config
from refit_core.monitor import Place, new_files, read_since, rearm_alarm, rearm_reason, take_feedback

from tests.conftest import ROOT

PREFIX = "capture/churn/refit-churn/champion/"
NOW = datetime(2026, 11, 29, 12, 30, tzinfo=UTC)


@pytest.fixture
def s3():
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="data")
        yield client


def put(s3, hour: datetime, name: str, body: bytes = b"x") -> None:
    s3.put_object(Bucket="data", Key=f"{PREFIX}{hour:%Y/%m/%d/%H}/{name}", Body=body)


def names(items) -> list[str]:
    return [item["Key"].rsplit("/", 1)[-1] for item in items]


def test_a_file_that_lands_after_a_later_named_one_is_still_read_once(s3):
    hour = NOW.replace(minute=0)
    put(s3, hour, "05-00-000-a.jsonl")
    first, seen, more = new_files(s3, "data", PREFIX, {}, oldest=NOW - timedelta(hours=3), limit=100)
    assert names(first) == ["05-00-000-a.jsonl"] and not more
    put(s3, hour, "04-50-000-b.jsonl")  # another instance flushed its older buffer later
    second, seen, _ = new_files(s3, "data", PREFIX, seen, oldest=NOW - timedelta(hours=3), limit=100)
    assert names(second) == ["04-50-000-b.jsonl"]
    third, _, _ = new_files(s3, "data", PREFIX, seen, oldest=NOW - timedelta(hours=3), limit=100)
    assert third == []


def test_a_run_lists_back_to_before_the_last_successful_run_not_a_fixed_lookback(s3):
    model = load_config(ROOT / "refit.toml").model("churn")
    last_run = NOW - timedelta(hours=23)  # a daily schedule, or a day of failed runs
    for hours_ago in range(1, 24):
        put(s3, NOW - timedelta(hours=hours_ago), f"00-00-000-{hours_ago:02d}.jsonl")
    oldest = read_since({"updated_at": last_run.isoformat()}, NOW, model.monitor.window_hours, 3)
    assert oldest == last_run - timedelta(hours=3)
    items, _, _ = new_files(s3, "data", PREFIX, {"other": []}, oldest=oldest, limit=100)
    assert len(items) == 23
    # A first run reads the window, not the whole history.
    put(s3, NOW - timedelta(days=30), "00-00-000-old.jsonl")
    first_run = read_since({}, NOW, model.monitor.window_hours, 3)
    assert first_run == NOW - timedelta(hours=model.monitor.window_hours)
    items, _, _ = new_files(s3, "data", PREFIX, {}, oldest=first_run, limit=100)
    assert "00-00-000-old.jsonl" not in names(items) and len(items) == 23


def test_a_run_reads_at_most_its_limit_and_the_next_run_the_rest(s3):
    for minute in range(5):
        put(s3, NOW.replace(minute=0), f"{minute:02d}-00-000-x.jsonl")
    oldest = NOW - timedelta(hours=3)
    first, seen, more = new_files(s3, "data", PREFIX, {}, oldest=oldest, limit=3)
    assert len(first) == 3 and more
    second, _, more = new_files(s3, "data", PREFIX, seen, oldest=oldest, limit=3)
    assert len(second) == 2 and not more and not set(names(first)) & set(names(second))


def test_feedback_is_taken_once_a_retry_takes_the_same_batch_and_text_stays_text(s3):
    model = load_config(ROOT / "refit.toml").model("churn")
    for index, body in enumerate((b"customer,churned\n007,1\n", b"customer,churned\n042,0\n")):
        s3.put_object(Bucket="data", Key=f"feedback/churn/pending/{index}.csv", Body=body)
    uri = take_feedback(s3, "data", model, "run-1")
    assert uri == "s3://data/feedback/churn/batches/feedback-run-1.csv"
    batch = s3.get_object(Bucket="data", Key="feedback/churn/batches/feedback-run-1.csv")["Body"].read()
    assert pd.read_csv(pd.io.common.BytesIO(batch), dtype=str)["customer"].tolist() == ["007", "042"]
    assert s3.list_objects_v2(Bucket="data", Prefix="feedback/churn/pending/")["KeyCount"] == 0
    assert take_feedback(s3, "data", model, "run-1") == uri  # Step Functions retried Prepare
    assert take_feedback(s3, "data", model, "run-2") is None  # nothing pending for the next alarm run


@pytest.mark.parametrize(
    ("state", "breached", "pending", "rearm"),
    [
        ("ALARM", True, 1000, True),
        ("ALARM", True, 999, False),  # too little new to learn from: wait for more labels
        ("ALARM", False, 5000, False),  # the breach is over: the alarm goes OK by itself
        ("OK", True, 5000, False),  # not in ALARM: this run's bound makes it fire the first time
        ("INSUFFICIENT_DATA", True, 5000, False),
    ],
)
def test_the_alarm_is_re_armed_only_while_the_breach_persists_with_enough_new_feedback(state, breached, pending, rearm):
    reason = rearm_reason(state, breached, pending, 1000)
    assert (reason is not None) == rearm
    if rearm:
        assert "1,000 rows labelled since the alarm fired" in reason


def test_rearm_sets_the_quality_alarm_ok_and_counts_pending_feedback(s3):
    model = load_config(ROOT / "refit.toml").model("churn")
    cloudwatch = boto3.client("cloudwatch", region_name="us-east-1")
    cloudwatch.put_metric_alarm(
        AlarmName="refit-churn--quality",
        Namespace="Refit",
        MetricName="LiveMetricAlarmBound",
        Statistic="Maximum",
        Period=3600,
        EvaluationPeriods=1,
        Threshold=0.7,
        ComparisonOperator="LessThanThreshold",
    )
    rows = pd.DataFrame({"x": range(600)}).to_csv(index=False).encode()
    # Written before the alarm fired: the run the alarm's event started takes these; they are not new to it.
    s3.put_object(Bucket="data", Key=f"{model.feedback_prefix}pending/0.csv", Body=rows * 3)
    time.sleep(1.1)  # S3's LastModified has whole seconds
    cloudwatch.set_alarm_state(AlarmName="refit-churn--quality", StateValue="ALARM", StateReason="bound 0.6")
    time.sleep(1.1)  # a part written in the second the alarm fired is not counted as new (whole seconds again)
    place = Place(model, "data", "artifacts", "refit-churn", "refit-churn--quality")
    breached = {"breached": True, "reason": "live roc_auc 0.62 below 0.7"}
    s3.put_object(Bucket="data", Key=f"{model.feedback_prefix}pending/a.csv", Body=rows)
    waiting = rearm_alarm(cloudwatch, s3, place, breached)
    assert waiting == {
        "name": "refit-churn--quality",
        "state": "ALARM",
        "rearmed": False,
        "pending_feedback_rows": 600,
    }
    s3.put_object(Bucket="data", Key=f"{model.feedback_prefix}pending/b.csv", Body=rows)
    rearmed = rearm_alarm(cloudwatch, s3, place, breached)
    assert rearmed["rearmed"] is True and rearmed["pending_feedback_rows"] == 1200
    alarm = cloudwatch.describe_alarms(AlarmNames=["refit-churn--quality"])["MetricAlarms"][0]
    assert alarm["StateValue"] == "OK" and "1,200 rows labelled since the alarm fired" in alarm["StateReason"]
    assert rearm_alarm(cloudwatch, s3, place, breached) == {
        "name": "refit-churn--quality",
        "state": "OK",
        "rearmed": False,
    }
    assert rearm_alarm(cloudwatch, s3, Place(model, "data", "artifacts", "refit-churn"), breached) is None
