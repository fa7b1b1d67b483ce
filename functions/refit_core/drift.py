"""Drift tests of a batch against a baseline profile.

Numeric columns: two-sample Kolmogorov-Smirnov against the profile's sorted sample (exact when the
profile holds every value), effect size = the KS distance. Categorical columns: chi-square on the
category counts, effect size = total variation distance. The per-check level `alpha` is split across
all tested columns (Bonferroni, or Holm's step-down), and a column counts as drifted only when it is
significant *and* its effect size reaches `min_effect_size`, so a huge batch does not flag a trivial shift.
The dataset drifts when any column (or the target) does: a single strongly drifted feature is enough.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from scipy.stats._stats_py import _attempt_exact_2kssamp  # pinned scipy; agreement is tested to 1e-9

from refit_core.config import DriftSettings
from refit_core.metrics import compute_metric, higher_is_better
from refit_core.profile import numeric_sample

PARALLEL_ROWS = 50_000  # below this, starting threads costs more than it saves
MAX_EXACT_KS_N = 10_000  # scipy's threshold for the exact two-sample distribution in method="auto"


def _last_of_ties(values: np.ndarray) -> np.ndarray:
    """Indexes of the last element of each run of equal values in a sorted array."""
    last = np.empty(values.size, dtype=bool)
    np.not_equal(values[1:], values[:-1], out=last[:-1])
    last[-1] = True
    return np.flatnonzero(last)


def ks_statistic(reference_sorted: np.ndarray, current_sorted: np.ndarray) -> float:
    """Two-sided KS distance of two sorted samples: the largest gap between their ECDFs, exactly.

    Only O(n_small · log n_large) work after sorting: the smaller sample's values cut the larger one into
    segments on which the smaller ECDF is constant while the larger ECDF rises, so within a segment the gap is
    largest at its first or last value. The gap is computed in integers, |count_a·n_b − count_b·n_a| / (n_a·n_b).
    """
    small, large = (
        (reference_sorted, current_sorted)
        if reference_sorted.size <= current_sorted.size
        else (current_sorted, reference_sorted)
    )
    n_small, n_large = small.size, large.size
    # At the smaller sample's values (the last of each tied run).
    index = _last_of_ties(small)
    small_counts = index.astype(np.int64) + 1
    large_counts = np.searchsorted(large, small[index], side="right").astype(np.int64)
    gap = int(np.max(np.abs(small_counts * n_large - large_counts * n_small)))
    # At the first and last larger-sample value of each segment between consecutive smaller-sample values.
    bounds = np.unique(np.concatenate(([0], np.searchsorted(large, small, side="left"), [n_large])))
    last = bounds[bounds > 0] - 1
    first = bounds[bounds < n_large]
    points = np.concatenate((large[last], large[first]))
    large_counts = np.concatenate(
        (last.astype(np.int64) + 1, np.searchsorted(large, large[first], side="right").astype(np.int64))
    )
    small_counts = np.searchsorted(small, points, side="right").astype(np.int64)
    gap = max(gap, int(np.max(np.abs(large_counts * n_small - small_counts * n_large))))
    return gap / (float(n_small) * float(n_large))


def ks_p_value(statistic: float, n1: int, n2: int) -> float:
    """The p-value scipy.stats.ks_2samp(method='auto') gives for this statistic and these sizes (exact when the
    larger sample has at most 10,000 values, else the asymptotic Kolmogorov distribution)."""
    if max(n1, n2) <= MAX_EXACT_KS_N:
        g = math.gcd(n1, n2)
        success, _, probability = _attempt_exact_2kssamp(n1, n2, g, statistic, "two-sided")
        if success:
            return float(np.clip(probability, 0, 1))
    m, n = sorted([float(n1), float(n2)], reverse=True)
    return float(np.clip(stats.kstwo.sf(statistic, np.round(m * n / (m + n))), 0, 1))


def ks_test(reference_sorted: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """Exact two-sample KS against a stored sorted reference: sorting the batch once is the main cost."""
    current_sorted = np.sort(current)
    statistic = ks_statistic(reference_sorted, current_sorted)
    return statistic, ks_p_value(statistic, reference_sorted.size, current_sorted.size)


def chi_square_test(reference_counts: dict[str, int], current: pd.Series) -> tuple[float, float, float]:
    """Returns (statistic, p-value, total variation distance)."""
    current_counts = current.dropna().astype(str).value_counts()
    categories = sorted(set(reference_counts) | set(current_counts.index))
    ref = np.array([reference_counts.get(c, 0) for c in categories], dtype=float)
    cur = np.array([int(current_counts.get(c, 0)) for c in categories], dtype=float)
    if ref.sum() == 0 or cur.sum() == 0:
        return 0.0, 1.0, 0.0
    total_variation = 0.5 * float(np.abs(ref / ref.sum() - cur / cur.sum()).sum())
    if len(categories) < 2:
        return 0.0, 1.0, total_variation
    table = np.vstack([ref, cur])
    statistic, p_value, _, _ = stats.chi2_contingency(table, correction=False)
    return float(statistic), float(p_value), total_variation


def _test_column(spec: dict[str, Any], series: pd.Series) -> dict[str, Any]:
    if spec["kind"] == "numeric":
        values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float)
        finite = np.isfinite(values)
        if not finite.all():
            values = values[finite]
        reference = numeric_sample(spec)
        if values.size == 0 or reference.size == 0:
            return {"kind": "numeric", "test": "ks", "statistic": 0.0, "p_value": 1.0, "effect_size": 0.0}
        statistic, p_value = ks_test(reference, values)
        return {
            "kind": "numeric",
            "test": "ks" if spec.get("sample_is_exact", True) else "ks_reference_sample",
            "statistic": statistic,
            "p_value": p_value,
            "effect_size": statistic,
        }
    statistic, p_value, total_variation = chi_square_test(spec["frequencies"], series)
    return {
        "kind": "categorical",
        "test": "chi_square",
        "statistic": statistic,
        "p_value": p_value,
        "effect_size": total_variation,
    }


def _rejections(p_values: list[float], alpha: float, correction: str) -> list[bool]:
    m = len(p_values)
    if m == 0:
        return []
    if correction == "bonferroni":
        return [p < alpha / m for p in p_values]
    order = sorted(range(m), key=lambda i: p_values[i])
    rejected = [False] * m
    for rank, index in enumerate(order):
        if p_values[index] < alpha / (m - rank):
            rejected[index] = True
        else:
            break
    return rejected


def performance_test(holdout: dict[str, Any], y_true: np.ndarray, scores: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """Has the serving model's primary metric dropped on this labelled batch below its holdout value? One-sided
    z-test combining the batch's bootstrap standard error with the holdout's (stored at training)."""
    metric = holdout["metric"]
    current = compute_metric(metric, y_true, scores)
    rng = np.random.default_rng(seed)
    replicates = []
    for _ in range(300):
        index = rng.integers(0, y_true.size, y_true.size)
        if metric != "roc_auc" or np.unique(y_true[index]).size == 2:
            replicates.append(compute_metric(metric, y_true[index], scores[index]))
    standard_error = float(np.hypot(np.std(replicates, ddof=1), holdout.get("standard_error") or 0.0))
    drop = (holdout["value"] - current) if higher_is_better(metric) else (current - holdout["value"])
    p_value = float(stats.norm.sf(drop / standard_error)) if standard_error > 0 else float(drop <= 0)
    return {
        "test": "bootstrap_z",
        "metric": metric,
        "baseline": holdout["value"],
        "current": current,
        "statistic": drop,
        "p_value": p_value,
        "effect_size": drop,
        "rows": int(y_true.size),
    }


def detect_drift(
    frame: pd.DataFrame,
    profile: dict[str, Any],
    settings: DriftSettings,
    scores: np.ndarray | None = None,
) -> dict[str, Any]:
    """The drift report (public JSON shape: see README 'Drift report'). With `scores` (the serving model's outputs
    on this batch) it also tests prediction drift against the holdout outputs stored in the profile and, when the
    batch is labelled, a drop of the primary metric against the holdout value: the paths that see concept drift."""
    names = [
        n for n, spec in profile["columns"].items() if spec["role"] in ("feature", "target") and n in frame.columns
    ]

    def test(name: str) -> dict[str, Any]:
        return _test_column(profile["columns"][name], frame[name])

    if len(frame) >= PARALLEL_ROWS:
        # Sorting and binary search release the GIL: large batches test columns on all cores (order is kept).
        with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
            results = list(pool.map(test, names))
    else:
        results = [test(name) for name in names]
    tested = list(zip(names, results, strict=True))
    model_results: dict[str, dict[str, Any]] = {}
    if scores is not None and profile.get("prediction"):
        model_results["prediction"] = _test_column({**profile["prediction"], "kind": "numeric"}, pd.Series(scores))
        target = profile.get("target")
        if profile.get("holdout") and target in frame.columns:
            labelled = frame[target].notna().to_numpy()
            labels = frame[target].to_numpy(dtype=float)[labelled]
            metric_defined = profile["holdout"]["metric"] != "roc_auc" or np.unique(labels).size == 2
            if labelled.sum() >= settings.min_rows and metric_defined:
                model_results["performance"] = performance_test(
                    profile["holdout"], labels, np.asarray(scores)[labelled]
                )
    tested += list(model_results.items())
    rejected = _rejections([r["p_value"] for _, r in tested], settings.per_check_alpha, settings.correction)
    features: dict[str, Any] = {}
    target_result: dict[str, Any] | None = None
    for (name, result), significant in zip(tested, rejected, strict=True):
        floor = settings.min_performance_drop if name == "performance" else settings.min_effect_size
        result["drifted"] = bool(significant and result["effect_size"] >= floor)
        if name in model_results:
            continue
        if profile["columns"][name]["role"] == "target":
            target_result = {k: result[k] for k in ("test", "statistic", "p_value", "effect_size", "drifted")}
        else:
            features[name] = result
    drifted = sorted(name for name, r in features.items() if r["drifted"])
    model_drifted = [name for name, result in model_results.items() if result["drifted"]]
    return {
        "drift_detected": bool(drifted) or bool(target_result and target_result["drifted"]) or bool(model_drifted),
        "drifted_features": drifted,
        "features": features,
        "target": target_result,
        "prediction": model_results.get("prediction"),
        "performance": model_results.get("performance"),
        "n_reference": int(profile["n_rows"]),
        "n_current": int(len(frame)),
        "alpha": settings.alpha,
        "horizon_checks": settings.horizon_checks,
        "per_check_alpha": settings.per_check_alpha,
        "correction": settings.correction,
        "min_effect_size": settings.min_effect_size,
    }
