"""The local runtime's Data Capture and CloudWatch-alarm bridges (scripts/local_aws/data_capture.py, alarms.py, wired in
bridges.py), each against what AWS does: SageMaker's capture files and records, CloudWatch's alarm evaluation (the
User Guide's missing-data tables) and its "CloudWatch Alarm State Change" event."""

from __future__ import annotations

import base64
import copy
import dataclasses
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from botocore.exceptions import ClientError
from refit_core.artifacts import MODEL_SHA256_ENV, archive_model_sha256
from refit_core.canary import data_capture, error_rate_alarm_expression
from refit_core.metric_names import LIVE_METRIC_ALARM_BOUND, MONITOR_NAMESPACE

from scripts.local_aws.alarms import AlarmSpec, Datapoint, MathAlarmSpec, evaluate_alarm
from scripts.local_aws.runtime import ACCOUNT, LocalRuntime
from scripts.sample_data import churn_batch

ENDPOINT = "refit-capture-bridge"
# Where a training job of churn writes its model: what churn's SageMaker role may read for the endpoint.
MODEL_KEY = "training/churn/refit-churn--bridge--od1/output/model.tar.gz"
TRAINING_CONFIG = {
    "target": "churned",
    "problem_type": "binary_classification",
    "metrics": ["roc_auc"],
    "primary_metric": "roc_auc",
    "categorical_columns": ["plan", "region"],
    "id_column": None,
    "holdout_fraction": 0.5,
    "seed": 1,
    "run_id": "bridge",
}
ROW = "12.0,70.5,1,48.0,basic,north"
KEY_PATTERN = re.compile(
    r"capture/churn/refit-capture-bridge/(?P<variant>[a-z]+)/(?P<y>\d{4})/(?P<m>\d{2})/(?P<d>\d{2})/(?P<h>\d{2})/"
    r"\d{2}-\d{2}-\d{3}-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.jsonl"
)


# ---------------------------------------------------------------- alarm evaluation (pure)
def spec(m: int = 3, n: int = 3, treatment: str = "missing", **changes) -> AlarmSpec:
    values = {
        "name": "a",
        "namespace": "Test",
        "metric_name": "Errors",
        "dimensions": {},
        "statistic": "Maximum",
        "period": 300,
        "evaluation_periods": n,
        "threshold": 1.0,
        "comparison": "GreaterThanOrEqualToThreshold",
        "datapoints_to_alarm": m,
        "treat_missing_data": treatment,
    }
    return AlarmSpec(**{**values, **changes})


NOW = datetime(2026, 11, 29, 1, 7, 30, tzinfo=UTC)  # in the 01:05 bucket of a 5-minute period


def series(pattern: str, period: int = 300) -> list[Datapoint]:
    """The guide's notation, oldest first, the last bucket holding NOW: 0 not breaching, X breaching, - missing."""
    newest = datetime(2026, 11, 29, 1, 5, tzinfo=UTC)
    marks = pattern.split()
    return [
        Datapoint.of(newest - timedelta(seconds=period * (len(marks) - 1 - i)) + timedelta(seconds=10), value)
        for i, mark in enumerate(marks)
        if mark != "-"
        for value in [2.0 if mark == "X" else 0.0]
    ]


RETAIN = "retain"
# CloudWatch User Guide, "How alarm state is evaluated when data is missing": its two tables, row by row
# (data points, then the state for MISSING, IGNORE, BREACHING, NOT BREACHING).
GUIDE_TABLES = [
    (3, 3, "0 - X - X", ("OK", "OK", "OK", "OK")),
    (3, 3, "0 - - - -", ("OK", "OK", "OK", "OK")),
    (3, 3, "- - - - -", ("INSUFFICIENT_DATA", RETAIN, "ALARM", "OK")),
    (3, 3, "0 X X - X", ("ALARM", "ALARM", "ALARM", "ALARM")),
    (3, 3, "- - - - X", ("INSUFFICIENT_DATA", RETAIN, "ALARM", "OK")),
    (3, 3, "X - - - -", ("ALARM", RETAIN, "ALARM", "OK")),
    (2, 3, "0 - X - X", ("ALARM", "ALARM", "ALARM", "ALARM")),
    (2, 3, "0 0 X 0 X", ("ALARM", "ALARM", "ALARM", "ALARM")),
    (2, 3, "0 - X - -", ("OK", "OK", "ALARM", "OK")),
    (2, 3, "- - - - 0", ("OK", "OK", "ALARM", "OK")),
    (2, 3, "- - - - X", ("INSUFFICIENT_DATA", RETAIN, "ALARM", "OK")),
]


@pytest.mark.parametrize(("m", "n", "pattern", "expected"), GUIDE_TABLES)
def test_alarm_evaluation_reproduces_the_cloudwatch_guides_missing_data_tables(m, n, pattern, expected):
    for treatment, state in zip(("missing", "ignore", "breaching", "notBreaching"), expected, strict=True):
        for current in ("OK", "ALARM"):
            result = evaluate_alarm(spec(m, n, treatment), series(pattern), NOW, current)
            assert result.state == (current if state == RETAIN else state), (pattern, treatment, current)


