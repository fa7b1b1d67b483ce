"""Batches larger than memory: the check reads a batch chunk by chunk and its answers equal the whole-batch ones."""

import gzip
import tracemalloc

import boto3
import numpy as np
import pandas as pd
import pytest
from moto import mock_aws
from refit_core.batch import BatchStats, KsCounts, RowSample
from refit_core.config import DriftSettings, QualitySettings
from refit_core.datasets import DataError, iter_table, read_table
from refit_core.drift import detect_drift
from refit_core.profile import build_profile
from refit_core.quality import check_quality
from scipy import stats


def batch(rows: int, seed: int, shift: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({f"x{i}": np.round(rng.normal(shift if i == 0 else 0, 1, rows), 2) for i in range(6)})
    frame["plan"] = rng.choice(["a", "b", "c"], rows)
    frame["y"] = (rng.random(rows) < 0.3).astype(int)
    return frame


def chunks_of(frame: pd.DataFrame, size: int):
    return (frame.iloc[start : start + size] for start in range(0, len(frame), size))


def test_ks_accumulated_in_chunks_equals_scipy_on_the_whole_batch():
    rng = np.random.default_rng(11)
    reference = np.sort(np.round(rng.normal(size=3000), 1))  # heavy ties on both sides
    current = np.round(rng.normal(0.1, 1.2, size=25_000), 1)
    counts = KsCounts(reference)
    for part in np.array_split(current, 37):
        counts.add(part)
    assert abs(counts.statistic() - stats.ks_2samp(reference, current).statistic) < 1e-12


def test_streamed_report_and_findings_equal_the_whole_batch():
    profile = build_profile(batch(2000, 1), target="y", categorical=["plan", "y"])
    current = batch(5000, 2, shift=0.3)
    current.loc[7, "x3"] = np.inf
    current.loc[4000:4010, "x4"] = np.nan
    whole = BatchStats.of([current], profile)
    streamed = BatchStats.of(chunks_of(current, 333), profile)
    settings = DriftSettings()
    assert detect_drift(streamed, settings) == detect_drift(whole, settings)
    quality = QualitySettings()
    assert check_quality(streamed, quality, 100, "b.csv") == check_quality(whole, quality, 100, "b.csv")
    assert detect_drift(streamed, settings)["drifted_features"] == ["x0"]


def test_a_later_chunk_with_text_in_a_numeric_column_is_a_dtype_change():
    profile = build_profile(batch(500, 1), target="y", categorical=["plan", "y"])
    current = batch(900, 3).astype({"x2": object})
    current.loc[850, "x2"] = "n/a?"
    report = check_quality(BatchStats.of(chunks_of(current, 300), profile), QualitySettings(), 100, "late.csv")
    finding = next(f for f in report["findings"] if f["check"] == "dtype_change")
    assert finding["column"] == "x2" and "'n/a?'" in finding["message"] and not report["passed"]


def test_duplicates_are_exact_below_capacity_and_estimated_from_a_hash_sample_above():
    rng = np.random.default_rng(5)
    distinct = rng.integers(0, 2**63, 160_000, dtype=np.uint64)
    keys = np.concatenate([distinct, distinct[:40_000]])  # 40,000 of 200,000 rows are copies: 20%
    rng.shuffle(keys)
    exact, sampled = RowSample(1_000_000), RowSample(10_000)
    for part in np.array_split(keys, 20):
        exact.add(part)
        sampled.add(part)
    assert not exact.sampled and 1 - np.unique(exact.keys()).size / exact.keys().size == pytest.approx(0.2)
    kept = sampled.keys()
    assert sampled.sampled and kept.size <= 10_000
    assert abs((1 - np.unique(kept).size / kept.size) - 0.2) < 0.03
    copies = np.isin(keys, kept)  # every copy of a kept row is kept
    assert np.isin(kept, keys[copies]).all() and copies.sum() == kept.size


def test_unseen_categories_are_bounded(monkeypatch):
    monkeypatch.setattr("refit_core.batch.MAX_NEW_CATEGORIES", 50)
    profile = build_profile(batch(300, 1), categorical=["plan"])
    current = batch(3000, 2).assign(plan=[f"p{i}" for i in range(3000)])
    stats_ = BatchStats.of(chunks_of(current, 500), profile)
    counts = stats_.categorical["plan"].category_counts()
    assert len(counts) == 51 and sum(counts.values()) == 3000
    finding = next(f for f in check_quality(stats_, QualitySettings(), 100, "c.csv")["findings"])
    assert "50 and more categories" in finding["message"]


def test_reading_streams_csv_gzip_and_parquet_in_bounded_chunks(tmp_path):
    frame = batch(25_000, 4)
    frame.to_csv(tmp_path / "a.csv.gz", index=False)
    frame.to_parquet(tmp_path / "b.parquet", row_group_size=5_000)
    for name in ("a.csv.gz", "b.parquet"):
        sizes = [len(chunk) for _, chunk in iter_table(str(tmp_path / name), chunk_rows=4_000)]
        assert max(sizes) <= 4_000 and sum(sizes) == 25_000
        assert read_table(str(tmp_path / name)).shape == frame.shape


def test_errors_found_late_in_a_stream_name_the_file(tmp_path):
    text = batch(30_000, 6).to_csv(index=False).encode()
    (tmp_path / "cut.csv.gz").write_bytes(gzip.compress(text, mtime=0)[:-5000])
    (tmp_path / "latin.csv").write_bytes(text + b"1.0,2.0,3.0,4.0,5.0,6.0,caf\xe9,0\n")
    (tmp_path / "mixed").mkdir()
    batch(100, 1).to_csv(tmp_path / "mixed" / "1.csv", index=False)
    batch(100, 1).drop(columns=["x5"]).to_csv(tmp_path / "mixed" / "2.csv", index=False)
    for location, message in [
        ("cut.csv.gz", "cut.csv.gz: truncated or corrupt gzip data"),
        ("latin.csv", r"latin.csv: not UTF-8 text \(byte 0xe9 after row"),
        ("mixed", "2.csv: columns .* differ from .*1.csv"),
    ]:
        with pytest.raises(DataError, match=message):
            for _ in iter_table(str(tmp_path / location), chunk_rows=5_000):
                pass


@mock_aws
def test_s3_objects_under_a_prefix_are_read_in_chunks(tmp_path):
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="data")
    frame = batch(12_000, 8)
    s3.put_object(Bucket="data", Key="in/1.csv.gz", Body=gzip.compress(frame.to_csv(index=False).encode(), mtime=0))
    frame.to_parquet(tmp_path / "2.parquet", row_group_size=3_000)
    s3.upload_file(str(tmp_path / "2.parquet"), "data", "in/2.parquet")
    sizes = [(name, len(chunk)) for name, chunk in iter_table("s3://data/in/", s3, chunk_rows=5_000)]
    csv_chunks = [("s3://data/in/1.csv.gz", n) for n in (1_000, 5_000, 5_000, 1_000)]  # 1,000 rows to learn the width
    assert sizes == csv_chunks + [("s3://data/in/2.parquet", 3_000)] * 4  # Parquet: a row group at most


