"""Batches larger than memory: the check reads a batch chunk by chunk and its answers equal the whole-batch ones."""

import gzip
import os
import subprocess
import sys
import tracemalloc

import boto3
import numpy as np
import pandas as pd
import pytest
from moto import mock_aws
from refit_core.batch import BatchStats, KsCounts, RowSample
from refit_core.config import DriftSettings, QualitySettings
from refit_core.datasets import ColumnGroup, DataError, column_spans, iter_parts, iter_table, read_table
from refit_core.drift import detect_drift
from refit_core.profile import build_profile, dumps_profile
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
        ("mixed", r"2.csv: missing column\(s\) \[.x5.\] that .*1.csv has"),
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


def labelled_profile(frame: pd.DataFrame) -> dict:
    profile = build_profile(frame, target="y", categorical=["plan", "y"])
    profile["prediction"] = profile["columns"]["x1"]  # any stored sample will do as reference outputs
    profile["holdout"] = {"metric": "rmse", "value": 0.5, "standard_error": 0.01}
    return profile


def every_statistic(stats_: BatchStats) -> dict:
    settings = DriftSettings()
    return {
        "drift": detect_drift(stats_, settings),
        "quality": check_quality(stats_, QualitySettings(), 100, "b.parquet"),
        "duplicates": stats_.duplicate_fraction(),
        "plot": {name: stats_.plot_values(name).tolist() for name in stats_.numeric},
        "labelled": (stats_.labelled.keys().tolist(), stats_.labelled.values("score").tolist()),
        "prediction": stats_.prediction.statistic() if stats_.prediction else None,
    }


@pytest.mark.parametrize("row_group_size", [None, 7_000])  # pandas' default (the file is one group), small groups
def test_parquet_read_a_column_at_a_time_gives_the_row_chunks_statistics(tmp_path, monkeypatch, row_group_size):
    """Row groups are read as spans of columns (iter_parts); every statistic equals the row-chunk path's, including
    the sampled ones (plot, labelled rows, duplicates), so the reading strategy never changes a verdict."""
    monkeypatch.setattr("refit_core.batch.PLOT_ROWS", 500)  # sampled below the batch size: the sample is compared
    monkeypatch.setattr("refit_core.datasets.COLUMN_SPAN_ROWS", 10_000)  # several spans
    current = batch(30_000, 2, shift=0.3)
    current = pd.concat([current, current.iloc[:900]], ignore_index=True)  # duplicates to find
    current.loc[7, "x3"] = np.inf
    current.to_parquet(tmp_path / "b.parquet", row_group_size=row_group_size)
    profile = labelled_profile(batch(2000, 1))
    scored: list[list[str]] = []

    def scorer(chunk: pd.DataFrame) -> np.ndarray:
        scored.append(list(chunk.columns))
        return chunk["x1"].to_numpy() * 0.5

    options = {"scorer": scorer, "score_columns": ["x1", "x2"]}
    parts = list(iter_parts(str(tmp_path / "b.parquet")))
    assert all(isinstance(part, ColumnGroup) for _, part in parts)
    by_column = BatchStats.of((part for _, part in parts), profile, **options)
    by_rows = BatchStats.of(
        (c for _, c in iter_table(str(tmp_path / "b.parquet"), chunk_rows=4_000)), profile, **options
    )
    assert every_statistic(by_column) == every_statistic(by_rows)
    assert by_column.n_rows == 30_900 and 0.02 < by_column.duplicate_fraction() < 0.04
    assert {tuple(columns) for columns in scored} == {
        ("x1", "x2", "y"),
        tuple(current.columns),
    }  # only what scoring needs


def test_column_spans_join_row_groups_up_to_the_span():
    assert column_spans([100, 100, 100, 0, 100, 50], span_rows=200) == [[0, 1], [2, 4], [5]]
    assert column_spans([1_000], span_rows=200) == [[0]]  # one big group stays one span
    assert column_spans([0, 0], span_rows=200) == []


PEAK_OF_A_PATH = """
import sys, tracemalloc, pyarrow as pa
from refit_core.batch import BatchStats
from refit_core.datasets import iter_parts, iter_table
from refit_core.profile import loads_profile
profile = loads_profile(open(sys.argv[2], "rb").read(), "profile")
read = iter_parts if sys.argv[1] == "columns" else iter_table
tracemalloc.start()
BatchStats.of((part for _, part in read(sys.argv[3])), profile, duplicates=False)
print(tracemalloc.get_traced_memory()[1] + pa.default_memory_pool().max_memory())
"""


def test_a_one_group_parquet_file_is_read_with_a_few_columns_in_memory_not_the_group(tmp_path):
    """Peak memory (Python allocations + Arrow's pool, each path in a fresh process) on a file written as one row
    group: a fraction of what reading the group in row chunks holds."""
    profile = build_profile(batch(5_000, 1), target="y", categorical=["plan", "y"])
    (tmp_path / "profile.json").write_text(dumps_profile(profile))
    wide = pd.concat([batch(60_000, seed) for seed in range(5)], ignore_index=True)
    for i in range(30):
        wide[f"z{i}"] = wide["x1"] * i
    wide.to_parquet(tmp_path / "one.parquet")

    def peak(path: str) -> int:
        environment = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        command = [
            sys.executable,
            "-c",
            PEAK_OF_A_PATH,
            path,
            str(tmp_path / "profile.json"),
            str(tmp_path / "one.parquet"),
        ]
        return int(subprocess.run(command, capture_output=True, text=True, check=True, env=environment).stdout)

    by_rows, by_column = peak("rows"), peak("columns")
    assert by_column < by_rows / 3, (by_column, by_rows)


class FlakyS3:
    """An S3 client whose downloads fail as S3 sometimes does (throttling, a 5xx), or as a missing object does."""

    def __init__(self, s3, code: str) -> None:
        self._s3, self.code = s3, code
        self.exceptions = s3.exceptions

    def __getattr__(self, name):
        return getattr(self._s3, name)

    def download_fileobj(self, *args, **kwargs):
        from botocore.exceptions import ClientError

        raise ClientError({"Error": {"Code": self.code, "Message": "try again"}}, "GetObject")


@mock_aws
@pytest.mark.parametrize("code", ["SlowDown", "InternalError", "AccessDenied"])
def test_a_transient_s3_error_on_a_parquet_batch_is_a_failure_not_bad_data(tmp_path, code):
    """Bad data is settled (a scheduled run never checks the batch again); a throttled or failed read must fail the
    run instead, which settles nothing, so the batch is checked again."""
    from botocore.exceptions import ClientError

    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="data")
    batch(100, 1).to_parquet(tmp_path / "b.parquet")
    s3.upload_file(str(tmp_path / "b.parquet"), "data", "in/b.parquet")
    for read in (iter_table, iter_parts):
        with pytest.raises(ClientError, match=code):
            list(read("s3://data/in/b.parquet", FlakyS3(s3, code)))
    with pytest.raises(DataError, match=r"s3://data/in/b.parquet: no such object"):
        list(iter_parts("s3://data/in/b.parquet", FlakyS3(s3, "NoSuchKey")))