def test_alarm_statistics_over_period_aligned_buckets():
    minute = datetime(2026, 11, 29, 1, 7, tzinfo=UTC)
    points = [
        Datapoint.of(minute + timedelta(seconds=1), 4.0),
        Datapoint.of(minute + timedelta(seconds=59), 2.0),
        Datapoint(minute + timedelta(seconds=30), 6.0, 1.0, 5.0, 2.0),  # a StatisticSet of two values
        Datapoint.of(minute - timedelta(seconds=1), 100.0),  # the previous bucket: not in the newest one
        Datapoint.of(minute + timedelta(seconds=60), 100.0),  # the next bucket, after `now`: never evaluated
    ]
    now = minute + timedelta(seconds=45)
    expected = {"Sum": 12.0, "SampleCount": 4.0, "Average": 3.0, "Minimum": 1.0, "Maximum": 5.0}
    for statistic, value in expected.items():
        for threshold, state in ((value, "ALARM"), (value + 0.5, "OK")):
            alarm = spec(1, 1, statistic=statistic, period=60, threshold=threshold)
            result = evaluate_alarm(alarm, points, now, "OK")
            assert result.state == state, (statistic, threshold)
            assert result.reason_data["evaluatedDatapoints"][0]["value"] == value
    for comparison, states in {
        "GreaterThanOrEqualToThreshold": ("ALARM", "ALARM", "OK"),
        "GreaterThanThreshold": ("ALARM", "OK", "OK"),
        "LessThanThreshold": ("OK", "OK", "ALARM"),
        "LessThanOrEqualToThreshold": ("OK", "ALARM", "ALARM"),
    }.items():
        for threshold, state in zip((2.0, 3.0, 4.0), states, strict=True):
            alarm = spec(1, 1, statistic="Average", period=60, threshold=threshold, comparison=comparison)
            assert evaluate_alarm(alarm, points, now).state == state, (comparison, threshold)


def test_alarm_evaluation_periods_and_the_reason_cloudwatch_records():
    alarm = spec(2, 3, "notBreaching", comparison="GreaterThanThreshold", threshold=0.0)
    one = evaluate_alarm(alarm, series("- - 0 X 0"), NOW, "OK")
    two = evaluate_alarm(alarm, series("- - X 0 X"), NOW, "OK")
    assert (one.state, two.state) == ("OK", "ALARM")
    assert two.reason.startswith("Threshold Crossed: 2 out of the last 3 datapoints [2.0 (29/11/26 01:05:00)")
    assert two.reason.endswith(
        "were greater than the threshold (0.0) (minimum 2 datapoints for OK -> ALARM transition)."
    )
    assert [p["value"] for p in two.reason_data["evaluatedDatapoints"]] == [2.0, 0.0, 2.0]
    assert two.reason_data["startDate"] == "2026-11-29T00:45:00.000+0000"  # the evaluation range: N + 2 periods
    with pytest.raises(ValueError, match="DatapointsToAlarm"):
        spec(4, 3)


# ---------------------------------------------------------------- the runtime
@pytest.fixture(scope="module")
def aws(cloud_assembly, tmp_path_factory):
    with LocalRuntime(cloud_assembly, tmp_path_factory.mktemp("capture-alarms"), seed=7) as runtime:
        yield runtime


def stack_setting(aws, variable: str) -> str:
    return next(f.environment[variable] for f in aws.stack.functions.values() if variable in f.environment)


@pytest.fixture(scope="module")
def endpoint(aws, tmp_path_factory):
    """A small model on an endpoint whose config captures as refit's deploy step configures it (refit_core.canary)."""
    root = tmp_path_factory.mktemp("capture-model")
    (root / "input" / "data" / "config").mkdir(parents=True)
    (root / "input" / "data" / "config" / "config.json").write_text(json.dumps(TRAINING_CONFIG))
    (root / "input" / "data" / "current").mkdir(parents=True)
    churn_batch(400, 1).to_csv(root / "input" / "data" / "current" / "batch.csv", index=False)
    env = {**os.environ, "REFIT_OPT_ML": str(root), "OMP_NUM_THREADS": "1"}
    trained = subprocess.run([sys.executable, "-m", "refit_training", "train"], env=env, capture_output=True, text=True)
    assert trained.returncode == 0, trained.stderr
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        for path in sorted((root / "model").iterdir()):
            tar.add(path, arcname=path.name)
    aws.client("s3").put_object(Bucket=aws.artifact_bucket, Key=MODEL_KEY, Body=archive.getvalue())
    sagemaker = aws.client("sagemaker")
    sagemaker.create_model(
        ModelName=f"{ENDPOINT}-model",
        ExecutionRoleArn=stack_setting(aws, "REFIT_SAGEMAKER_ROLE_ARN"),
        PrimaryContainer={
            "Image": stack_setting(aws, "REFIT_IMAGE_URI"),
            "ModelDataUrl": f"s3://{aws.artifact_bucket}/{MODEL_KEY}",
            "Environment": {MODEL_SHA256_ENV: archive_model_sha256(archive.getvalue())},  # as Deploy sets it
        },
    )
    kms_key = stack_setting(aws, "REFIT_KMS_KEY_ARN")
    sagemaker.create_endpoint_config(
        EndpointConfigName=f"{ENDPOINT}-1",
        ProductionVariants=[
            {
                "VariantName": "champion",
                "ModelName": f"{ENDPOINT}-model",
                "InitialInstanceCount": 1,
                "InstanceType": "ml.m5.large",
                "InitialVariantWeight": 1.0,
            }
        ],
        DataCaptureConfig=data_capture(f"s3://{aws.data_bucket}/capture/churn/", 100, kms_key),
    )
    sagemaker.create_endpoint(EndpointName=ENDPOINT, EndpointConfigName=f"{ENDPOINT}-1")
    return {"kms_key": kms_key}


def invoke(aws, body: str = ROW, content_type: str = "text/csv", **extra) -> dict:
    return aws.client("sagemaker-runtime").invoke_endpoint(
        EndpointName=ENDPOINT, Body=body, ContentType=content_type, Accept="application/json", **extra
    )