def test_memory_is_bounded_by_the_chunk_not_the_batch(tmp_path):
    """Peak traced allocations of a streamed check are a small fraction of reading the batch whole."""
    profile = build_profile(batch(5_000, 1), target="y", categorical=["plan", "y"])
    big = pd.concat([batch(50_000, seed) for seed in range(6)], ignore_index=True)
    big.to_csv(tmp_path / "big.csv", index=False)
    del big

    def peak(work) -> int:
        tracemalloc.start()
        try:
            work()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    # Row hashes for the duplicate check are left out: they are bounded on their own (at most DUPLICATE_ROWS
    # of 8 bytes, tested above) and at this size would be most of what is measured.
    whole = peak(lambda: BatchStats.of([read_table(str(tmp_path / "big.csv"))], profile, duplicates=False))
    streamed = peak(
        lambda: BatchStats.of(
            (c for _, c in iter_table(str(tmp_path / "big.csv"), chunk_rows=10_000)), profile, duplicates=False
        )
    )
    assert streamed < whole / 5, (streamed, whole)


def test_wide_tables_stream_fewer_rows_per_chunk(tmp_path, monkeypatch):
    monkeypatch.setattr("refit_core.datasets.CHUNK_CELLS", 60_000)
    wide = pd.DataFrame(np.random.default_rng(3).normal(size=(9_000, 30)), columns=[f"c{i}" for i in range(30)])
    wide.to_csv(tmp_path / "wide.csv", index=False)
    wide.to_parquet(tmp_path / "wide.parquet")
    csv_sizes = [len(chunk) for _, chunk in iter_table(str(tmp_path / "wide.csv"), chunk_rows=100_000)]
    assert csv_sizes == [1_000] + [2_000] * 4  # 60,000 cells / 30 columns, after 1,000 rows to learn the width
    parquet_sizes = [len(chunk) for _, chunk in iter_table(str(tmp_path / "wide.parquet"), chunk_rows=100_000)]
    assert max(parquet_sizes) == 2_000 and sum(parquet_sizes) == 9_000


def test_a_batch_the_serving_model_cannot_score_keeps_the_reason_and_the_feature_tests():
    profile = build_profile(batch(500, 1), target="y", categorical=["plan", "y"])
    profile["prediction"] = profile["columns"]["x0"]  # any stored sample will do as reference outputs
    calls = []

    def scorer(chunk):
        calls.append(len(chunk))
        raise ValueError("Found unknown categories ['zzz'] in column 4")

    stats_ = BatchStats.of(chunks_of(batch(900, 2), 300), profile, scorer=scorer)
    assert stats_.score_error == "ValueError: Found unknown categories ['zzz'] in column 4"
    assert calls == [300]  # not retried on every chunk
    report = detect_drift(stats_, DriftSettings())
    assert report["prediction"] is None and set(report["features"]) == {f"x{i}" for i in range(6)} | {"plan"}
