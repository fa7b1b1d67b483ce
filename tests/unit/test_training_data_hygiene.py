"""Training data that stays trainable: the quality gate judges whether a batch will train with the history, files are
aligned by column name everywhere, a file that cannot train is found before anything is spent, and only batches that
trained are kept (refused ones are quarantined with their reason)."""

from __future__ import annotations

import dataclasses
import gzip

import boto3
import numpy as np
import pandas as pd
import pytest
from moto import mock_aws
from refit_core.batch import BatchStats
from refit_core.config import QualitySettings
from refit_core.datasets import DataError, iter_parts, iter_table, object_columns, read_table
from refit_core.profile import build_profile
from refit_core.quality import check_quality
from refit_core.s3uri import S3Uri
from refit_core.steps import RunState
from refit_core.training import TrainingInputError, check_trainable
from refit_handlers.finalize import keep_batch_for_training, quarantine_batch

from tests.conftest import handler_settings


def history(rows: int = 400, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "customer": np.arange(rows),
            "tenure": rng.integers(1, 60, rows),
            "usage_gb": np.round(rng.normal(10, 3, rows), 2),
            "plan": rng.choice(["basic", "plus"], rows),
            "churned": rng.integers(0, 2, rows),
        }
    )


def profile_of(frame: pd.DataFrame) -> dict:
    return build_profile(frame, target="churned", categorical=["plan", "churned"], id_column="customer")


def quality_of(batch: pd.DataFrame, settings: QualitySettings | None = None) -> dict:
    stats = BatchStats.of([batch], profile_of(history()))
    return check_quality(stats, settings or QualitySettings(), 100, "s3://d/incoming/churn/b.csv")


def checks(report: dict) -> dict[str, str]:
    return {finding["check"]: finding["severity"] for finding in report["findings"]}


# --- the quality gate ---------------------------------------------------------------------------------------------
def test_a_batch_with_the_columns_in_another_order_passes_without_a_finding():
    report = quality_of(history(seed=2)[["churned", "plan", "usage_gb", "tenure", "customer"]])
    assert report["passed"] and "extra_column" not in checks(report) and "missing_column" not in checks(report)


def test_an_extra_column_warns_that_it_is_dropped_or_blocks_when_configured():
    batch = history(seed=2).assign(region="eu")
    dropped = quality_of(batch)
    assert dropped["passed"] and checks(dropped)["extra_column"] == "warn"
    assert "dropped for training" in next(f for f in dropped["findings"] if f["check"] == "extra_column")["message"]
    blocked = quality_of(batch, QualitySettings(extra_columns="block"))
    assert not blocked["passed"] and checks(blocked)["extra_column"] == "block"
    assert "refused (quality.extra_columns = 'block')" in blocked["reason"]


def test_labels_the_history_does_not_have_block_by_default():
    batch = history(seed=2)
    batch["churned"] = np.where(batch["churned"] == 1, "yes", "no")
    report = quality_of(batch)
    assert not report["passed"] and checks(report)["unseen_label"] == "block"
    assert "target 'churned' has labels the training history does not have: ['no', 'yes']" in report["reason"]
    allowed = QualitySettings(block_on=[c for c in QualitySettings().block_on if c != "unseen_label"])
    assert quality_of(batch, allowed)["passed"]


def test_a_missing_id_column_blocks():
    report = quality_of(history(seed=2).drop(columns=["customer"]))
    assert not report["passed"] and report["reason"].endswith("id column 'customer' is missing")


# --- reading aligns files by name ---------------------------------------------------------------------------------
def test_files_are_aligned_by_column_name_and_extra_columns_left_out(tmp_path):
    base = history(30)
    base.to_csv(tmp_path / "a.csv", index=False)
    base[list(reversed(base.columns))].to_csv(tmp_path / "b.csv", index=False)
    base.assign(region="eu").to_parquet(tmp_path / "c.parquet")
    (tmp_path / "sub").mkdir()
    base.to_csv(tmp_path / "sub" / "d.csv", index=False)  # sub-folders are read: SageMaker keeps a channel's folders
    whole = read_table(str(tmp_path))
    assert list(whole.columns) == list(base.columns) and len(whole) == 120
    for _, frame in iter_table(str(tmp_path), columns=["usage_gb", "churned"]):
        assert list(frame.columns) == ["usage_gb", "churned"]
    for _, part in iter_parts(str(tmp_path)):
        assert list(getattr(part, "names", getattr(part, "columns", None))) == list(base.columns)


def test_a_file_missing_a_column_is_named_with_the_column(tmp_path):
    history(30).to_csv(tmp_path / "a.csv", index=False)
    history(30).drop(columns=["plan"]).to_csv(tmp_path / "b.csv", index=False)
    with pytest.raises(DataError, match=r"b.csv: missing column\(s\) \['plan'\] that .*a.csv has"):
        read_table(str(tmp_path))


# --- the pre-check before a job starts ------------------------------------------------------------------------------
@pytest.fixture
def s3():
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="data")
        client.put_bucket_versioning(Bucket="data", VersioningConfiguration={"Status": "Enabled"})
        yield client


