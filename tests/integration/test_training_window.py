"""The training window from StartTraining to the rows `train` fits on: the job reads the pinned versions of the
resolved objects and nothing else, and recency weights reach every fit."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from unittest import mock

import boto3
import numpy as np
import pytest
from moto import mock_aws
from moto.core import DEFAULT_ACCOUNT_ID
from moto.s3.models import s3_backends
from refit_core.config import TrainingWindow
from refit_handlers.training import StartEvent, start_training
from refit_training import search as search_module
from refit_training.paths import OptMl
from refit_training.train import run

from scripts.sample_data import churn_batch, to_csv_bytes
from tests.conftest import create_audit_table, handler_settings

CONFIG = {
    "target": "churned",
    "problem_type": "binary_classification",
    "metrics": ["roc_auc", "accuracy"],
    "primary_metric": "roc_auc",
    "categorical_columns": ["plan", "region"],
    "id_column": None,
    "holdout_fraction": 0.5,
    "seed": 1,
    "run_id": "t1",
    "families": ["linear"],
    "max_trials": 1,
    "cv_folds": 2,
}


def flipped(rows: int, seed: int):
    """Old data whose labels mean the opposite: what a model should forget when recency matters."""
    frame = churn_batch(rows, seed)
    frame["churned"] = 1 - frame["churned"]
    return frame


def age(bucket: str, key: str, days: float) -> None:
    """Set an object's LastModified in moto (its age is what the window and the weights are about)."""
    stored = s3_backends[DEFAULT_ACCOUNT_ID]["global"].buckets[bucket].keys[key]
    stored.last_modified = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=days)


def download_like_sagemaker(s3, job: dict, root: Path) -> None:
    """File mode over S3Prefix channels: every object under the channel's prefix, at its path below the prefix."""
    for channel in job["InputDataConfig"]:
        bucket, _, prefix = channel["DataSource"]["S3DataSource"]["S3Uri"].removeprefix("s3://").partition("/")
        assert channel["DataSource"]["S3DataSource"]["S3DataType"] == "S3Prefix"
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                path = root / "input" / "data" / channel["ChannelName"] / item["Key"][len(prefix) :].lstrip("/")
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read())


@pytest.fixture
def aws():
    with mock_aws():
        s3, dynamodb = boto3.client("s3"), boto3.client("dynamodb")
        for bucket in ("data", "art"):
            s3.create_bucket(Bucket=bucket)
            s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        create_audit_table(dynamodb)
        yield s3, dynamodb, boto3.client("sagemaker")


def test_the_job_reads_only_the_resolved_versions_and_the_manifest_lineage_and_audit_say_which(aws, tmp_path):
    s3, dynamodb, sagemaker = aws
    s3.put_object(Bucket="data", Key="incoming/churn/new.csv", Body=to_csv_bytes(churn_batch(400, 1)))
    s3.put_object(Bucket="data", Key="training/churn/r1-old.csv", Body=to_csv_bytes(churn_batch(300, 2)))
    kept = s3.put_object(Bucket="data", Key="training/churn/r2-recent.csv", Body=to_csv_bytes(churn_batch(200, 3)))
    age("data", "training/churn/r1-old.csv", 30)
    age("data", "training/churn/r2-recent.csv", 2)
    settings = handler_settings(training_window=TrainingWindow(kind="last_days", days=7))
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    event = StartEvent(run_id="r3", data_uri="s3://data/incoming/churn/new.csv", started_at=started_at)
    started = start_training(event, settings, s3, sagemaker, dynamodb)
    # After the job was started and before it reads its data, the kept batch is overwritten: it must not matter.
    s3.put_object(Bucket="data", Key="training/churn/r2-recent.csv", Body=to_csv_bytes(churn_batch(50, 9)))

    manifest = json.loads(
        s3.get_object(Bucket="art", Key=f"reports/churn/r3/inputs/{started['job_name']}.json")["Body"].read()
    )
    assert [(i["channel"], i["uri"]) for i in manifest["inputs"]] == [
        ("current", "s3://data/incoming/churn/new.csv"),
        ("train", "s3://data/training/churn/r2-recent.csv"),
    ]
    assert manifest["inputs"][1]["version_id"] == kept["VersionId"]
    assert manifest["inputs"][1]["age_days"] == pytest.approx(2, abs=0.01)
    assert manifest["window"]["n_batches"] == 2 and manifest["window"]["n_kept_available"] == 2
    assert started["window"]["window"] == "last 7 days" and started["window"]["n_batches"] == 2

    root = tmp_path / "ml"
    download_like_sagemaker(s3, sagemaker.describe_training_job(TrainingJobName=started["job_name"]), root)
    evaluation = run(OptMl(root))
    # The rows the container saw: the new batch and the 200 rows of the version recorded, not the 30-day-old batch
    # and not the 50-row version written after the job started.
    assert evaluation["inputs"]["rows"] == {"current/new.csv": 400, "train/r2-recent.csv": 200}
    assert evaluation["n_train"] + evaluation["n_holdout"] == 600


