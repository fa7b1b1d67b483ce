"""The training window: which kept batches a retrain trains on, how it is configured, and how rows are weighted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import boto3
import pytest
from moto import mock_aws
from refit_core.config import ConfigError, TrainingWindow, parse_config
from refit_core.s3uri import S3Uri
from refit_core.window import (
    BatchObject,
    WindowError,
    pin_inputs,
    recency_weight,
    resolve_window,
    select_window,
)

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def batch(name: str, days_old: float, size: int = 10) -> BatchObject:
    return BatchObject(
        uri=S3Uri("data", f"training/churn/{name}"),
        version_id=f"v-{name}",
        etag=f"e-{name}",
        last_modified=NOW - timedelta(days=days_old),
        size=size,
    )


HISTORY = [batch("r3-c.csv", 1), batch("r1-a.csv", 20), batch("r2-b.csv", 5), batch("r4-d.csv", 0.5)]


def names(batches: list[BatchObject]) -> list[str]:
    return [b.uri.key.rsplit("/", 1)[-1] for b in batches]


def test_all_keeps_every_batch_newest_first():
    assert names(select_window(HISTORY, TrainingWindow(), NOW)) == ["r4-d.csv", "r3-c.csv", "r2-b.csv", "r1-a.csv"]


def test_last_n_batches_counts_the_new_batch():
    window = TrainingWindow(kind="last_batches", batches=3)
    assert names(select_window(HISTORY, window, NOW)) == ["r4-d.csv", "r3-c.csv"]
    assert select_window(HISTORY, TrainingWindow(kind="last_batches", batches=1), NOW) == []


def test_n_larger_than_the_history_keeps_all_of_it_and_an_empty_history_keeps_nothing():
    window = TrainingWindow(kind="last_batches", batches=50)
    assert len(select_window(HISTORY, window, NOW)) == 4
    assert select_window([], window, NOW) == []
    assert select_window([], TrainingWindow(kind="last_days", days=7), NOW) == []
    assert select_window([], TrainingWindow(), NOW) == []


def test_last_days_keeps_batches_at_most_that_old_the_boundary_included():
    assert names(select_window(HISTORY, TrainingWindow(kind="last_days", days=5), NOW)) == [
        "r4-d.csv",
        "r3-c.csv",
        "r2-b.csv",
    ]
    assert names(select_window(HISTORY, TrainingWindow(kind="last_days", days=4.99), NOW)) == ["r4-d.csv", "r3-c.csv"]


def test_equal_times_are_ordered_by_key_whatever_the_listing_order():
    tied = [batch("r5-x.csv", 2), batch("r6-y.csv", 2), batch("r7-z.csv", 3)]
    window = TrainingWindow(kind="last_batches", batches=2)
    assert names(select_window(tied, window, NOW)) == ["r6-y.csv"]
    assert names(select_window(list(reversed(tied)), window, NOW)) == ["r6-y.csv"]


def test_recency_weights_halve_every_half_life_and_zero_or_none_means_unweighted():
    assert recency_weight(0, 10) == 1.0
    assert recency_weight(10, 10) == pytest.approx(0.5)
    assert recency_weight(30, 10) == pytest.approx(0.125)
    assert recency_weight(30, 0) == 1.0 and recency_weight(30, None) == 1.0


def minimal(**window):
    return {
        "models": [
            {
                "name": "churn",
                "problem_type": "binary_classification",
                "target": "churned",
                "primary_metric": "roc_auc",
                "metric_direction": "maximize",
                "training_window": window,
            }
        ]
    }


def test_the_default_window_is_all_batches_unweighted():
    model = parse_config({"models": [{**minimal()["models"][0]}]}).models[0]
    assert model.training_window == TrainingWindow(kind="all") and not model.training_window.weighted


@pytest.mark.parametrize(
    ("window", "expected"),
    [
        ({"kind": "last_batches"}, "models.0.training_window: kind 'last_batches' needs batches"),
        ({"kind": "last_days"}, "models.0.training_window: kind 'last_days' needs days"),
        ({"kind": "all", "days": 3}, "models.0.training_window: days applies only to kind 'last_days'"),
        ({"kind": "last_days", "days": 3, "batches": 2}, "batches applies only to kind 'last_batches'"),
        ({"kind": "last_batches", "batches": 0}, "models.0.training_window.batches: Input should be greater than"),
        ({"kind": "last_days", "days": -1}, "models.0.training_window.days: Input should be greater than 0"),
        ({"kind": "newest"}, "models.0.training_window.kind: Input should be 'all', 'last_batches' or 'last_days'"),
        ({"half_life_days": -2}, "models.0.training_window.half_life_days: Input should be greater than or equal"),
        ({"size": 3}, "models.0.training_window.size: unknown field"),
    ],
)
def test_a_bad_window_is_refused_naming_the_field(window, expected):
    with pytest.raises(ConfigError) as error:
        parse_config(minimal(**window), "refit.toml")
    assert expected in str(error.value)


@pytest.fixture
def s3():
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        for bucket in ("data", "art"):
            client.create_bucket(Bucket=bucket)
            client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        yield client


def test_the_new_batch_is_always_trained_on_whatever_its_age(s3):
    s3.put_object(Bucket="data", Key="incoming/churn/new.csv", Body=b"a,churned\n1,0\n")
    s3.put_object(Bucket="data", Key="training/churn/r1-a.csv", Body=b"a,churned\n2,1\n")
    later = datetime.now(UTC) + timedelta(days=400)  # every object is 400 days old then
    resolved = resolve_window(
        s3,
        TrainingWindow(kind="last_days", days=1),
        S3Uri("data", "training/churn/"),
        S3Uri("data", "incoming/churn/new.csv"),
        later,
    )
    assert resolved.current.uri.key == "incoming/churn/new.csv" and resolved.kept == []
    assert [channel for channel, _ in resolved.objects] == ["current"]
    assert resolved.summary()["n_batches"] == 1 and resolved.summary()["n_kept_available"] == 1


def test_pinned_inputs_are_the_resolved_versions_even_when_a_key_is_overwritten_later(s3):
    s3.put_object(Bucket="data", Key="incoming/churn/new.csv", Body=b"a,churned\n1,0\n")
    first = s3.put_object(Bucket="data", Key="training/churn/r1-a.csv", Body=b"a,churned\n2,1\n")
    history = S3Uri("data", "training/churn/")
    resolved = resolve_window(s3, TrainingWindow(), history, S3Uri("data", "incoming/churn/new.csv"), NOW)
    s3.put_object(Bucket="data", Key="training/churn/r1-a.csv", Body=b"a,churned\n9,9\n")  # a new version
    entries = pin_inputs(s3, resolved, S3Uri("art", "job-data/churn/r9/job/"), history)
    kept = next(e for e in entries if e["channel"] == "train")
    assert kept["version_id"] == first["VersionId"]
    assert kept["read_from"] == "s3://art/job-data/churn/r9/job/train/r1-a.csv"
    assert s3.get_object(Bucket="art", Key="job-data/churn/r9/job/train/r1-a.csv")["Body"].read() == (
        b"a,churned\n2,1\n"
    )


def test_a_version_removed_after_resolution_or_a_new_batch_changed_since_its_check_is_refused(s3):
    s3.put_object(Bucket="data", Key="incoming/churn/new.csv", Body=b"a,churned\n1,0\n")
    made = s3.put_object(Bucket="data", Key="training/churn/r1-a.csv", Body=b"a,churned\n2,1\n")
    history = S3Uri("data", "training/churn/")
    resolved = resolve_window(s3, TrainingWindow(), history, S3Uri("data", "incoming/churn/new.csv"), NOW)
    with pytest.raises(WindowError, match="incoming/churn/new.csv: changed since it was checked"):
        pin_inputs(s3, resolved, S3Uri("art", "job-data/x/"), history, expected_current_etag='"not-the-etag"')
    s3.delete_object(Bucket="data", Key="training/churn/r1-a.csv", VersionId=made["VersionId"])
    with pytest.raises(WindowError, match="training/churn/r1-a.csv .*changed or removed since the window"):
        pin_inputs(s3, resolved, S3Uri("art", "job-data/x/"), history)


def test_a_batch_over_the_copy_object_limit_is_pinned_part_by_part(s3, monkeypatch):
    """CopyObject stops at 5 GiB; above it the pinned copy is made with UploadPartCopy, of the same version."""
    import refit_core.window as window_module

    monkeypatch.setattr(window_module, "MAX_COPY_OBJECT_BYTES", 5 * 1024**2)
    monkeypatch.setattr(window_module, "COPY_PART_BYTES", 5 * 1024**2)
    body = b"a,churned\n" + b"1,0\n" * (3 * 1024**2)  # 12 MiB: three parts
    s3.put_object(Bucket="data", Key="incoming/churn/new.csv", Body=b"a,churned\n1,0\n")
    first = s3.put_object(Bucket="data", Key="training/churn/r1-big.csv", Body=body)
    history = S3Uri("data", "training/churn/")
    resolved = resolve_window(s3, TrainingWindow(), history, S3Uri("data", "incoming/churn/new.csv"), NOW)
    s3.put_object(Bucket="data", Key="training/churn/r1-big.csv", Body=b"a,churned\n")  # a newer version
    calls = []
    s3.meta.events.register("provide-client-params.s3.UploadPartCopy", lambda params, **_: calls.append(dict(params)))
    entries = pin_inputs(s3, resolved, S3Uri("art", "job-data/churn/r9/job/"), history)
    assert len(calls) == 3 and all(c["CopySource"]["VersionId"] == first["VersionId"] for c in calls)
    assert entries[1]["version_id"] == first["VersionId"]
    assert s3.get_object(Bucket="art", Key="job-data/churn/r9/job/train/r1-big.csv")["Body"].read() == body
