"""One pass over a batch, a chunk at a time: everything the quality gate, the drift tests and the HTML report need,
held in memory bounded by one chunk plus the baseline — never the whole batch.

Exact, whatever the batch size: row count; per column nulls, unparseable values, infinities, values outside the
trained range, min / max, category counts; and the two-sample KS statistic against the baseline's stored sorted
values. For KS the k distinct stored values cut the line into 2k + 1 pieces (below the first, at each value, between
neighbours, above the last); the batch's count in each piece fixes both ECDFs at every point where their gap can be
largest, so the statistic equals the one computed from the whole sorted batch. Each chunk costs one sort of the
chunk and 2k binary searches into it.

Sampled, uniformly and reproducibly (bottom-k by a 64-bit key), so memory stays bounded:
- duplicate rows are counted among the rows whose row hash is below a threshold: exact up to DUPLICATE_ROWS rows,
  beyond that a sample that keeps every copy of a row together (the duplicate share is estimated without bias);
- the labelled rows of the performance-drop test: at most PERFORMANCE_ROWS (its bootstrap is the cost);
- the current values drawn in the report's plots: at most PLOT_ROWS rows.
Categorical counts are kept for every baseline category plus at most MAX_NEW_CATEGORIES unseen ones; further unseen
categories share one count (chi-square on merged categories stays a valid test).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd

from refit_core.datasets import DEFAULT_CHUNK_ROWS, ColumnGroup
from refit_core.profile import numeric_sample

DUPLICATE_ROWS = 1_000_000
PERFORMANCE_ROWS = 50_000
PLOT_ROWS = 5_000
MAX_NEW_CATEGORIES = 1_000
OTHER_NEW_CATEGORIES = "<other unseen categories>"
PARALLEL_ROWS = 50_000  # below this, threads cost more than they save
_KEY_MAX = np.iinfo(np.uint64).max


class KsCounts:
    """The batch's counts in the 2k + 1 pieces that a sorted reference's k distinct values define (module doc)."""

    def __init__(self, reference_sorted: np.ndarray) -> None:
        self.points, multiplicity = np.unique(reference_sorted, return_counts=True)
        self.reference_cumulative = np.cumsum(multiplicity).astype(np.int64)
        self.m = int(reference_sorted.size)
        self.counts = np.zeros(2 * self.points.size + 1, dtype=np.int64)
        self.n = 0

    def add(self, finite_values: np.ndarray) -> None:
        if finite_values.size == 0:
            return
        ordered = np.sort(finite_values)
        if self.points.size == 0:
            self.counts[0] += ordered.size
        else:
            left = np.searchsorted(ordered, self.points, side="left")
            # Ties with a reference value are rare in continuous data: search again only where the batch has one.
            tied = ordered[np.minimum(left, ordered.size - 1)] == self.points
            right = left.copy()
            if tied.any():
                right[tied] = np.searchsorted(ordered, self.points[tied], side="right")
            self.counts[0:-1:2] += left - np.concatenate(([0], right[:-1]))
            self.counts[1::2] += right - left
            self.counts[-1] += ordered.size - right[-1]
        self.n += int(ordered.size)

    def psi(self, bins: int = 10) -> float:
        """Population stability index on the reference's decile bins. The bin edges are stored reference values, so
        the batch's bin counts are exact sums of the interval counts. Each bin gets half a count on both sides
        (Jeffreys): an empty bin adds a finite, modest term, where log(0) is undefined and the common floor of a
        tiny constant turns one empty bin into a huge index."""
        if self.n == 0 or self.m == 0:
            return 0.0
        quantiles = self.m * np.arange(1, bins) / bins
        edges = np.unique(np.searchsorted(self.reference_cumulative, quantiles, side="left"))
        edges = edges[edges < self.points.size - 1]  # the last value closes the top bin
        batch_cumulative = np.cumsum(self.counts)
        reference_counts = np.diff(np.concatenate(([0], self.reference_cumulative[edges], [self.m])))
        batch_counts = np.diff(np.concatenate(([0], batch_cumulative[2 * edges + 1], [self.n])))
        width = reference_counts.size
        expected = (reference_counts + 0.5) / (self.m + 0.5 * width)
        actual = (batch_counts + 0.5) / (self.n + 0.5 * width)
        return float(np.sum((actual - expected) * np.log(actual / expected)))

    def statistic(self) -> float:
        """sup |F_reference − F_batch|, computed in integers as |c·m − r·n| / (m·n)."""
        if self.n == 0 or self.m == 0:
            return 0.0
        batch_cumulative = np.cumsum(self.counts)
        reference_at = np.zeros_like(batch_cumulative)
        reference_at[1::2] = self.reference_cumulative  # at each reference value
        reference_at[2::2] = self.reference_cumulative  # just below the next one
        gap = int(np.max(np.abs(batch_cumulative * self.m - reference_at * self.n)))
        return gap / (float(self.m) * float(self.n))


class RowSample:
    """Rows whose 64-bit key is below a threshold, lowered so at most `capacity` rows stay: a uniform sample when
    the keys are random, and a sample that keeps equal rows together when the keys are row hashes."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.threshold: np.uint64 | None = None
        self._keys: list[np.ndarray] = []
        self._values: dict[str, list[np.ndarray]] = {}
        self._size = 0

    @property
    def sampled(self) -> bool:
        return self.threshold is not None

    def add(self, keys: np.ndarray, values: dict[str, np.ndarray] | None = None) -> None:
        values = values or {}
        if self.threshold is not None:
            keep = keys < self.threshold
            keys, values = keys[keep], {name: column[keep] for name, column in values.items()}
        self._keys.append(keys)
        for name, column in values.items():
            self._values.setdefault(name, []).append(column)
        self._size += keys.size
        if self._size > 2 * self.capacity:
            self._shrink()

    def _shrink(self) -> None:
        if not self._keys:
            return
        keys = np.concatenate(self._keys)
        values = {name: np.concatenate(parts) for name, parts in self._values.items()}
        if keys.size > self.capacity:
            self.threshold = np.partition(keys, self.capacity)[self.capacity]
            keep = keys < self.threshold
            keys, values = keys[keep], {name: column[keep] for name, column in values.items()}
        self._keys, self._values, self._size = [keys], {n: [c] for n, c in values.items()}, keys.size

    def keys(self) -> np.ndarray:
        self._shrink()
        return self._keys[0] if self._keys else np.empty(0, dtype=np.uint64)

    def values(self, name: str) -> np.ndarray:
        self._shrink()
        parts = self._values.get(name)
        return parts[0] if parts else np.empty(0)


