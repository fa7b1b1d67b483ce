"""Batches that would poison the training history, end to end on the local runtime: a reordered batch and one with an
extra column train with the history and are kept; a relabelled batch is refused before anything is spent and
quarantined with its reason; a file already under training/ that cannot train fails the run before any job starts,
naming the file. The tests share one runtime and run in order."""

from __future__ import annotations

import json

import pytest

from scripts.local_aws.runtime import LocalRuntime
from scripts.sample_data import churn_batch, to_csv_bytes

MODEL = "hygiene"  # the example model with one search trial (tests/assemblies.py)


@pytest.fixture(scope="module")
def aws(training_assembly, tmp_path_factory):
    with LocalRuntime(training_assembly, tmp_path_factory.mktemp("runtime-hygiene"), seed=7) as runtime:
        yield runtime


def run(aws, name: str, body: bytes) -> dict:
    execution = aws.wait_for(aws.land_batch(MODEL, name, body))
    return next(r for r in aws.audit_records(MODEL) if r["execution"] == execution["executionArn"].rsplit(":", 1)[-1])


def training_jobs(aws) -> list[str]:
    return [
        j["TrainingJobName"] for j in aws.client("sagemaker").list_training_jobs(MaxResults=100)["TrainingJobSummaries"]
    ]


def kept_files(aws) -> list[str]:
    listed = aws.client("s3").list_objects_v2(Bucket=aws.data_bucket, Prefix=f"training/{MODEL}/")
    return sorted(o["Key"] for o in listed.get("Contents", []))


def test_first_model(aws):
    record = run(aws, "first.csv", to_csv_bytes(churn_batch(2000, 1)))
    assert record["outcome"] == "deployed_first", record["message"]
    assert kept_files(aws) == [f"training/{MODEL}/{record['run_id']}-first.csv"]


def test_a_reordered_batch_trains_with_the_history_and_is_kept(aws):
    batch = churn_batch(3000, 2, shift=1.0)
    rows = batch.drop(columns=["churned"]).head(700).to_csv(index=False, header=False).splitlines()
    # Clients keep sending headerless rows in the champion's order during the bake (the challenger takes a share).
    aws.on_wait("Bake canary", lambda state, seconds: [aws.invoke_endpoint(MODEL, row) for row in rows])
    try:
        record = run(aws, "reordered.csv", to_csv_bytes(batch[list(reversed(batch.columns))]))
    finally:
        aws.on_wait("Bake canary", None)
    assert record["training"]["status"] == "Completed", record["message"]
    findings = record["quality"]["blocking"] + record["quality"]["warnings"]
    assert not [f for f in findings if "missing" in f or "not in the baseline" in f], findings
    assert record["kept_for_training"].endswith("-reordered.csv") and len(kept_files(aws)) == 2
    # The challenger learnt the champion's feature order, not the batch's: headerless CSV clients keep working.
    assert record["outcome"] == "promoted", record["message"]
    reply = aws.invoke_endpoint(MODEL, "12.0,70.5,1,48.0,basic,north")
    assert 0.0 <= json.loads(reply["body"])["probabilities"][0] <= 1.0


def test_a_batch_with_an_extra_column_trains_without_it(aws):
    batch = churn_batch(3000, 3, shift=-1.0).assign(referrer="ads")  # drifts from any champion so far
    record = run(aws, "extra.csv", to_csv_bytes(batch))
    assert record["training"]["status"] == "Completed", record["message"]
    assert any(
        "columns not in the baseline: ['referrer']; dropped for training" in w for w in record["quality"]["warnings"]
    )
    assert record["kept_for_training"].endswith("-extra.csv") and len(kept_files(aws)) == 3


def test_a_relabelled_batch_is_refused_before_anything_is_spent_and_quarantined(aws):
    jobs_before, kept_before = training_jobs(aws), kept_files(aws)
    batch = churn_batch(3000, 4, shift=1.0)
    batch["churned"] = batch["churned"].map({0: "no", 1: "yes"})
    record = run(aws, "relabelled.csv", to_csv_bytes(batch))
    assert (record["status"], record["outcome"]) == ("FAILED", "bad_data")
    assert "target 'churned' has labels the training history does not have" in record["message"]
    assert training_jobs(aws) == jobs_before and kept_files(aws) == kept_before
    quarantined = record["quarantined"]
    assert quarantined["uri"] == f"s3://{aws.data_bucket}/quarantine/{MODEL}/{record['run_id']}-relabelled.csv"
    assert "labels the training history does not have" in quarantined["reason"]
    key = quarantined["uri"].split("/", 3)[3]
    assert aws.client("s3").head_object(Bucket=aws.data_bucket, Key=key)["ContentLength"] > 0


def test_a_poisoned_history_fails_the_run_before_any_job_starts_naming_the_file(aws):
    poisoned = churn_batch(500, 5).drop(columns=["usage_gb"])
    aws.put_object(aws.data_bucket, f"training/{MODEL}/by-hand.csv", to_csv_bytes(poisoned))
    endpoint_before = aws.endpoint_weights(MODEL)
    jobs_before = training_jobs(aws)
    record = run(aws, "after-poison.csv", to_csv_bytes(churn_batch(3000, 6, shift=2.0)))
    assert (record["status"], record["outcome"]) == ("FAILED", "failed"), record["message"]
    assert (
        f"training/{MODEL}/by-hand.csv: cannot train with the new batch: missing column(s) ['usage_gb']"
        in (record["message"])
    )
    assert training_jobs(aws) == jobs_before and aws.endpoint_weights(MODEL) == endpoint_before
    assert not record["kept_for_training"]  # the run never showed its batch trains