def test_object_columns_reads_only_a_header_or_footer(s3, tmp_path):
    frame = history(50)
    s3.put_object(Bucket="data", Key="t/a.csv", Body=frame.to_csv(index=False).encode("utf-8-sig"))
    s3.put_object(
        Bucket="data", Key="t/b.csv.gz", Body=gzip.compress(frame[["plan", "churned"]].to_csv(index=False).encode())
    )
    frame.to_parquet(tmp_path / "c.parquet")
    s3.upload_file(str(tmp_path / "c.parquet"), "data", "t/c.parquet")
    assert object_columns(s3, S3Uri("data", "t/a.csv")) == list(frame.columns)
    assert object_columns(s3, S3Uri("data", "t/b.csv.gz")) == ["plan", "churned"]
    assert object_columns(s3, S3Uri("data", "t/c.parquet")) == list(frame.columns)
    first = s3.head_object(Bucket="data", Key="t/a.csv")["VersionId"]
    s3.put_object(Bucket="data", Key="t/a.csv", Body=b"x,y\n1,2\n")
    assert object_columns(s3, S3Uri("data", "t/a.csv"), first) == list(frame.columns)  # the version asked for
    s3.put_object(Bucket="data", Key="t/empty.csv", Body=b"")
    with pytest.raises(DataError, match="t/empty.csv: the file is empty"):
        object_columns(s3, S3Uri("data", "t/empty.csv"))


def test_a_poisoned_history_file_fails_the_pre_check_naming_file_and_column(s3):
    s3.put_object(Bucket="data", Key="training/churn/r1-a.csv", Body=history(20).to_csv(index=False).encode())
    s3.put_object(
        Bucket="data",
        Key="training/churn/r2-b.csv",
        Body=history(20).drop(columns=["usage_gb"]).to_csv(index=False).encode(),
    )
    objects = [(S3Uri("data", "training/churn/r1-a.csv"), None), (S3Uri("data", "training/churn/r2-b.csv"), None)]
    with pytest.raises(
        TrainingInputError, match=r"training/churn/r2-b.csv: cannot train .* missing column\(s\) \['usage_gb'\]"
    ):
        check_trainable(s3, objects, list(history().columns))
    check_trainable(s3, objects[:1], list(history().columns))  # a good file passes


# --- what Finalize keeps ------------------------------------------------------------------------------------------
RUN = {"run_id": "r9", "data_uri": "s3://data/incoming/churn/b.csv"}
PASSED = {"data_uri": "s3://data/incoming/churn/b.csv", "quality": {"passed": True}}


@pytest.mark.parametrize(
    ("state", "kept"),
    [
        ({"run": RUN, "check": {**PASSED, "decision": {"action": "stop", "outcome": "no_drift"}}}, True),
        ({"run": RUN, "check": {**PASSED, "decision": {"action": "train"}}, "training": {"next": "done"}}, True),
        ({"run": RUN, "check": {**PASSED, "decision": {"action": "train"}}, "training": {"next": "failed"}}, False),
        ({"run": RUN, "check": {**PASSED, "decision": {"action": "train"}}, "training": {"next": "refused"}}, False),
        ({"run": RUN, "check": {**PASSED, "decision": {"action": "train"}}, "error": {"Error": "X"}}, False),
    ],
)
def test_only_a_batch_that_trained_or_needed_no_training_is_kept(s3, state, kept):
    s3.put_object(Bucket="data", Key="incoming/churn/b.csv", Body=history(20).to_csv(index=False).encode())
    config = dataclasses.replace(handler_settings(), data_bucket="data")
    result = keep_batch_for_training(s3, config, RunState.from_state(state)[0])
    assert (result == "s3://data/training/churn/r9-b.csv") if kept else result is None
    listed = s3.list_objects_v2(Bucket="data", Prefix="training/").get("Contents", [])
    assert len(listed) == (1 if kept else 0)


def test_a_refused_batch_is_quarantined_and_a_changed_one_is_not_copied(s3):
    s3.put_object(Bucket="data", Key="incoming/churn/b.csv", Body=b"a,b\n1,2\n")
    config = dataclasses.replace(handler_settings(), data_bucket="data")
    refused = {
        "run": RUN,
        "check": {**PASSED, "quality": {"passed": False}, "decision": {"action": "fail", "reason": "x"}},
    }
    assert quarantine_batch(s3, config, RunState.from_state(refused)[0]) == "s3://data/quarantine/churn/r9-b.csv"
    assert keep_batch_for_training(s3, config, RunState.from_state(refused)[0]) is None
    sent = []
    s3.meta.events.register("provide-client-params.s3.CopyObject", lambda params, **_: sent.append(dict(params)))
    etag = s3.head_object(Bucket="data", Key="incoming/churn/b.csv")["ETag"].strip('"')
    checked = {
        "run": {**RUN, "data_etag": etag},
        "check": {**PASSED, "decision": {"action": "stop", "outcome": "no_drift"}},
    }
    assert keep_batch_for_training(s3, config, RunState.from_state(checked)[0])
    # The copy is of the bytes the run checked: S3 refuses it (412) when the key was overwritten since. (moto does
    # not evaluate the condition; the request is checked here.)
    assert sent[-1]["CopySourceIfMatch"] == f'"{etag}"'
