"""Active learning: uncertainty selection with a diversity rule, the Ground Truth input manifest and the daily
budget."""

from __future__ import annotations

import json

import boto3
import numpy as np
import pandas as pd
import pytest
from moto import mock_aws
from refit_core.active_learning import (
    ActiveLearningError,
    append_manifest,
    labeling_items,
    manifest_entries,
    manifest_lines,
    payload_key,
    remaining_budget,
    select_for_labeling,
    selected_ids,
    uncertainty,
)

COLUMNS = {"numeric": ["x", "y"], "categorical": ["segment"]}


def frame(rows: int, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    features = pd.DataFrame(
        {
            "x": rng.normal(0, 1, rows),
            "y": rng.normal(0, 1, rows),
            "segment": rng.choice(["a", "b", "c"], rows),
        }
    )
    return features, rng.random(rows)


def two_regions() -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Region A (40 rows) holds all the most uncertain rows (p close to 0.5); region B (400 rows), far away in
    feature space, is somewhat uncertain (p 0.30-0.40); the rest of the stream is sure (p < 0.05)."""
    rng = np.random.default_rng(7)
    a = pd.DataFrame({"x": rng.normal(5, 0.3, 40), "y": rng.normal(5, 0.3, 40), "segment": "a"})
    b = pd.DataFrame({"x": rng.normal(-5, 2, 400), "y": rng.normal(-5, 2, 400), "segment": "b"})
    sure = pd.DataFrame({"x": rng.normal(0, 1, 1000), "y": rng.normal(0, 1, 1000), "segment": "c"})
    features = pd.concat([a, b, sure], ignore_index=True)
    p = np.concatenate([rng.uniform(0.49, 0.51, 40), rng.uniform(0.30, 0.40, 400), rng.uniform(0, 0.05, 1000)])
    in_a = np.zeros(len(features), dtype=bool)
    in_a[:40] = True
    return features, p, in_a


def test_selection_takes_rows_from_the_most_uncertain_pool() -> None:
    features, p = frame(2000)
    chosen = select_for_labeling(features, p, 20, **COLUMNS)
    margin = np.abs(p - 0.5)
    pool_edge = np.sort(margin)[20 * 5 - 1]  # the 100 most uncertain rows form the candidate pool
    assert len(chosen) == 20
    assert (margin[chosen] <= pool_edge).all()
    assert margin[chosen].mean() < 0.05 < margin.mean()
    # Without a pool larger than the budget, the rule is plain uncertainty sampling: the 20 most uncertain rows.
    plain = select_for_labeling(features, p, 20, pool_factor=1, **COLUMNS)
    assert set(plain) == set(np.argsort(margin, kind="stable")[:20])
    # Returned most uncertain first.
    assert (np.diff(margin[chosen]) >= 0).all()


def test_budget_is_respected_and_rows_are_distinct() -> None:
    features, p = frame(500)
    for budget in (1, 7, 50, 99):
        chosen = select_for_labeling(features, p, budget, **COLUMNS)
        assert len(chosen) == budget
        assert len(set(chosen.tolist())) == budget
        assert chosen.min() >= 0 and chosen.max() < len(features)
    assert len(select_for_labeling(features, p, 10_000, **COLUMNS)) == 500  # more budget than rows: every row


def test_nothing_to_select() -> None:
    features, p = frame(50)
    assert select_for_labeling(features, p, 0, **COLUMNS).size == 0
    assert select_for_labeling(features.iloc[:0], p[:0], 10, **COLUMNS).size == 0
    # A regression model has no probabilities: nothing is selected.
    assert select_for_labeling(features, None, 10, **COLUMNS).size == 0


def test_one_uncertain_region_does_not_take_the_whole_budget() -> None:
    features, p, in_a = two_regions()
    chosen = select_for_labeling(features, p, 10, **COLUMNS)
    assert len(chosen) == 10
    from_a = int(in_a[chosen].sum())
    assert 1 <= from_a < 10  # region A still contributes, but region B gets part of the budget
    assert (features["segment"].to_numpy()[chosen] == "b").sum() >= 10 - from_a
    # The defect the diversity rule prevents: ranking by uncertainty alone spends the whole budget in region A.
    plain = select_for_labeling(features, p, 10, pool_factor=1, **COLUMNS)
    assert in_a[plain].all()


def test_an_exploration_share_of_the_budget_is_drawn_at_random() -> None:
    features, p = frame(4000, seed=2)
    margin = np.abs(p - 0.5)
    uncertain_only = select_for_labeling(features, p, 40, **COLUMNS)
    chosen = select_for_labeling(features, p, 40, explore=0.25, **COLUMNS)
    assert len(chosen) == 40 and len(set(chosen.tolist())) == 40
    first, explored = chosen[:30], chosen[30:]
    np.testing.assert_array_equal(first, select_for_labeling(features, p, 30, **COLUMNS))
    assert np.sort(margin)[30 * 5 - 1] < margin[explored].mean()  # drawn from all rows, not the unsure ones
    np.testing.assert_array_equal(select_for_labeling(features, p, 40, explore=0.0, **COLUMNS), uncertain_only)
    np.testing.assert_array_equal(chosen, select_for_labeling(features, p, 40, explore=0.25, **COLUMNS))
    everything_random = select_for_labeling(features, p, 400, explore=1.0, **COLUMNS)
    assert 0.2 < margin[everything_random].mean() < 0.3  # a uniform draw: margin averages 0.25
    with pytest.raises(ActiveLearningError, match="explore"):
        select_for_labeling(features, p, 40, explore=1.5, **COLUMNS)


def test_selection_is_deterministic_for_a_seed() -> None:
    features, p = frame(3000, seed=3)
    first = select_for_labeling(features, p, 40, seed=11, **COLUMNS)
    again = select_for_labeling(features.copy(), p.copy(), 40, seed=11, **COLUMNS)
    np.testing.assert_array_equal(first, again)


def test_entropy_ranks_like_margin_for_one_probability() -> None:
    p = np.array([0.0, 0.01, 0.2, 0.45, 0.5, 0.7, 0.999, 1.0])
    margin, entropy = uncertainty(p, "margin"), uncertainty(p, "entropy")
    np.testing.assert_array_equal(np.argsort(-margin, kind="stable"), np.argsort(-entropy, kind="stable"))
    assert entropy[4] == pytest.approx(1.0) and entropy[0] == 0.0 and entropy[-1] == 0.0
    features, probabilities = frame(800, seed=5)
    # Same ranking, so the same rows without the diversity rule (with it, the two weight the clustering differently).
    np.testing.assert_array_equal(
        select_for_labeling(features, probabilities, 30, strategy="entropy", pool_factor=1, **COLUMNS),
        select_for_labeling(features, probabilities, 30, strategy="margin", pool_factor=1, **COLUMNS),
    )


def test_rows_without_a_probability_are_never_chosen_and_missing_features_are_tolerated() -> None:
    features, p = frame(300)
    p[::2] = np.nan
    features.loc[::3, "x"] = np.nan
    features.loc[::5, "segment"] = None
    chosen = select_for_labeling(features, p, 100, **COLUMNS)
    assert len(chosen) == 100
    assert np.isfinite(p[chosen]).all()
    assert len(select_for_labeling(features, p, 1000, **COLUMNS)) == 150  # every row that has a probability
    # pandas' nullable types with missing values, as a parsed capture can hold them.
    nullable = features.assign(
        x=pd.array([1, None, 3] * 100, dtype="Int64"), segment=features["segment"].astype("string")
    )
    assert len(select_for_labeling(nullable, p, 100, **COLUMNS)) == 100


def test_bad_input_is_named() -> None:
    features, p = frame(20)
    with pytest.raises(ActiveLearningError, match="'z'"):
        select_for_labeling(features, p, 5, numeric=["x", "z"], categorical=[])
    with pytest.raises(ActiveLearningError, match="one value per row"):
        select_for_labeling(features, p[:10], 5, **COLUMNS)
    with pytest.raises(ActiveLearningError, match="row 3"):
        bad = p.copy()
        bad[3] = 1.5
        select_for_labeling(features, bad, 5, **COLUMNS)
    with pytest.raises(ActiveLearningError, match="strategy"):
        select_for_labeling(features, p, 5, strategy="random", **COLUMNS)
    with pytest.raises(ActiveLearningError, match="budget"):
        select_for_labeling(features, p, -1, **COLUMNS)


ITEMS = [
    {
        "inference_id": "req-1",
        "features": {
            "x": np.float64(1.5),
            "y": float("nan"),
            "segment": "a",
            "n": np.int64(3),
            "seen": pd.Timestamp("2026-11-29T01:02:03"),
            "gone": pd.NaT,
            "flag": np.bool_(True),
        },
        "probability": np.float64(0.51),
        "model_version": "7",
        "variant": "AllTraffic",
    },
    {"inference_id": "4f1c:2", "features": {"x": 0.2, "y": -1.0, "segment": None}, "probability": 0.47},
]


def test_manifest_lines_parse_and_point_to_the_payload_keys() -> None:
    payloads, manifest = manifest_lines(ITEMS, "data-bucket", "labeling/churn/", "2026-11-29")
    assert manifest.endswith(b"\n") and manifest.count(b"\n") == 2
    entries = [json.loads(line) for line in manifest.decode("utf-8").split("\n") if line]
    assert [entry["source-ref"] for entry in entries] == [f"s3://data-bucket/{key}" for key, _ in payloads]
    assert [entry["inference-id"] for entry in entries] == ["req-1", "4f1c:2"]
    assert entries[0]["probability"] == 0.51 and entries[0]["model-version"] == "7"
    assert entries[0]["variant"] == "AllTraffic" and "model-version" not in entries[1]
    assert all(not name.startswith("$") for entry in entries for name in entry)
    assert payloads[0][0] == "labeling/churn/items/2026-11-29/req-1.json"
    # An id with a character outside [A-Za-z0-9._-] gets a safe key that still names it.
    assert payloads[1][0].startswith("labeling/churn/items/2026-11-29/4f1c_2-") and payloads[1][0].endswith(".json")
    first = json.loads(payloads[0][1])
    assert first == {
        "inference_id": "req-1",
        "features": {
            "x": 1.5,
            "y": None,
            "segment": "a",
            "n": 3,
            "seen": "2026-11-29T01:02:03",
            "gone": None,
            "flag": True,
        },
    }
    assert json.loads(payloads[1][1])["features"]["segment"] is None
    assert manifest_entries(manifest) == entries
    assert selected_ids(manifest) == {"req-1", "4f1c:2"}


def test_every_source_ref_resolves_to_its_payload_in_s3() -> None:
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="data-bucket")
        payloads, manifest = manifest_lines(ITEMS, "data-bucket", "labeling/churn/", "2026-11-29")
        for key, body in payloads:
            s3.put_object(Bucket="data-bucket", Key=key, Body=body)
        s3.put_object(Bucket="data-bucket", Key="labeling/churn/2026-11-29.manifest", Body=manifest)
        stored = s3.get_object(Bucket="data-bucket", Key="labeling/churn/2026-11-29.manifest")["Body"].read()
        for entry in manifest_entries(stored):
            bucket, key = entry["source-ref"].removeprefix("s3://").split("/", 1)
            body = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
            assert body["inference_id"] == entry["inference-id"]


def test_distinct_ids_never_share_a_payload_key() -> None:
    keys = {payload_key("labeling/m/", "2026-11-29", ident) for ident in ["a:1", "a_1", "a/1", "a 1", "..", "a_1-x"]}
    assert len(keys) == 6
    assert all("/items/2026-11-29/" in key and key.count("/") == 4 for key in keys)


def test_manifest_rejects_bad_items() -> None:
    with pytest.raises(ActiveLearningError, match="appears twice"):
        manifest_lines([ITEMS[0], ITEMS[0]], "b", "labeling/m/", "2026-11-29")
    with pytest.raises(ActiveLearningError, match="YYYY-MM-DD"):
        manifest_lines(ITEMS, "b", "labeling/m/", "2026/11/29")
    with pytest.raises(ActiveLearningError, match="item 0.*inference_id"):
        manifest_lines([{"features": {}}], "b", "labeling/m/", "2026-11-29")
    with pytest.raises(ActiveLearningError, match="unknown field"):
        manifest_lines([{**ITEMS[1], "label": 1}], "b", "labeling/m/", "2026-11-29")
    with pytest.raises(ActiveLearningError, match="end with '/'"):
        manifest_lines(ITEMS, "b", "labeling/m", "2026-11-29")
    with pytest.raises(ActiveLearningError, match="attribute"):
        manifest_lines([{**ITEMS[1], "variant": "v" * 20_001}], "b", "labeling/m/", "2026-11-29")


def test_the_daily_budget_is_shared_by_the_days_runs() -> None:
    assert remaining_budget(None, 200) == 200
    assert remaining_budget(b"", 200) == 200
    _, first = manifest_lines(ITEMS, "b", "labeling/m/", "2026-11-29")
    assert remaining_budget(first, 200) == 198
    _, second = manifest_lines(
        [{"inference_id": f"r{i}", "features": {"x": i}} for i in range(5)], "b", "labeling/m/", "2026-11-29"
    )
    day = append_manifest(first.rstrip(b"\n"), second)  # an old manifest without a final newline
    assert len(manifest_entries(day)) == 7
    assert remaining_budget(day, 200) == 193
    assert remaining_budget(day + b"\n\n", 200) == 193  # blank lines are not items
    assert remaining_budget(day, 5) == 0
    assert remaining_budget(day, 0) == 0
    with pytest.raises(ActiveLearningError):
        remaining_budget(day, -1)
    with pytest.raises(ActiveLearningError, match="line 2"):
        manifest_entries(b'{"source-ref": "s3://b/k"}\nnot json\n')


def test_selected_rows_become_manifest_items() -> None:
    features, p = frame(300, seed=4)
    ids = [f"req-{i}" for i in range(300)]
    chosen = select_for_labeling(features, p, 12, **COLUMNS)
    items = labeling_items(features, chosen, inference_ids=ids, probabilities=p, model_version="3", variant="v1")
    assert [item["inference_id"] for item in items] == [ids[i] for i in chosen]
    assert items[0]["features"] == features.iloc[chosen[0]].to_dict()
    assert items[0]["probability"] == p[chosen[0]] and items[0]["model_version"] == "3"
    payloads, manifest = manifest_lines(items, "b", "labeling/m/", "2026-11-29")
    assert selected_ids(manifest) == {ids[i] for i in chosen}
    assert json.loads(payloads[0][1])["features"]["segment"] == features["segment"].iloc[chosen[0]]
    with pytest.raises(ActiveLearningError, match="one entry per row"):
        labeling_items(features, chosen, inference_ids=ids[:5], probabilities=p)
