"""A training window of the last 2 batches with recency weights, end to end on the local runtime: the third run
trains on its new batch and the second run's kept batch, not the first's; the inputs manifest, the rows the job
read, lineage and the audit record all say so. The tests share one runtime and run in order."""

from __future__ import annotations

import json

import pytest
from refit_core.training import inputs_manifest_key, read_training_outputs

from scripts.local_aws.runtime import LocalRuntime
from scripts.sample_data import churn_batch, to_csv_bytes

MODEL = "window"  # training_window last_batches 2 (tests/assemblies.py)
ROWS = {"first.csv": 2000, "second.csv": 1500, "third.csv": 1200}


@pytest.fixture(scope="module")
def aws(training_assembly, tmp_path_factory):
    with LocalRuntime(training_assembly, tmp_path_factory.mktemp("runtime-window"), seed=5) as runtime:
        yield runtime


def record_for(aws, execution_arn):
    return next(r for r in aws.audit_records(MODEL) if r["execution"] == execution_arn.rsplit(":", 1)[-1])


def run_on(aws, name: str, seed: int, shift: float) -> dict:
    """Land a batch (its S3 event starts the run); each batch drifts from the one before, so every run trains."""
    execution = aws.wait_for(aws.land_batch(MODEL, name, to_csv_bytes(churn_batch(ROWS[name], seed, shift))))
    record = record_for(aws, execution["executionArn"])
    assert record["training"] and record["training"]["status"] == "Completed", record["message"]
    return record


def test_the_third_run_trains_on_its_batch_and_the_newest_kept_one_only(aws):
    first = run_on(aws, "first.csv", 1, 0.0)
    second = run_on(aws, "second.csv", 2, 1.0)
    assert first["kept_for_training"] and second["kept_for_training"]
    third = run_on(aws, "third.csv", 3, 2.0)
    kept_second = second["kept_for_training"].rsplit("/", 1)[-1]

    window = third["training"]["window"]
    assert window["window"] == "last 2 batches, half-life 7 days"
    assert (window["n_batches"], window["n_kept_available"]) == (2, 2)
    s3 = aws.client("s3")
    job_name = third["training"]["job_name"]
    manifest = json.loads(
        s3.get_object(Bucket=aws.artifact_bucket, Key=inputs_manifest_key(MODEL, third["run_id"], job_name))[
            "Body"
        ].read()
    )
    assert [(i["channel"], i["uri"]) for i in manifest["inputs"]] == [
        ("current", f"s3://{aws.data_bucket}/incoming/{MODEL}/third.csv"),
        ("train", second["kept_for_training"]),
    ]
    assert all(i["version_id"] and i["etag"] and i["last_modified"] for i in manifest["inputs"])
    # The rows the job read, by file: the first run's kept batch is not among them.
    job = aws.client("sagemaker").describe_training_job(TrainingJobName=job_name)
    outputs = read_training_outputs(s3, job["OutputDataConfig"]["S3OutputPath"], job_name)
    evaluation = json.loads(outputs["evaluation.json"])
    assert evaluation["inputs"]["rows"] == {"current/third.csv": 1200, f"train/{kept_second}": 1500}
    assert evaluation["inputs"]["weighted"] is True and evaluation["search"]["weighted"] is True
    assert "Training window: last 2 batches, half-life 7 days: 2 batches" in next(
        s["message"] for s in aws.published_summaries() if third["run_id"] in s["message"]
    )
    # Registered (approved or not): lineage names the same objects and versions.
    bucket, key = third["registry"]["lineage_uri"].removeprefix("s3://").split("/", 1)
    lineage = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    assert lineage["inputs"] == manifest["inputs"] and lineage["window"]["n_batches"] == 2