def captured(aws, uris: list[str]) -> list[dict]:
    records = []
    for uri in uris:
        bucket, key = uri.removeprefix("s3://").split("/", 1)
        text = aws.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read().decode()
        assert text.endswith("\n")
        records += [json.loads(line) for line in text.splitlines()]
    return records


def test_capture_files_and_records_are_sagemakers(aws, endpoint):
    aws.flush_capture()
    with_id = invoke(aws, InferenceId="order-17")
    reply = with_id["Body"].read()
    invoke(aws)
    uris = aws.flush_capture()
    assert len(uris) == 1  # one file per endpoint, variant and hour, until 100 records or 1 s
    bucket, key = uris[0].removeprefix("s3://").split("/", 1)
    assert bucket == aws.data_bucket
    match = KEY_PATTERN.fullmatch(key)
    assert match and match["variant"] == "champion", key
    first, second = captured(aws, uris)
    assert first["eventVersion"] == "0"
    assert first["captureData"] == {
        "endpointInput": {"observedContentType": "text/csv", "mode": "INPUT", "data": ROW, "encoding": "CSV"},
        "endpointOutput": {
            "observedContentType": "application/json",
            "mode": "OUTPUT",
            "data": reply.decode(),
            "encoding": "JSON",
        },
    }
    metadata = first["eventMetadata"]
    assert set(metadata) == {"eventId", "inferenceId", "inferenceTime"} and metadata["inferenceId"] == "order-17"
    assert str(uuid.UUID(metadata["eventId"])) == metadata["eventId"]
    when = datetime.strptime(metadata["inferenceTime"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert abs((datetime.now(UTC) - when).total_seconds()) < 60
    assert (match["y"], match["m"], match["d"], match["h"]) == tuple(when.strftime("%Y %m %d %H").split())
    assert "inferenceId" not in second["eventMetadata"]  # no InferenceId given: none recorded
    assert second["eventMetadata"]["eventId"] != metadata["eventId"]
    head = aws.client("s3").head_object(Bucket=bucket, Key=key)
    assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"] == endpoint["kms_key"]
    assert aws.bridges.capture_failures == []


def test_inference_id_limits_are_the_service_models(aws, endpoint):
    with pytest.raises(ClientError, match="InferenceId"):
        invoke(aws, InferenceId="x" * 65)  # 1-64 characters
    with pytest.raises(ClientError, match="InferenceId"):
        invoke(aws, InferenceId=" leading-space")  # pattern \A\S[\p{Print}]*\z


def test_failed_requests_are_not_captured_and_files_arrive_within_seconds(aws, endpoint):
    aws.flush_capture()
    before = len(aws.bridges.capture_files)
    with pytest.raises(aws.client("sagemaker-runtime").exceptions.ModelError):
        invoke(aws, "not,a,row")
    assert aws.flush_capture() == []
    invoke(aws, InferenceId="late")
    deadline = time.monotonic() + 5
    while len(aws.bridges.capture_files) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    written = aws.bridges.capture_files[before:]
    assert len(written) == 1  # the background flush wrote it, no flush_capture() call
    assert [r["eventMetadata"]["inferenceId"] for r in captured(aws, written)] == ["late"]


def test_sampling_share_and_files_of_at_most_100_records(aws, endpoint):
    """InitialSamplingPercentage 30 of 1000 requests, decided by the router's capture step for each successful
    request (called directly here: 1000 round trips to the model would take a minute on a shared machine)."""
    sagemaker = aws.client("sagemaker")
    config = data_capture(f"s3://{aws.data_bucket}/capture/churn/", 30, endpoint["kms_key"])
    variants = sagemaker.describe_endpoint_config(EndpointConfigName=f"{ENDPOINT}-1")["ProductionVariants"]
    sagemaker.create_endpoint_config(
        EndpointConfigName=f"{ENDPOINT}-30",
        ProductionVariants=[{k: v for k, v in p.items() if k != "CurrentWeight"} for p in variants],
        DataCaptureConfig=config,
    )
    sagemaker.update_endpoint(EndpointName=ENDPOINT, EndpointConfigName=f"{ENDPOINT}-30")
    aws.flush_capture()
    before = len(aws.bridges.capture_files)
    now = datetime.now(UTC)
    for i in range(1000):
        aws.bridges.capture(
            ENDPOINT,
            "champion",
            f"{ENDPOINT}-model",
            "text/csv",
            ROW.encode(),
            "application/json",
            b"{}",
            f"s-{i}",
            now,
        )
    aws.flush_capture()
    written = aws.bridges.capture_files[before:]
    records = captured(aws, written)
    # 30 % of 1000: binomial mean 300, sd 14.5; 4.5 sd either side.
    assert 235 <= len(records) <= 365, len(records)
    assert len({r["eventMetadata"]["inferenceId"] for r in records}) == len(records)
    sizes = [len(captured(aws, [uri])) for uri in written]
    assert sizes[:-1] == [100] * (len(sizes) - 1) and 0 < sizes[-1] <= 100, sizes
    sagemaker.update_endpoint(EndpointName=ENDPOINT, EndpointConfigName=f"{ENDPOINT}-1")
    invoke(aws)
    assert len(captured(aws, aws.flush_capture())) == 1  # the current config (100 %) decides, not the old one


def test_describe_endpoint_answers_the_current_configs_capture_as_aws_does(aws, endpoint):
    """DescribeEndpoint's DataCaptureConfig is a DataCaptureConfigSummary (every required field, the current config's
    sampling); moto answered the creation config's fields without CaptureStatus and CurrentSamplingPercentage, and
    the SageMaker SDK's Endpoint.get refused the reply."""
    sagemaker = aws.client("sagemaker")
    required = set(sagemaker.meta.service_model.shape_for("DataCaptureConfigSummary").required_members)
    variants = sagemaker.describe_endpoint_config(EndpointConfigName=f"{ENDPOINT}-1")["ProductionVariants"]
    variants = [{k: v for k, v in p.items() if k != "CurrentWeight"} for p in variants]
    capture = data_capture(f"s3://{aws.data_bucket}/capture/churn/", 100, endpoint["kms_key"])
    name = "refit-capture-summary"
    configs = {
        "full": capture,
        "sampled": {**capture, "InitialSamplingPercentage": 20},
        "off": {**capture, "EnableCapture": False},
        "none": None,
    }
    for suffix, config in configs.items():
        extra = {"DataCaptureConfig": config} if config else {}
        sagemaker.create_endpoint_config(EndpointConfigName=f"{name}-{suffix}", ProductionVariants=variants, **extra)
    sagemaker.create_endpoint(EndpointName=name, EndpointConfigName=f"{name}-full")
    expected = {"DestinationS3Uri": capture["DestinationS3Uri"], "KmsKeyId": endpoint["kms_key"]}
    summary = sagemaker.describe_endpoint(EndpointName=name)["DataCaptureConfig"]
    assert set(summary) == required
    assert summary == {**expected, "EnableCapture": True, "CaptureStatus": "Started", "CurrentSamplingPercentage": 100}

    sagemaker.update_endpoint(EndpointName=name, EndpointConfigName=f"{name}-sampled")
    summary = sagemaker.describe_endpoint(EndpointName=name)["DataCaptureConfig"]
    assert summary == {**expected, "EnableCapture": True, "CaptureStatus": "Started", "CurrentSamplingPercentage": 20}
    sagemaker.update_endpoint(EndpointName=name, EndpointConfigName=f"{name}-off")
    summary = sagemaker.describe_endpoint(EndpointName=name)["DataCaptureConfig"]
    assert summary == {**expected, "EnableCapture": False, "CaptureStatus": "Stopped", "CurrentSamplingPercentage": 100}
    sagemaker.update_endpoint(EndpointName=name, EndpointConfigName=f"{name}-none")
    assert "DataCaptureConfig" not in sagemaker.describe_endpoint(EndpointName=name)


def test_capture_options_and_undeclared_content_types(aws, endpoint):
    """Only the halves CaptureOptions names; a content type CaptureContentTypeHeader does not list is BASE64; the
    objects are encrypted with the config's KmsKeyId even where the bucket's default key differs."""
    sagemaker = aws.client("sagemaker")
    other_key = aws.client("kms").create_key(Description="another capture key")["KeyMetadata"]["Arn"]
    config = {
        **data_capture(f"s3://{aws.data_bucket}/capture/churn", 100, other_key),
        "CaptureOptions": [{"CaptureMode": "Input"}],
        "CaptureContentTypeHeader": {"JsonContentTypes": ["application/json"]},
    }
    variants = sagemaker.describe_endpoint_config(EndpointConfigName=f"{ENDPOINT}-1")["ProductionVariants"]
    sagemaker.create_endpoint_config(
        EndpointConfigName=f"{ENDPOINT}-input",
        ProductionVariants=[{k: v for k, v in p.items() if k != "CurrentWeight"} for p in variants],
        DataCaptureConfig=config,
    )
    sagemaker.update_endpoint(EndpointName=ENDPOINT, EndpointConfigName=f"{ENDPOINT}-input")
    aws.flush_capture()
    invoke(aws)
    invoke(aws, json.dumps({"instances": [[12.0, 70.5, 1, 48.0, "basic", "north"]]}), "application/json")
    uris = aws.flush_capture()
    csv, as_json = captured(aws, uris)
    bucket, key = uris[0].removeprefix("s3://").split("/", 1)
    assert aws.client("s3").head_object(Bucket=bucket, Key=key)["SSEKMSKeyId"] == other_key  # not the bucket's key
    assert set(csv["captureData"]) == {"endpointInput"}
    assert csv["captureData"]["endpointInput"]["encoding"] == "BASE64"
    assert base64.b64decode(csv["captureData"]["endpointInput"]["data"]).decode() == ROW
    assert as_json["captureData"]["endpointInput"]["encoding"] == "JSON"
    sagemaker.update_endpoint(EndpointName=ENDPOINT, EndpointConfigName=f"{ENDPOINT}-1")


def test_capture_is_written_as_the_models_execution_role(aws, endpoint):
    """Without the model role's s3:PutObject on the capture prefix nothing is captured, the request still succeeds
    (the local IAM refuses the write as it would refuse SageMaker writing with that role)."""
    role = stack_setting(aws, "REFIT_SAGEMAKER_ROLE_ARN")
    saved = copy.deepcopy(aws.iam.policies[role])
    try:
        for statement in aws.iam.policies[role]:
            resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            statement["Resource"] = [
                r for r in resources if not (isinstance(r, str) and r.endswith("/capture/churn/*"))
            ]
        aws.flush_capture()
        invoke(aws)
        assert aws.flush_capture() == []
        assert (
            "AccessDenied" in aws.bridges.capture_failures[-1]
            and role.split("/")[-1] in aws.bridges.capture_failures[-1]
        )
    finally:
        aws.iam.policies[role][:] = saved  # in place: a signed-in role holds this very list
        aws.bridges.capture_failures.clear()
    invoke(aws)
    assert len(aws.flush_capture()) == 1


# ---------------------------------------------------------------- alarms in the runtime
@pytest.fixture(scope="module")
def alarm_events(aws):
    """What EventBridge delivers of CloudWatch Alarm State Change events, through a rule with an SQS target."""
    sqs, events = aws.client("sqs"), aws.client("events")
    queue = sqs.create_queue(QueueName="alarm-events")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(
        Name="alarm-events",
        EventPattern=json.dumps({"source": ["aws.cloudwatch"], "detail-type": ["CloudWatch Alarm State Change"]}),
    )
    events.put_targets(Rule="alarm-events", Targets=[{"Id": "q", "Arn": arn}])

    def received() -> list[dict]:
        messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", [])
        for message in messages:
            sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])
        return [json.loads(m["Body"]) for m in messages]

    return received