def write_channels(root: Path, config: dict) -> Path:
    data = root / "input" / "data"
    (data / "config").mkdir(parents=True)
    (data / "config" / "config.json").write_text(json.dumps(config))
    (data / "current").mkdir()
    (data / "train").mkdir()
    churn_batch(600, 1).to_csv(data / "current" / "new.csv", index=False)
    flipped(1500, 2).to_csv(data / "train" / "r1-old.csv", index=False)
    return root


def window(half_life: float | None) -> dict:
    weight = 0.5 ** (60 / half_life) if half_life else 1.0
    return {
        "description": "all batches",
        "half_life_days": half_life,
        "files": {
            "current/new.csv": {"age_days": 0, "weight": 1.0},
            "train/r1-old.csv": {"age_days": 60, "weight": weight},
        },
    }


@pytest.mark.parametrize("half_life", [None, 0])
def test_without_a_half_life_no_weights_are_passed(tmp_path, half_life):
    fits = []
    original = search_module.fit_fold

    def spy(*args, **kwargs):
        fits.append(args[7] if len(args) > 7 else kwargs.get("sample_weight"))
        return original(*args, **kwargs)

    with mock.patch.object(search_module, "fit_fold", spy):
        evaluation = run(OptMl(write_channels(tmp_path / "ml", {**CONFIG, "window": window(half_life)})))
    assert fits and all(weights is None for weights in fits)
    assert evaluation["inputs"]["weighted"] is False and evaluation["search"]["weighted"] is False


def test_recency_weights_reach_every_fit_and_change_the_model(tmp_path):
    fits = []
    original = search_module.fit_fold

    def spy(*args, **kwargs):
        fits.append(args[7] if len(args) > 7 else kwargs.get("sample_weight"))
        return original(*args, **kwargs)

    with mock.patch.object(search_module, "fit_fold", spy):
        weighted = run(OptMl(write_channels(tmp_path / "weighted", {**CONFIG, "window": window(5.0)})))
    unweighted = run(OptMl(write_channels(tmp_path / "plain", {**CONFIG, "window": window(None)})))
    # Two cross-validation folds and the final refit, each with its rows' weights: old rows weigh 0.5 ** 12.
    assert len(fits) == 3 and all(weights is not None for weights in fits)
    n_train = weighted["n_train"]
    assert fits[-1].shape == (n_train,) and np.isclose(fits[-1].min(), 0.5**12) and fits[-1].max() == 1.0
    assert weighted["inputs"]["weighted"] is True and weighted["search"]["weighted"] is True
    assert weighted["inputs"]["sum_of_weights"] == pytest.approx(n_train - 1500 + 1500 * 0.5**12, rel=1e-6)
    # The old rows' labels mean the opposite; weighted, the model follows the new batch and scores far better.
    auc_weighted = weighted["metrics"]["challenger"]["roc_auc"]
    auc_plain = unweighted["metrics"]["challenger"]["roc_auc"]
    assert auc_weighted > 0.7 and auc_plain < 0.5 and auc_weighted - auc_plain > 0.2
