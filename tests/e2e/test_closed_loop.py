"""The production half of the loop on the local runtime, from the synthesized template: captured traffic, labels,
the monitor, the quality alarm firing by itself from refit's own metric, a retrain on the feedback, and recovery.
Tests in this module share one runtime and run in order."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pandas as pd
import pytest

from scripts.local_aws.runtime import LocalRuntime
from scripts.sample_data import churn_batch, to_csv_bytes

MODEL = "churn"
ROWS_PER_REQUEST = 20


@pytest.fixture(scope="module")
def aws(cloud_assembly, tmp_path_factory):
    with LocalRuntime(cloud_assembly, tmp_path_factory.mktemp("runtime"), spot_discount=0.7, seed=5) as runtime:
        execution = runtime.wait_for(runtime.land_batch(MODEL, "first.csv", to_csv_bytes(churn_batch(4000, 1))))
        assert execution["status"] == "SUCCEEDED"
        # A canary is judged on the traffic of its bake: the same market keeps sending requests meanwhile (700: the
        # challenger's 20% needs 100 ModelLatency samples for its p99 to be judged, or the step is quiet).
        runtime.on_wait(
            "Bake canary", lambda state, seconds: traffic(runtime, 700, 40, "bake", new_market=0.4, per_request=1)
        )
        yield runtime


def traffic(
    aws: LocalRuntime, rows: int, seed: int, tag: str, new_market: float, per_request: int = ROWS_PER_REQUEST
) -> pd.DataFrame:
    frame = churn_batch(rows, seed, new_market=new_market)
    keys = []
    for start in range(0, rows, per_request):
        part = frame.iloc[start : start + per_request]
        inference_id = f"{tag}-{start // per_request:05d}"
        aws.invoke_endpoint(
            MODEL, part.drop(columns=["churned"]).to_csv(index=False, header=False), inference_id=inference_id
        )
        keys += [inference_id] if len(part) == 1 else [f"{inference_id}:{i}" for i in range(len(part))]
    aws.flush_capture()
    return frame.assign(inference_id=keys)


def put_labels(aws: LocalRuntime, name: str, body: bytes) -> None:
    hour = datetime.now(UTC).strftime("%Y/%m/%d/%H")
    aws.put_object(aws.data_bucket, f"ground-truth/{MODEL}/{hour}/{name}", body)


def labels_csv(frame: pd.DataFrame) -> bytes:
    return frame[["inference_id", "churned"]].rename(columns={"churned": "label"}).to_csv(index=False).encode()


def alarm_state(aws: LocalRuntime) -> str:
    cloudwatch = aws.client("cloudwatch")
    return cloudwatch.describe_alarms(AlarmNames=[aws.model(MODEL).quality_alarm])["MetricAlarms"][0]["StateValue"]


def monitor_metrics(aws: LocalRuntime, name: str) -> list[float]:
    cloudwatch = aws.client("cloudwatch")
    now = datetime.now(UTC)
    points = cloudwatch.get_metric_statistics(
        Namespace="Refit",
        MetricName=name,
        Dimensions=[{"Name": "Model", "Value": MODEL}, {"Name": "Variant", "Value": "champion"}],
        StartTime=now.replace(hour=0, minute=0, second=0, microsecond=0),
        EndTime=now.replace(microsecond=0).replace(second=59),
        Period=60,
        Statistics=["Minimum"],
    )["Datapoints"]
    return [p["Minimum"] for p in sorted(points, key=lambda p: p["Timestamp"])]


def test_capture_files_are_written_as_sagemaker_writes_them(aws):
    frame = traffic(aws, 200, seed=30, tag="warmup", new_market=0.0)
    listed = aws.client("s3").list_objects_v2(Bucket=aws.data_bucket, Prefix=f"capture/{MODEL}/")["Contents"]
    key = listed[0]["Key"]
    parts = key.split("/")
    assert parts[:4] == ["capture", MODEL, aws.model(MODEL).endpoint_name, "champion"] and key.endswith(".jsonl")
    record = json.loads(aws.client("s3").get_object(Bucket=aws.data_bucket, Key=key)["Body"].read().splitlines()[0])
    assert record["captureData"]["endpointInput"]["encoding"] == "CSV"
    assert record["eventMetadata"]["inferenceId"].startswith("warmup-")
    assert len(frame) == 200


def test_monitor_reports_bad_input_without_crashing_and_is_idempotent(aws):
    hour = datetime.now(UTC).strftime("%Y/%m/%d/%H")
    endpoint = aws.model(MODEL).endpoint_name
    aws.put_object(
        aws.data_bucket,
        f"capture/{MODEL}/{endpoint}/champion/{hour}/99-99-999-broken.jsonl",
        b'{"captureData": {"endpointInput": {"data": "1,2", "encoding": "CSV", "mode": "INPUT"\n'
        b'{"captureData": {"endpointInput": {"observedContentType": "x", "mode": "INPUT", "data": "AAA", '
        b'"encoding": "ROT13"}, "endpointOutput": {"observedContentType": "application/json", "mode": "OUTPUT", '
        b'"data": "{}", "encoding": "JSON"}}, "eventMetadata": {"eventId": "e1", "inferenceTime": '
        b'"2026-11-29T00:00:00Z"}, "eventVersion": "0"}\n',
    )
    put_labels(
        aws,
        "bad.csv",
        b"inference_id,label\nno-such-request:0,1\nwarmup-00000:0,maybe\nwarmup-00000:1,1\nwarmup-00000:1,1\n",
    )
    first = aws.run_monitor(MODEL)
    report = json.loads(aws.read_s3(first["report_uri"]))
    assert (
        report["capture"]["problems"].get("truncated_line", 0) + report["capture"]["problems"].get("not_json", 0) >= 1
    )
    assert report["capture"]["problems"].get("unknown_encoding") == 1
    assert report["labels"]["problems"].get("wrong_type") == 1
    assert report["labels"]["problems"].get("duplicate") == 1
    assert report["labels"]["problems"].get("unknown_id") == 1
    assert report["decision"]["breached"] is False  # 1 labelled row is no evidence
    page = aws.read_s3(first["report_html_uri"]).decode()
    assert "refit monitor: churn" in page and "unknown_encoding" in page and "unknown_id" in page
    captured = report["variants"]["champion"]["captured_rows"]
    second = aws.run_monitor(MODEL)
    again = json.loads(aws.read_s3(second["report_uri"]))
    assert again["capture"]["files"] == 0 and again["labels"]["files"] == 0  # nothing new: nothing read twice
    assert again["variants"]["champion"]["captured_rows"] == captured
    assert again["variants"]["champion"]["labelled_rows"] == report["variants"]["champion"]["labelled_rows"]
    assert alarm_state(aws) != "ALARM"


def test_the_alarm_fires_from_refits_own_metric_and_the_retrain_recovers(aws):
    before_runs = {e["executionArn"] for e in aws.executions(MODEL)}
    hurt = traffic(aws, 2000, seed=31, tag="week1", new_market=0.4)
    put_labels(aws, "week1.csv", labels_csv(hurt))
    result = aws.run_monitor(MODEL)
    live = result["variants"]["champion"]["live"]
    assert live["n"] >= 1000 and live["upper"] < 0.7, live
    assert result["decision"]["breached"] is True
    assert result["decision"]["reason"].startswith("live roc_auc ") and "below 0.7" in result["decision"]["reason"]
    assert monitor_metrics(aws, "LiveMetricAlarmBound")[-1] == pytest.approx(live["upper"])
    for name in ("CapturedRows", "LabelledRows", "EstimatedMetric", "LabelDelaySeconds", "InputDrift"):
        assert monitor_metrics(aws, name), f"the monitor published no {name}"  # the report's keys reach CloudWatch
    # The alarm changed state by itself (from the metric put) and its event started a run.
    started = [e for e in aws.executions(MODEL) if e["executionArn"] not in before_runs]
    assert len(started) == 1
    execution = aws.wait_for(started[0]["executionArn"], timeout=900)
    record = next(r for r in aws.audit_records(MODEL) if r["execution"] == started[0]["name"])
    assert execution["status"] == "SUCCEEDED", (record["outcome"], record["message"])
    assert record["trigger"] == "alarm" and record["provenance"] == "feedback"
    assert "live roc_auc" in record["trigger_reason"] and "n = 2,0" in record["trigger_reason"]
    assert record["data_uri"].startswith(f"s3://{aws.data_bucket}/feedback/{MODEL}/batches/")
    assert record["outcome"] == "promoted", record["message"]
    assert aws.endpoint_weights(MODEL) == {"champion": 1.0}
    # The feedback batch is now training history; its pending parts are gone.
    s3 = aws.client("s3")
    kept = s3.list_objects_v2(Bucket=aws.data_bucket, Prefix=f"training/{MODEL}/")["Contents"]
    assert any("feedback-" in item["Key"] for item in kept)
    assert s3.list_objects_v2(Bucket=aws.data_bucket, Prefix=f"feedback/{MODEL}/pending/")["KeyCount"] == 0
    # Active learning asked for labels within its daily budget.
    manifests = s3.list_objects_v2(Bucket=aws.data_bucket, Prefix=f"labeling/{MODEL}/")["Contents"]
    manifest = next(item for item in manifests if item["Key"].endswith(".manifest"))
    lines = s3.get_object(Bucket=aws.data_bucket, Key=manifest["Key"])["Body"].read().splitlines()
    assert 0 < len(lines) <= 200
    assert json.loads(lines[0])["source-ref"].startswith(f"s3://{aws.data_bucket}/labeling/{MODEL}/")

    # Recovery: the promoted model on the same market, with new labels.
    recovered = traffic(aws, 2000, seed=32, tag="week2", new_market=0.4)
    put_labels(aws, "week2.csv", labels_csv(recovered))
    result = aws.run_monitor(MODEL)
    live = result["variants"]["champion"]["live"]
    report = json.loads(aws.read_s3(result["report_uri"]))
    assert live["n"] == 2000, json.dumps(
        {k: report[k] for k in ("capture", "labels", "variants", "champion")}, default=str
    )[:3000]
    assert live["value"] > 0.7 and result["decision"]["breached"] is False
    assert alarm_state(aws) == "OK"


def pending_feedback_rows(aws: LocalRuntime) -> int:
    s3 = aws.client("s3")
    listed = s3.list_objects_v2(Bucket=aws.data_bucket, Prefix=f"feedback/{MODEL}/pending/").get("Contents", [])
    bodies = [s3.get_object(Bucket=aws.data_bucket, Key=item["Key"])["Body"].read() for item in listed]
    return sum(len(body.decode().splitlines()) - 1 for body in bodies)


def test_labels_that_arrive_before_their_capture_still_become_feedback(aws):
    """A label file read before the capture file of its requests (SageMaker delivers captures within minutes; a
    labeller can be faster) joins when the capture is read, and its rows become feedback then, once."""
    before = pending_feedback_rows(aws)
    early = churn_batch(200, 33, new_market=0.4)
    early["inference_id"] = [f"early-{i // ROWS_PER_REQUEST:05d}:{i % ROWS_PER_REQUEST}" for i in range(len(early))]
    put_labels(aws, "early.csv", labels_csv(early))
    first = json.loads(aws.read_s3(aws.run_monitor(MODEL)["report_uri"]))
    assert first["labels"]["problems"].get("unknown_id", 0) >= 200 and first["feedback"]["rows"] == 0
    assert first["alarm"] == {"name": aws.model(MODEL).quality_alarm, "state": "OK", "rearmed": False}
    sent = traffic(aws, 200, seed=33, tag="early", new_market=0.4)
    assert list(sent["inference_id"]) == list(early["inference_id"])
    second = json.loads(aws.read_s3(aws.run_monitor(MODEL)["report_uri"]))
    assert second["labels"]["files"] == 0 and second["feedback"]["rows"] == 200
    assert pending_feedback_rows(aws) == before + 200
    third = json.loads(aws.read_s3(aws.run_monitor(MODEL)["report_uri"]))
    assert third["feedback"]["rows"] == 0 and pending_feedback_rows(aws) == before + 200  # once, not again


def test_a_tampered_champion_is_refused_before_it_is_loaded(aws):
    """The registry records the SHA-256 of each model's pickle; the endpoint's model carries it to `serve`, and the
    monitor (like the drift check and `train`) refuses a file that does not match before unpickling it."""
    import io
    import tarfile

    from refit_core.artifacts import archive_model_sha256

    sagemaker, s3 = aws.client("sagemaker"), aws.client("s3")
    endpoint = sagemaker.describe_endpoint(EndpointName=aws.model(MODEL).endpoint_name)
    config = sagemaker.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    container = sagemaker.describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])["PrimaryContainer"]
    package = sagemaker.describe_model_package(ModelPackageName=container["Environment"]["REFIT_MODEL_PACKAGE_ARN"])
    bucket, _, key = container["ModelDataUrl"].removeprefix("s3://").partition("/")
    archive = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    digest = archive_model_sha256(archive)
    assert package["CustomerMetadataProperties"]["model_sha256"] == digest
    assert container["Environment"]["REFIT_MODEL_SHA256"] == digest
    # Someone with write access to the artifact bucket swaps the pickle for another.
    tampered = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as source,
        tarfile.open(fileobj=tampered, mode="w:gz") as target,
    ):
        for member in source.getmembers():
            data = source.extractfile(member).read()
            if member.name.endswith("model.joblib"):
                data += b"\x00"  # one byte more: a different file
            member.size = len(data)
            target.addfile(member, io.BytesIO(data))
    s3.put_object(Bucket=bucket, Key=key, Body=tampered.getvalue())
    with pytest.raises(RuntimeError, match=f"the model registry records {digest}; refusing to load it"):
        aws.run_monitor(MODEL)