class RowHash:
    """pandas' row hash (`hash_pandas_object(frame, index=False)`) built a column at a time: the same combination of
    the columns' hashes (CPython's tuple hash, as pandas' combine_hash_arrays), so a row's hash, and so the duplicate
    sample, does not depend on whether the batch was read in row chunks or a column at a time."""

    def __init__(self, n_columns: int, n_rows: int) -> None:
        self.n_columns = n_columns
        self.added = 0
        self.multiplier = np.uint64(1000003)
        self.hashes = np.full(n_rows, 0x345678, dtype=np.uint64)

    @staticmethod
    def of_column(column: pd.Series) -> np.ndarray:
        return pd.util.hash_pandas_object(column, index=False).to_numpy(dtype=np.uint64)

    def add(self, column_hash: np.ndarray) -> None:
        remaining = self.n_columns - self.added
        self.hashes ^= column_hash
        self.hashes *= self.multiplier
        self.multiplier += np.uint64(82520 + remaining + remaining)
        self.added += 1

    def result(self) -> np.ndarray:
        if self.added != self.n_columns:
            raise ValueError(f"row hash of {self.added} columns, expected {self.n_columns}")
        return self.hashes + np.uint64(97531)


def _in_order(pool: ThreadPoolExecutor, work: Callable[[str], Any], names: list[str], ahead: int) -> Iterator[Any]:
    """work(name) for each name on the pool, results in order, at most `ahead` in flight (each holds a column)."""
    pending: deque[Future[Any]] = deque()
    for name in names:
        pending.append(pool.submit(work, name))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