def state(aws, name: str) -> str:
    return aws.client("cloudwatch").describe_alarms(AlarmNames=[name])["MetricAlarms"][0]["StateValue"]


def test_an_alarm_goes_ok_alarm_ok_from_the_metrics_put_with_its_events(aws, alarm_events):
    cloudwatch = aws.client("cloudwatch")
    dimensions = [{"Name": "Service", "Value": "bridge"}]
    cloudwatch.put_metric_alarm(
        AlarmName="bridge-latency",
        AlarmDescription="latency too high",
        Namespace="Bridge",
        MetricName="Latency",
        Dimensions=dimensions,
        Statistic="Average",
        Period=60,
        EvaluationPeriods=1,
        Threshold=100.0,
        ComparisonOperator="GreaterThanThreshold",
        TreatMissingData="notBreaching",
    )
    alarm_events()
    # Another dimension set is another metric: it does not touch the alarm.
    cloudwatch.put_metric_data(
        Namespace="Bridge",
        MetricData=[
            {"MetricName": "Latency", "Value": 900.0, "Dimensions": [*dimensions, {"Name": "x", "Value": "y"}]}
        ],
    )
    assert state(aws, "bridge-latency") == "OK"
    cloudwatch.put_metric_data(
        Namespace="Bridge", MetricData=[{"MetricName": "Latency", "Value": 500.0, "Dimensions": dimensions}]
    )
    assert state(aws, "bridge-latency") == "ALARM"
    cloudwatch.put_metric_data(
        Namespace="Bridge",
        MetricData=[{"MetricName": "Latency", "Values": [0.0], "Counts": [10.0], "Dimensions": dimensions}],
    )
    assert state(aws, "bridge-latency") == "OK"  # average 500/11 (or 0 in a new minute)
    cloudwatch.put_metric_data(
        Namespace="Bridge", MetricData=[{"MetricName": "Latency", "Value": 1.0, "Dimensions": dimensions}]
    )  # no change, no event
    delivered = alarm_events()
    assert [e["detail"]["alarmName"] for e in delivered] == ["bridge-latency", "bridge-latency"]
    to_alarm, to_ok = sorted(delivered, key=lambda e: e["detail"]["state"]["timestamp"])
    arn = cloudwatch.describe_alarms(AlarmNames=["bridge-latency"])["MetricAlarms"][0]["AlarmArn"]
    assert to_alarm["source"] == "aws.cloudwatch" and to_alarm["resources"] == [arn]
    assert (to_alarm["detail"]["previousState"]["value"], to_alarm["detail"]["state"]["value"]) == ("OK", "ALARM")
    assert (to_ok["detail"]["previousState"]["value"], to_ok["detail"]["state"]["value"]) == ("ALARM", "OK")
    assert to_alarm["detail"]["state"]["reason"].startswith("Threshold Crossed: 1 out of the last 1 datapoints [500.0")
    assert json.loads(to_alarm["detail"]["state"]["reasonData"])["evaluatedDatapoints"][0]["value"] == 500.0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+0000", to_ok["detail"]["state"]["timestamp"])
    configuration = to_alarm["detail"]["configuration"]
    assert configuration["description"] == "latency too high"
    assert configuration["metrics"][0]["metricStat"] == {
        "metric": {"namespace": "Bridge", "name": "Latency", "dimensions": {"Service": "bridge"}},
        "period": 60,
        "stat": "Average",
    }


