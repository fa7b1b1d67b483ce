"""Drift tests of a batch against a baseline profile.

Numeric columns: two-sample Kolmogorov-Smirnov against the profile's sorted sample (exact when the
profile holds every value), effect size = PSI on the reference's decile bins. Categorical columns:
chi-square on the category counts, effect size = total variation distance. The per-check level `alpha` is
split across all tested columns (Bonferroni, or Holm's step-down), and a column counts as drifted only when it
is significant *and* its effect size reaches its floor (`min_psi`, `min_effect_size`), so a huge batch does not
flag a trivial shift.
The dataset drifts when any column (or the target) does: a single strongly drifted feature is enough.
The tests read a BatchStats (refit_core.batch), accumulated from the batch chunk by chunk; every statistic is the
one the whole batch gives.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats
from scipy.stats._stats_py import _attempt_exact_2kssamp  # pinned scipy; agreement is tested to 1e-9

from refit_core.batch import BatchStats, KsCounts
from refit_core.config import DriftSettings
from refit_core.metric_names import higher_is_better
from refit_core.metrics import Resampler, bootstrap_counts, compute_metric

MAX_EXACT_KS_N = 10_000  # scipy's threshold for the exact two-sample distribution in method="auto"


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


def _numeric_result(counts: KsCounts, exact: bool) -> dict[str, Any]:
    if counts.n == 0 or counts.m == 0:
        return {
            "kind": "numeric",
            "test": "ks",
            "statistic": 0.0,
            "p_value": 1.0,
            "effect_size": 0.0,
            "effect_measure": "psi",
        }
    statistic = counts.statistic()
    return {
        "kind": "numeric",
        "test": "ks" if exact else "ks_reference_sample",
        "statistic": statistic,
        "p_value": ks_p_value(statistic, counts.m, counts.n),
        "effect_size": counts.psi(),
        "effect_measure": "psi",
    }


def chi_square_test(reference_counts: dict[str, int], current_counts: dict[str, int]) -> tuple[float, float, float]:
    """Returns (statistic, p-value, total variation distance)."""
    categories = sorted(set(reference_counts) | set(current_counts))
    ref = np.array([reference_counts.get(c, 0) for c in categories], dtype=float)
    cur = np.array([current_counts.get(c, 0) for c in categories], dtype=float)
    if ref.sum() == 0 or cur.sum() == 0:
        return 0.0, 1.0, 0.0
    total_variation = 0.5 * float(np.abs(ref / ref.sum() - cur / cur.sum()).sum())
    if len(categories) < 2:
        return 0.0, 1.0, total_variation
    statistic, p_value, _, _ = stats.chi2_contingency(np.vstack([ref, cur]), correction=False)
    return float(statistic), float(p_value), total_variation


def _column_result(batch: BatchStats, name: str) -> dict[str, Any]:
    spec = batch.profile["columns"][name]
    if name in batch.numeric:
        return _numeric_result(batch.numeric[name].ks, spec.get("sample_is_exact", True))
    statistic, p_value, total_variation = chi_square_test(
        spec["frequencies"], batch.categorical[name].category_counts()
    )
    return {
        "kind": "categorical",
        "test": "chi_square",
        "statistic": statistic,
        "p_value": p_value,
        "effect_size": total_variation,
        "effect_measure": "total_variation",
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
    resampler = Resampler(y_true, scores)
    replicates = []
    for _ in range(300):
        counts = bootstrap_counts(rng, y_true.size)
        if metric != "roc_auc" or resampler.varies(counts):
            replicates.append(resampler.metric(metric, counts))
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


def detect_drift(batch: BatchStats, settings: DriftSettings) -> dict[str, Any]:
    """The drift report (public JSON shape: see README 'Drift report'). When the batch was scored by the serving model
    it also tests prediction drift against the holdout outputs stored in the profile and, when the batch is labelled,
    a drop of the primary metric against the holdout value: the paths that see concept drift."""
    profile = batch.profile
    present = set(batch.columns or [])
    names = [n for n, spec in profile["columns"].items() if spec["role"] in ("feature", "target") and n in present]
    tested = [(name, _column_result(batch, name)) for name in names]
    model_results: dict[str, dict[str, Any]] = {}
    if batch.prediction is not None:
        model_results["prediction"] = _numeric_result(
            batch.prediction, profile["prediction"].get("sample_is_exact", True)
        )
        labels, scores = batch.labelled.values("label"), batch.labelled.values("score")
        holdout = profile.get("holdout")
        metric_defined = holdout is not None and (holdout["metric"] != "roc_auc" or np.unique(labels).size == 2)
        if metric_defined and batch.n_labelled >= settings.min_rows:
            model_results["performance"] = performance_test(holdout, labels, scores)
            model_results["performance"]["rows_labelled"] = batch.n_labelled
    tested += list(model_results.items())
    rejected = _rejections([r["p_value"] for _, r in tested], settings.per_check_alpha, settings.correction)
    features: dict[str, Any] = {}
    target_result: dict[str, Any] | None = None
    for (name, result), significant in zip(tested, rejected, strict=True):
        if name == "performance":
            floor = settings.min_performance_drop
        elif result.get("effect_measure") == "psi":
            floor = settings.min_psi
        else:
            floor = settings.min_effect_size
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
        "n_current": int(batch.n_rows),
        "alpha": settings.alpha,
        "horizon_checks": settings.horizon_checks,
        "per_check_alpha": settings.per_check_alpha,
        "correction": settings.correction,
        "min_effect_size": settings.min_effect_size,
        "min_psi": settings.min_psi,
    }