class NumericColumn:
    def __init__(self, spec: dict[str, Any], name: str) -> None:
        self.name = name
        self.low, self.high = spec.get("min"), spec.get("max")
        self.ks = KsCounts(numeric_sample(spec))
        self.nulls = self.unparseable = self.infinite = self.out_of_range = 0
        self.first_unparseable: Any = None
        self.minimum, self.maximum = np.inf, -np.inf

    @property
    def finite(self) -> int:
        return self.ks.n

    def add(self, series: pd.Series) -> np.ndarray:
        """Accumulate one chunk; returns its values as float (NaN where missing or unparseable) for the plot sample."""
        missing = series.isna().to_numpy()
        self.nulls += int(missing.sum())
        if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
            values = series.to_numpy(dtype=float, na_value=np.nan)
        else:
            values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
            bad = np.isnan(values) & ~missing
            if bad.any():
                if self.first_unparseable is None:
                    self.first_unparseable = series[bad].iloc[0]
                self.unparseable += int(bad.sum())
        finite_mask = np.isfinite(values)
        self.infinite += int(np.isinf(values).sum())
        finite = values if finite_mask.all() else values[finite_mask]
        if finite.size:
            self.minimum = min(self.minimum, float(finite.min()))
            self.maximum = max(self.maximum, float(finite.max()))
            if self.low is not None:
                self.out_of_range += int(((finite < self.low) | (finite > self.high)).sum())
        self.ks.add(finite)
        return values


class CategoricalColumn:
    def __init__(self, spec: dict[str, Any], name: str) -> None:
        self.name = name
        self.reference = spec.get("frequencies", {})
        self.nulls = 0
        self.counts: dict[str, int] = {}
        self.new_categories = 0
        self.unseen_overflow = 0

    def add(self, series: pd.Series) -> None:
        self.nulls += int(series.isna().sum())
        for category, count in series.dropna().astype(str).value_counts(sort=False).items():
            if category in self.counts:
                self.counts[category] += int(count)
            elif category in self.reference:
                self.counts[category] = int(count)
            elif self.new_categories < MAX_NEW_CATEGORIES:
                self.counts[category] = int(count)
                self.new_categories += 1
            else:
                self.unseen_overflow += int(count)

    def category_counts(self) -> dict[str, int]:
        counts = dict(self.counts)
        if self.unseen_overflow:
            counts[OTHER_NEW_CATEGORIES] = self.unseen_overflow
        return counts