def test_set_alarm_state_puts_its_event_and_the_alarm_returns_to_what_its_metric_says(aws, alarm_events):
    """SetAlarmState (the monitor re-arms the quality alarm with it): the state changes with its event, then the
    next evaluation puts the alarm back where its datapoints say, with a second event (CloudWatch: within a minute)."""
    cloudwatch = aws.client("cloudwatch")
    cloudwatch.put_metric_alarm(
        AlarmName="bridge-rearm",
        Namespace="Bridge",
        MetricName="Bound",
        Statistic="Maximum",
        Period=3600,
        EvaluationPeriods=1,
        Threshold=0.7,
        ComparisonOperator="LessThanThreshold",
        TreatMissingData="notBreaching",
    )
    cloudwatch.put_metric_data(Namespace="Bridge", MetricData=[{"MetricName": "Bound", "Value": 0.6}])
    assert state(aws, "bridge-rearm") == "ALARM"
    alarm_events()
    cloudwatch.set_alarm_state(AlarmName="bridge-rearm", StateValue="OK", StateReason="re-armed")
    assert state(aws, "bridge-rearm") == "ALARM"
    delivered = [e["detail"] for e in alarm_events() if e["detail"]["alarmName"] == "bridge-rearm"]
    moves = sorted((d["state"]["timestamp"], d["previousState"]["value"], d["state"]["value"]) for d in delivered)
    assert [m[1:] for m in moves] == [("ALARM", "OK"), ("OK", "ALARM")]
    assert next(d for d in delivered if d["state"]["value"] == "OK")["state"]["reason"] == "re-armed"
    with pytest.raises(ClientError, match="ResourceNotFound"):
        cloudwatch.set_alarm_state(AlarmName="bridge-no-such-alarm", StateValue="OK", StateReason="x")
    with pytest.raises(ClientError, match="StateReasonData|InvalidFormat"):
        cloudwatch.set_alarm_state(AlarmName="bridge-rearm", StateValue="OK", StateReason="x", StateReasonData="{")


def test_missing_data_is_judged_when_time_passes(aws, alarm_events):
    cloudwatch = aws.client("cloudwatch")
    for name, treatment in (("bridge-quiet-breaching", "breaching"), ("bridge-quiet-missing", "missing")):
        cloudwatch.put_metric_alarm(
            AlarmName=name,
            Namespace="Bridge",
            MetricName="Heartbeat",
            Statistic="Sum",
            Period=60,
            EvaluationPeriods=2,
            Threshold=1.0,
            ComparisonOperator="LessThanThreshold",
            TreatMissingData=treatment,
        )
    cloudwatch.put_metric_data(Namespace="Bridge", MetricData=[{"MetricName": "Heartbeat", "Value": 1.0}])
    assert (state(aws, "bridge-quiet-breaching"), state(aws, "bridge-quiet-missing")) == ("OK", "OK")
    alarm_events()
    changes = aws.evaluate_alarms(now=datetime.now(UTC) + timedelta(minutes=10))  # ten quiet minutes later
    assert ("bridge-quiet-breaching", "ALARM") in changes and ("bridge-quiet-missing", "INSUFFICIENT_DATA") in changes
    assert state(aws, "bridge-quiet-breaching") == "ALARM"
    assert {e["detail"]["alarmName"] for e in alarm_events()} >= {"bridge-quiet-breaching", "bridge-quiet-missing"}


def test_the_quality_alarm_fires_on_the_monitors_bound_and_starts_a_run(aws):
    handles = aws.model("churn")
    before = {e["executionArn"] for e in aws.executions("churn")}
    dimensions = [{"Name": "Model", "Value": "churn"}, {"Name": "Variant", "Value": "champion"}]
    cloudwatch = aws.client("cloudwatch")
    cloudwatch.put_metric_data(
        Namespace=MONITOR_NAMESPACE,
        MetricData=[{"MetricName": LIVE_METRIC_ALARM_BOUND, "Value": 0.5, "Dimensions": dimensions}],
    )
    assert state(aws, handles.quality_alarm) == "ALARM"  # the bound 0.5 is below the threshold 0.7 (refit.toml)
    started = [e for e in aws.executions("churn") if e["executionArn"] not in before]
    assert len(started) == 1
    execution = aws.wait_for(started[0]["executionArn"], timeout=120)
    record = next(r for r in aws.audit_records("churn") if r["execution"] == execution["name"])
    assert record["trigger"] == "alarm", (record["outcome"], record["message"], record.get("error"))
    cloudwatch.put_metric_data(
        Namespace=MONITOR_NAMESPACE,
        MetricData=[{"MetricName": LIVE_METRIC_ALARM_BOUND, "Value": 0.95, "Dimensions": dimensions}],
    )
    assert state(aws, handles.quality_alarm) == "OK"  # the hour's average bound is back above 0.7
    assert {e["executionArn"] for e in aws.executions("churn")} - before == {started[0]["executionArn"]}


def test_alarms_not_evaluated_locally_never_break_put_metric_data(aws):
    """An alarm CloudWatch would refuse, and a metric-math alarm with a function the bridge does not evaluate, are left
    alone."""
    cloudwatch = aws.client("cloudwatch")
    cloudwatch.put_metric_alarm(
        AlarmName="bridge-impossible",
        Namespace="Bridge",
        MetricName="Odd",
        Statistic="Sum",
        Period=60,
        EvaluationPeriods=1,
        DatapointsToAlarm=3,  # more than EvaluationPeriods
        Threshold=0.0,
        ComparisonOperator="GreaterThanThreshold",
    )
    cloudwatch.put_metric_alarm(
        AlarmName="bridge-anomaly",
        Metrics=[
            {"Id": "m", "MetricStat": {"Metric": metric("Odd"), "Period": 60, "Stat": "Sum"}, "ReturnData": False},
            {"Id": "e", "Expression": "RATE(m)", "ReturnData": True},
        ],
        EvaluationPeriods=1,
        Threshold=0.0,
        ComparisonOperator="GreaterThanThreshold",
    )
    cloudwatch.put_metric_data(Namespace="Bridge", MetricData=[{"MetricName": "Odd", "Value": 5.0}])
    assert state(aws, "bridge-impossible") == state(aws, "bridge-anomaly") == "OK"  # moto's initial state, unchanged


# ---------------------------------------------------------------- metric-math alarms
def metric(name: str, namespace: str = "Bridge", **dimensions: str) -> dict:
    return {
        "Namespace": namespace,
        "MetricName": name,
        "Dimensions": [{"Name": k, "Value": v} for k, v in dimensions.items()],
    }


def math_spec(expression: str, names: dict[str, str], threshold: float, **changes) -> MathAlarmSpec:
    return MathAlarmSpec.from_description(
        {
            "AlarmName": "math",
            "Metrics": [
                *[
                    {"Id": i, "MetricStat": {"Metric": metric(n), "Period": 60, "Stat": "Sum"}, "ReturnData": False}
                    for i, n in names.items()
                ],
                {"Id": "e", "Expression": expression},
            ],
            "EvaluationPeriods": 1,
            "Threshold": threshold,
            "ComparisonOperator": "GreaterThanThreshold",
            "TreatMissingData": "notBreaching",
            **changes,
        }
    )


MINUTE = datetime(2026, 11, 29, 1, 7, tzinfo=UTC)
CANARY_MATH = math_spec(error_rate_alarm_expression(20), {"errors": "E", "invocations": "I"}, 0.01)