class BatchStats:
    """Accumulates a batch against a baseline profile. `scorer` (the serving model's outputs for a chunk) adds the
    prediction-drift and performance evidence; when it fails (say, a feature column is missing) the first error is
    kept in `score_error` and the batch is no longer scored; `score_columns` (the model's features) limits what a
    Parquet group reads for scoring. `duplicates=False` skips row hashing when no quality check is wanted."""

    def __init__(
        self,
        profile: dict[str, Any],
        *,
        scorer: Callable[[pd.DataFrame], np.ndarray] | None = None,
        score_columns: list[str] | None = None,
        duplicates: bool = True,
        seed: int = 0,
    ) -> None:
        self.profile = profile
        self.scorer = scorer
        self.score_columns = score_columns
        self.columns: list[str] | None = None
        self.n_rows = 0
        self.numeric: dict[str, NumericColumn] = {}
        self.categorical: dict[str, CategoricalColumn] = {}
        for name, spec in profile["columns"].items():
            if spec["role"] == "id":
                continue
            if spec["kind"] == "numeric":
                self.numeric[name] = NumericColumn(spec, name)
            else:
                self.categorical[name] = CategoricalColumn(spec, name)
        self.duplicates = RowSample(DUPLICATE_ROWS) if duplicates else None
        self.plot = RowSample(PLOT_ROWS)
        prediction = profile.get("prediction")
        self.prediction = KsCounts(numeric_sample(prediction)) if scorer is not None and prediction else None
        self.labelled = RowSample(PERFORMANCE_ROWS)
        self.n_labelled = 0
        self.score_error: str | None = None
        self._rng = np.random.default_rng(seed)

    @classmethod
    def of(cls, parts: Iterable[pd.DataFrame | ColumnGroup], profile: dict[str, Any], **options: Any) -> BatchStats:
        """Accumulate row chunks and Parquet column groups (datasets.iter_parts) alike."""
        stats = cls(profile, **options)
        for part in parts:
            if isinstance(part, ColumnGroup):
                stats.add_columns(part)
            else:
                stats.add(part)
        return stats

    def add(self, chunk: pd.DataFrame) -> None:
        if self.columns is None:
            self.columns = [str(c) for c in chunk.columns]
        self.n_rows += len(chunk)
        numeric = [name for name in self.numeric if name in chunk.columns]

        def add_numeric(name: str) -> np.ndarray:
            return self.numeric[name].add(chunk[name])

        if len(chunk) >= PARALLEL_ROWS and len(numeric) > 1:
            # Sorting and binary search release the GIL: a large chunk's columns use every core (order is kept).
            with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
                floats = list(pool.map(add_numeric, numeric))
        else:
            floats = [add_numeric(name) for name in numeric]
        for name, column in self.categorical.items():
            if name in chunk.columns:
                column.add(chunk[name])
        keys = self._rng.integers(0, _KEY_MAX, size=len(chunk), dtype=np.uint64, endpoint=True)
        self.plot.add(keys, dict(zip(numeric, floats, strict=True)))
        if self.duplicates is not None:
            self.duplicates.add(pd.util.hash_pandas_object(chunk, index=False).to_numpy(dtype=np.uint64))
        if self.scorer is not None:
            self._add_scores(chunk, keys)

    def add_columns(self, group: ColumnGroup) -> None:
        """Accumulate a Parquet row group a column at a time: the same statistics `add` gives on the same rows, with a
        few columns in memory instead of the whole group (which may be the whole file). Scoring needs whole rows: with
        a scorer, the model's columns are then read once more, in row chunks."""
        if self.columns is None:
            self.columns = list(group.names)
        n = group.n_rows
        self.n_rows += n
        keys = self._rng.integers(0, _KEY_MAX, size=n, dtype=np.uint64, endpoint=True)
        # The plot sample keeps the smallest keys overall, so only this group's PLOT_ROWS smallest can stay in it.
        plot_rows = np.sort(np.argpartition(keys, PLOT_ROWS)[:PLOT_ROWS]) if n > PLOT_ROWS else np.arange(n)
        row_hash = RowHash(len(group.names), n) if self.duplicates is not None else None

        def one_column(name: str) -> tuple[str, np.ndarray | None, np.ndarray | None]:
            series = group.column(name)
            values = None
            if name in self.numeric:
                values = self.numeric[name].add(series)[plot_rows]
            elif name in self.categorical:
                self.categorical[name].add(series)
            return name, RowHash.of_column(series) if row_hash is not None else None, values

        workers = max(1, min(4, os.cpu_count() or 1))
        plot_values: dict[str, np.ndarray] = {}
        with ThreadPoolExecutor(max_workers=workers) as pool:
            # Each column's statistics are its own; only the row hash combines columns, in file order.
            for name, column_hash, values in _in_order(pool, one_column, group.names, ahead=workers + 1):
                if values is not None:
                    plot_values[name] = values
                if row_hash is not None:
                    row_hash.add(column_hash)
        self.plot.add(keys[plot_rows], {name: plot_values[name] for name in self.numeric if name in plot_values})
        if row_hash is not None:
            self.duplicates.add(row_hash.result())
        if self.scorer is not None:
            start = 0
            for chunk in group.row_chunks(self._score_columns(group.names), DEFAULT_CHUNK_ROWS):
                self._add_scores(chunk, keys[start : start + len(chunk)])
                start += len(chunk)

    def _score_columns(self, names: list[str]) -> list[str]:
        """The columns scoring reads: the model's features and the target, when the caller named the features."""
        if self.score_columns is None:
            return names
        keep = set(self.score_columns) | {self.profile.get("target")}
        return [name for name in names if name in keep]

    def _add_scores(self, chunk: pd.DataFrame, keys: np.ndarray) -> None:
        if self.score_error is not None:
            return
        try:
            scores = np.asarray(self.scorer(chunk), dtype=float)
        except Exception as error:  # a batch the model cannot score: kept as evidence, the caller decides
            self.score_error = f"{type(error).__name__}: {error}"
            self.prediction = None
            return
        if self.prediction is not None:
            self.prediction.add(scores[np.isfinite(scores)])
        target = self.profile.get("target")
        if self.profile.get("holdout") and target in chunk.columns:
            labels = pd.to_numeric(chunk[target], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
            labelled = ~np.isnan(labels) & np.isfinite(scores)
            self.n_labelled += int(labelled.sum())
            self.labelled.add(keys[labelled], {"label": labels[labelled], "score": scores[labelled]})

    def duplicate_fraction(self) -> float:
        keys = self.duplicates.keys() if self.duplicates is not None else np.empty(0, dtype=np.uint64)
        return float(1 - np.unique(keys).size / keys.size) if keys.size else 0.0

    def plot_values(self, name: str) -> np.ndarray:
        values = self.plot.values(name)
        return values[np.isfinite(values)]