def canary_minute(invocations: float, errors: float | None) -> dict[str, list[Datapoint]]:
    at = MINUTE + timedelta(seconds=5)
    return {
        "invocations": [Datapoint.of(at, invocations)],
        "errors": [] if errors is None else [Datapoint.of(at, errors)],
    }


@pytest.mark.parametrize(
    ("invocations", "errors", "expected"),
    [
        (100, 1, "OK"),  # 1% is not over max_error_rate 0.01
        (100, 2, "ALARM"),
        (120, 21, "ALARM"),  # a burst
        (19, 19, "OK"),  # under min_invocations: not judged by the alarm (the step's floor judges the window)
        (20, 1, "ALARM"),  # 5% with the minimum traffic
        (100, None, "OK"),  # no 5XX point: missing counts as 0 in metric math
    ],
)
def test_the_canary_alarm_expression_is_a_rate_with_an_invocation_floor(invocations, errors, expected):
    result = evaluate_alarm(CANARY_MATH, canary_minute(invocations, errors), MINUTE + timedelta(seconds=30))
    assert result.state == expected, result.reason


def test_a_minute_without_invocations_is_missing_data_not_a_breach():
    quiet = evaluate_alarm(CANARY_MATH, {"invocations": [], "errors": []}, MINUTE, "ALARM")
    assert quiet.state == "OK" and "treated as [NonBreaching]" in quiet.reason
    missing = math_spec(error_rate_alarm_expression(20), {"errors": "E", "invocations": "I"}, 0.01)
    errors_only = {"invocations": [], "errors": [Datapoint.of(MINUTE, 3.0)]}
    # errors without invocations: the condition has no point, so IF gives none (missing), never a division by zero
    assert evaluate_alarm(dataclasses.replace(missing, treat_missing_data="missing"), errors_only, MINUTE).state == (
        "INSUFFICIENT_DATA"
    )


def test_metric_math_follows_the_guides_tables():
    """CloudWatch User Guide, "Metric math syntax and functions": comparison and IF examples, arithmetic with a missing
    value as 0, a division by zero dropped, FILL over the whole range."""
    metric1, metric2 = [30, 20, 0, 0, None], [20, None, 20, None, None]
    if1, if2, if3 = [1, 1, 0, 0, None], [30, None, 0, 0, 30], [0, 0, 20, None, 20]
    cases = [
        ("(m1 < m2)", {"m1": metric1, "m2": metric2}, [0, 0, 1, 0, None]),
        ("(m1 >= 30)", {"m1": metric1}, [1, 0, 0, 0, None]),
        ("(m1 > 15 AND m2 > 15)", {"m1": metric1, "m2": metric2}, [1, 0, 0, 0, None]),
        ("IF(m1, m2, m3)", {"m1": if1, "m2": if2, "m3": if3}, [30, 0, 20, None, None]),
        ("IF(m1, 5, m3)", {"m1": if1, "m3": if3}, [5, 5, 20, None, None]),
        ("IF(m1, m2, 5)", {"m1": if1, "m2": if2}, [30, 0, 5, 5, None]),
        ("m1 + m2", {"m1": metric1, "m2": metric2}, [50, 20, 20, 0, None]),
        ("m2 / m1", {"m1": metric1, "m2": metric2}, [20 / 30, 0, None, None, None]),
        ("FILL(m2, 7) * 2", {"m2": metric2}, [40, 14, 40, 14, 14]),
    ]
    for expression, inputs, expected in cases:
        series_by_id = {k: {i: float(v) for i, v in enumerate(values) if v is not None} for k, values in inputs.items()}
        spec_ = math_spec(expression, {k: k.upper() for k in inputs}, 0.0)
        got = spec_.values(series_by_id, 5)
        assert got == {i: pytest.approx(v) for i, v in enumerate(expected) if v is not None}, expression


def test_unsupported_metric_math_is_refused_with_its_name():
    with pytest.raises(ValueError, match="ANOMALY_DETECTION_BAND is not evaluated locally"):
        math_spec("ANOMALY_DETECTION_BAND(m1)", {"m1": "M"}, 0.0)


def test_the_stacks_canary_alarm_is_a_rate_with_a_floor_on_the_endpoints_metrics(aws):
    """The canary alarm as deployed (metric math: the challenger's 5XX / invocations when at least min_invocations,
    over max_error_rate) from the endpoint's own metrics: 1 error in 100 stays OK, a burst goes to ALARM."""
    handles = aws.model("churn")
    described = aws.client("cloudwatch").describe_alarms(AlarmNames=[handles.canary_alarm])["MetricAlarms"][0]
    spec_ = MathAlarmSpec.from_description(described)
    assert spec_.treat_missing_data == "notBreaching" and spec_.comparison == "GreaterThanThreshold"
    dimensions = [
        {"Name": "EndpointName", "Value": handles.endpoint_name},
        {"Name": "VariantName", "Value": "challenger"},
    ]

    def put(invocations: float, errors: float) -> None:
        aws.client("cloudwatch").put_metric_data(
            Namespace="AWS/SageMaker",
            MetricData=[
                {"MetricName": "Invocations", "Value": invocations, "Dimensions": dimensions},
                {"MetricName": "Invocation5XXErrors", "Value": errors, "Dimensions": dimensions},
            ],
        )

    aws.set_alarm_state(handles.canary_alarm, "OK", "test start")
    put(100.0, 1.0)
    assert state(aws, handles.canary_alarm) == "OK"
    put(30.0, 30.0)  # in the same minute 31 of 130, or alone in the next one 30 of 30: over the rate either way
    assert state(aws, handles.canary_alarm) == "ALARM"
    aws.set_alarm_state(handles.canary_alarm, "OK", "test over")


def test_the_runs_failed_alarm_fires_on_one_failed_execution_without_fill(aws):
    """`failed + timedout + aborted` over Step Functions' metrics: only ExecutionsFailed has a point (Step Functions
    publishes the others only when they happen), and metric math counts the missing ones as 0, so one failure
    alarms; with no point at all the sum is missing data, not breaching. No FILL is needed."""
    cloudwatch = aws.client("cloudwatch")
    runs_failed = next(
        a
        for a in cloudwatch.describe_alarms()["MetricAlarms"]
        if a.get("Metrics") and "runs-failed" in a["AlarmName"] and "churn" in a["AlarmName"]
    )
    spec_ = MathAlarmSpec.from_description(runs_failed)
    failed = next(q for q in spec_.metrics if q.metric_name == "ExecutionsFailed")
    assert evaluate_alarm(spec_, {}, datetime.now(UTC)).state == "OK"  # no data: notBreaching
    cloudwatch.put_metric_data(
        Namespace=failed.namespace,
        MetricData=[
            {
                "MetricName": "ExecutionsFailed",
                "Value": 1.0,
                "Dimensions": [{"Name": k, "Value": v} for k, v in failed.dimensions.items()],
            }
        ],
    )
    assert state(aws, runs_failed["AlarmName"]) == "ALARM"
    aws.set_alarm_state(runs_failed["AlarmName"], "OK", "test over")


def execution_metrics(aws, machine_arn: str, deadline: float = 5.0) -> dict[str, float]:
    """The AWS/States metrics put for `machine_arn` (name -> sum), read until one is there or `deadline` s pass: the
    runtime puts them right after the execution's status is set, so a describe can see the end a moment before."""
    cloudwatch, until = aws.client("cloudwatch"), time.monotonic() + deadline
    dimensions = [{"Name": "StateMachineArn", "Value": machine_arn}]
    while True:
        names = {
            m["MetricName"]
            for m in cloudwatch.list_metrics(Namespace="AWS/States", Dimensions=dimensions)["Metrics"]
            if m["Dimensions"] == dimensions
        }
        if names or time.monotonic() > until:
            break
        time.sleep(0.02)
    now = datetime.now(UTC)
    return {
        name: sum(
            p["Sum"]
            for p in cloudwatch.get_metric_statistics(
                Namespace="AWS/States",
                MetricName=name,
                Dimensions=dimensions,
                StartTime=now - timedelta(minutes=10),
                EndTime=now + timedelta(minutes=5),
                Period=300,
                Statistics=["Sum"],
            )["Datapoints"]
        )
        for name in names
    }


def test_an_execution_that_fails_publishes_executions_failed_and_alarms_the_runs_failed_alarm(aws):
    """Step Functions publishes AWS/States ExecutionsFailed (1, dimension StateMachineArn) when an execution fails
    and ExecutionsSucceeded when one succeeds; moto publishes neither. The runtime does, so the run-failed alarm (the
    stack's own definition, here over a small machine's ARN) goes to ALARM from a failed execution alone."""
    sfn, cloudwatch = aws.client("stepfunctions"), aws.client("cloudwatch")
    definition = {
        "StartAt": "Choose",
        "States": {
            "Choose": {
                "Type": "Choice",
                "Choices": [{"Variable": "$.fail", "BooleanEquals": True, "Next": "Fail"}],
                "Default": "Done",
            },
            "Fail": {"Type": "Fail", "Error": "Broken", "Cause": "asked to fail"},
            "Done": {"Type": "Succeed"},
        },
    }
    role = f"arn:aws:iam::{ACCOUNT}:role/bridge-states"
    machines = {
        outcome: sfn.create_state_machine(
            name=f"bridge-execution-metrics-{outcome}", definition=json.dumps(definition), roleArn=role
        )["stateMachineArn"]
        for outcome in ("fails", "succeeds")
    }
    runs_failed = next(
        a
        for a in cloudwatch.describe_alarms()["MetricAlarms"]
        if a.get("Metrics") and "runs-failed" in a["AlarmName"] and "churn" in a["AlarmName"]
    )
    queries = copy.deepcopy(runs_failed["Metrics"])
    for query in queries:
        if "MetricStat" in query:
            query["MetricStat"]["Metric"]["Dimensions"] = [{"Name": "StateMachineArn", "Value": machines["fails"]}]
    cloudwatch.put_metric_alarm(
        AlarmName="bridge-runs-failed",
        Metrics=queries,
        **{k: runs_failed[k] for k in ("EvaluationPeriods", "Threshold", "ComparisonOperator", "TreatMissingData")},
    )
    aws.set_alarm_state("bridge-runs-failed", "OK", "test start")

    for outcome, fail in (("succeeds", False), ("fails", True)):
        run = sfn.start_execution(stateMachineArn=machines[outcome], name="run", input=json.dumps({"fail": fail}))
        assert aws.wait_for(run["executionArn"], timeout=30)["status"] == ("FAILED" if fail else "SUCCEEDED")

    succeeded = execution_metrics(aws, machines["succeeds"])
    assert succeeded.get("ExecutionsSucceeded") == 1.0 and "ExecutionsFailed" not in succeeded
    failed = execution_metrics(aws, machines["fails"])
    assert failed.get("ExecutionsFailed") == 1.0 and "ExecutionsSucceeded" not in failed
    assert "ExecutionTime" in failed
    assert state(aws, "bridge-runs-failed") == "ALARM"
    cloudwatch.delete_alarms(AlarmNames=["bridge-runs-failed"])
