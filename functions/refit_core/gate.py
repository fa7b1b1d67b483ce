"""Champion vs challenger gate on the same holdout rows.

Promote only when the challenger is better with statistical significance (one-sided, level `alpha`)
*and* by at least the practical margin (absolute, or relative to the champion), *and* no guard metric
degrades beyond its tolerance (overall or in any segment of a configured column), *and* every absolute
floor holds. AUC uses DeLong's test for correlated ROC curves, accuracy the exact McNemar test,
everything else a paired bootstrap of the metric difference. With no champion, only the floors decide.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from refit_core.config import GateSettings, GuardSettings, ModelConfig
from refit_core.datasets import iter_csv
from refit_core.metric_names import higher_is_better
from refit_core.metrics import Resampler, bootstrap_counts, compute_metric


class GateInputError(ValueError):
    """Evaluation data the gate refuses to decide on; the message names the problem."""


def _placements(positive: np.ndarray, negative: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components via midranks (Sun & Xu's fast form)."""
    m, n = positive.size, negative.size
    combined = np.concatenate([positive, negative])
    rank_all = stats.rankdata(combined)
    rank_pos = stats.rankdata(positive)
    rank_neg = stats.rankdata(negative)
    v10 = (rank_all[:m] - rank_pos) / n
    v01 = 1.0 - (rank_all[m:] - rank_neg) / m
    return v10, v01


def delong_test(y_true: np.ndarray, score_a: np.ndarray, score_b: np.ndarray, margin: float = 0.0) -> dict[str, float]:
    """One-sided DeLong test of AUC(a) - AUC(b) > margin on the same rows."""
    positive = y_true == 1
    m, n = int(positive.sum()), int((~positive).sum())
    v10_a, v01_a = _placements(score_a[positive], score_a[~positive])
    v10_b, v01_b = _placements(score_b[positive], score_b[~positive])
    auc_a, auc_b = float(v10_a.mean()), float(v10_b.mean())
    s10 = np.cov(np.vstack([v10_a, v10_b]))
    s01 = np.cov(np.vstack([v01_a, v01_b]))
    covariance = s10 / m + s01 / n
    variance = float(covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1])
    difference = auc_a - auc_b
    excess = difference - margin
    if variance <= 0:
        z = np.inf if excess > 0 else (-np.inf if excess < 0 else 0.0)
    else:
        z = excess / np.sqrt(variance)
    standard_error = float(np.sqrt(max(variance, 0.0)))
    return {
        "metric_a": auc_a,
        "metric_b": auc_b,
        "difference": difference,
        "z": float(z),
        "p_value": float(stats.norm.sf(z)),
        "ci_low": difference - 1.959963984540054 * standard_error,
        "ci_high": difference + 1.959963984540054 * standard_error,
    }


def mcnemar_test(y_true: np.ndarray, score_a: np.ndarray, score_b: np.ndarray) -> dict[str, float]:
    """One-sided exact McNemar test: is model a right more often than b on the rows where they disagree?"""
    right_a = (score_a >= 0.5) == (y_true == 1)
    right_b = (score_b >= 0.5) == (y_true == 1)
    only_a, only_b = int((right_a & ~right_b).sum()), int((~right_a & right_b).sum())
    discordant = only_a + only_b
    p_value = float(stats.binomtest(only_a, discordant, 0.5, alternative="greater").pvalue) if discordant else 1.0
    return {
        "metric_a": float(right_a.mean()),
        "metric_b": float(right_b.mean()),
        "difference": float(right_a.mean() - right_b.mean()),
        "only_a_right": only_a,
        "only_b_right": only_b,
        "p_value": p_value,
    }


def paired_bootstrap(
    metric: str,
    sign: float,
    y_true: np.ndarray,
    score_a: np.ndarray,
    score_b: np.ndarray,
    samples: int,
    seed: int,
    margin: float = 0.0,
) -> dict[str, float]:
    """One-sided paired bootstrap of the improvement sign × (metric(a) − metric(b)) over `margin`;
    p = share of resamples whose improvement is not above the margin."""
    rng = np.random.default_rng(seed)
    n = y_true.size
    observed = sign * (compute_metric(metric, y_true, score_a) - compute_metric(metric, y_true, score_b))
    differences = np.empty(samples)
    resampled_a, resampled_b = Resampler(y_true, score_a), Resampler(y_true, score_b)
    for i in range(samples):
        counts = bootstrap_counts(rng, n)
        differences[i] = sign * (resampled_a.metric(metric, counts) - resampled_b.metric(metric, counts))
    # The interval is of the reported difference metric(a) - metric(b), not of the improvement: for a lower-is-better
    # metric (sign -1) the improvement's upper quantile is the difference's lower bound.
    raw_differences = sign * differences
    return {
        "metric_a": compute_metric(metric, y_true, score_a),
        "metric_b": compute_metric(metric, y_true, score_b),
        "difference": float(sign * observed),
        "p_value": float((np.sum(differences <= margin) + 1) / (samples + 1)),
        "ci_low": float(np.quantile(raw_differences, 0.025)),
        "ci_high": float(np.quantile(raw_differences, 0.975)),
    }


def validate_predictions(
    problem_type: str, y_true: np.ndarray, challenger: np.ndarray, champion: np.ndarray | None
) -> None:
    arrays = {"labels": y_true, "challenger predictions": challenger}
    if champion is not None:
        arrays["champion predictions"] = champion
    if y_true.size == 0:
        raise GateInputError("the holdout is empty")
    for label, values in arrays.items():
        if values.shape != y_true.shape:
            raise GateInputError(f"{label} have {values.size} rows, the holdout has {y_true.size}")
        if not np.all(np.isfinite(values)):
            raise GateInputError(f"{label} contain {int((~np.isfinite(values)).sum())} NaN or infinite values")
    if problem_type == "binary_classification":
        if not np.isin(y_true, (0, 1)).all():
            raise GateInputError("labels must be 0 or 1 for binary classification")
        if np.unique(y_true).size < 2:
            raise GateInputError("the holdout has a single class; AUC and the paired tests are undefined")
        for label, values in arrays.items():
            if label != "labels" and ((values < 0) | (values > 1)).any():
                raise GateInputError(f"{label} hold probabilities outside [0, 1]")


def _metric_or_none(metric: str, y_true: np.ndarray, scores: np.ndarray) -> float | None:
    """A metric that is undefined on these rows (e.g. AUC on a single-class segment) is None, not an error."""
    if metric == "roc_auc" and np.unique(y_true).size < 2:
        return None
    return compute_metric(metric, y_true, scores)


def evaluate_guards(
    guards: list[GuardSettings],
    y_true: np.ndarray,
    challenger: np.ndarray,
    champion: np.ndarray,
    segments: dict[str, np.ndarray],
) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    for guard in guards:
        if guard.segment_column is None:
            groups: list[tuple[str | None, np.ndarray]] = [(None, np.ones(y_true.size, dtype=bool))]
        else:
            if guard.segment_column not in segments:
                raise GateInputError(
                    f"guard on {guard.metric} needs segment column {guard.segment_column!r}, "
                    "which the holdout predictions do not carry"
                )
            values = segments[guard.segment_column].astype(str)
            groups = [(value, values == value) for value in sorted(set(values))]
        for segment, mask in groups:
            if mask.sum() < (guard.min_segment_rows if segment is not None else 1):
                continue
            new = _metric_or_none(guard.metric, y_true[mask], challenger[mask])
            old = _metric_or_none(guard.metric, y_true[mask], champion[mask])
            if new is None or old is None:
                continue
            degradation = (old - new) if higher_is_better(guard.metric) else (new - old)
            results.append(
                {
                    "metric": guard.metric,
                    "segment_column": guard.segment_column,
                    "segment": segment,
                    "rows": int(mask.sum()),
                    "challenger": new,
                    "champion": old,
                    "degradation": degradation,
                    "tolerance": guard.max_degradation,
                    "holds": bool(degradation <= guard.max_degradation + 1e-12),
                }
            )
    return results


def decide(
    problem_type: str,
    primary_metric: str,
    direction: str,
    settings: GateSettings,
    y_true: np.ndarray,
    challenger: np.ndarray,
    champion: np.ndarray | None,
    seed: int = 0,
    segments: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """The gate decision with its evidence and a one-sentence reason."""
    y_true = np.asarray(y_true, dtype=float)
    challenger = np.asarray(challenger, dtype=float)
    champion = None if champion is None else np.asarray(champion, dtype=float)
    validate_predictions(problem_type, y_true, challenger, champion)

    challenger_value = compute_metric(primary_metric, y_true, challenger)
    floors = []
    for metric, floor in sorted(settings.floors.items()):
        value = compute_metric(metric, y_true, challenger)
        holds = value >= floor if higher_is_better(metric) else value <= floor
        floors.append({"metric": metric, "value": value, "floor": floor, "holds": bool(holds)})
    failed_floors = [f for f in floors if not f["holds"]]
    evidence: dict[str, Any] = {
        "primary_metric": primary_metric,
        "challenger": challenger_value,
        "champion": None,
        "floors": floors,
        "guards": [],
        "alpha": settings.alpha,
        "min_improvement": settings.min_improvement,
        "n_rows": int(y_true.size),
    }
    if champion is None:
        promote = not failed_floors
        reason = (
            f"first model: {primary_metric} {challenger_value:.4f} meets every floor"
            if promote
            else f"first model fails the floor on {failed_floors[0]['metric']} "
            f"({failed_floors[0]['value']:.4f} vs {failed_floors[0]['floor']})"
        )
        return {"promote": promote, "reason": reason, "test": "floors_only", "p_value": None, **evidence}

    sign = 1.0 if direction == "maximize" else -1.0
    champion_value = compute_metric(primary_metric, y_true, champion)
    margin = settings.min_improvement
    if settings.min_improvement_kind == "relative":
        margin = settings.min_improvement * abs(champion_value)
    # The test is against the margin itself (H0: improvement <= margin), so a trivially better model is not
    # promoted just because the holdout is large enough to make a tiny difference significant.
    if primary_metric == "roc_auc":
        test_name, result = "delong", delong_test(y_true, challenger, champion, margin)
    elif primary_metric == "accuracy" and margin == 0:
        test_name, result = "mcnemar_exact", mcnemar_test(y_true, challenger, champion)
    else:
        test_name = "paired_bootstrap"
        result = paired_bootstrap(
            primary_metric, sign, y_true, challenger, champion, settings.bootstrap_samples, seed, margin
        )
    improvement = sign * result["difference"]
    significant = result["p_value"] < settings.alpha
    guards = evaluate_guards(settings.guards, y_true, challenger, champion, segments or {})
    failed_guards = [g for g in guards if not g["holds"]]
    evidence["guards"] = guards
    evidence["required_improvement"] = margin
    evidence.update(
        champion=result["metric_b"],
        difference=result["difference"],
        improvement=improvement,
        ci_low=result.get("ci_low"),
        ci_high=result.get("ci_high"),
    )
    if failed_floors:
        promote = False
        reason = (
            f"challenger fails the floor on {failed_floors[0]['metric']} "
            f"({failed_floors[0]['value']:.4f} vs {failed_floors[0]['floor']})"
        )
    elif failed_guards:
        promote = False
        guard = failed_guards[0]
        where = f" in {guard['segment_column']}={guard['segment']}" if guard["segment"] is not None else ""
        reason = (
            f"guard {guard['metric']}{where} degrades by {guard['degradation']:.4f} "
            f"({guard['champion']:.4f} -> {guard['challenger']:.4f}), over its tolerance {guard['tolerance']}"
        )
    elif not significant:
        promote = False
        reason = (
            f"challenger {primary_metric} {challenger_value:.4f} vs champion {result['metric_b']:.4f} is not "
            f"significantly better by the margin {margin:.4f} ({test_name} p={result['p_value']:.3g} >= {settings.alpha})"
        )
    else:
        promote = True
        reason = (
            f"challenger {primary_metric} {challenger_value:.4f} beats champion {result['metric_b']:.4f} by "
            f"{improvement:.4f} ({test_name} p={result['p_value']:.3g})"
        )
    return {"promote": promote, "reason": reason, "test": test_name, "p_value": result["p_value"], **evidence}


def decide_on_predictions(model: ModelConfig, predictions: pd.DataFrame, expect_champion: bool) -> dict[str, Any]:
    """The gate on a training job's holdout_predictions.csv (columns label, challenger, champion, segment:<col>)."""
    missing = [c for c in ("label", "challenger") if c not in predictions.columns]
    if missing:
        raise GateInputError(f"holdout_predictions.csv lacks the columns {missing}")
    if expect_champion and "champion" not in predictions.columns:
        raise GateInputError("holdout_predictions.csv has no champion column although a champion is serving")
    champion = predictions["champion"].to_numpy(dtype=float) if expect_champion else None
    segments = {c.removeprefix("segment:"): predictions[c].to_numpy() for c in predictions if c.startswith("segment:")}
    return decide(
        model.problem_type,
        model.primary_metric,
        model.metric_direction,
        model.gate,
        predictions["label"].to_numpy(dtype=float),
        predictions["challenger"].to_numpy(dtype=float),
        champion,
        seed=model.seed,
        segments=segments,
    )


def champion_expected(evaluation: dict[str, Any]) -> bool:
    """Whether the training job scored a champion on its holdout: train writes the champion's metrics into
    evaluation.json exactly when the run gave it the serving model (the `champion` channel)."""
    return bool((evaluation.get("metrics") or {}).get("champion"))


def read_predictions(data: bytes, source: str) -> pd.DataFrame:
    """holdout_predictions.csv through the project's CSV reader: an empty or non-CSV file is a DataError naming
    `source` and what is wrong with it."""
    return next(iter_csv(io.BytesIO(data), source, None))


def gate_training_outputs(
    model: ModelConfig,
    evaluation_json: bytes,
    predictions_csv: bytes,
    source: str,
    has_champion: bool | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The gate on a training job's evaluation.json and holdout_predictions.csv (both under `source`), as the Gate
    Lambda and `refit gate` run it: (decision, evaluation). Whether a champion is compared comes from the
    evaluation; `has_champion`, when the run knows it, must agree with it."""
    try:
        evaluation = json.loads(evaluation_json)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise GateInputError(f"{source}/evaluation.json: not valid JSON ({error})") from None
    if not isinstance(evaluation, dict) or not isinstance(evaluation.get("metrics"), dict):
        raise GateInputError(f"{source}/evaluation.json: not a training evaluation (no 'metrics' object)")
    expect_champion = champion_expected(evaluation)
    if has_champion is not None and has_champion != expect_champion:
        raise GateInputError(
            f"{source}/evaluation.json: "
            + (
                "the run has a serving champion but the training job scored none"
                if has_champion
                else "the training job scored a champion although the run has none serving"
            )
        )
    for side in ("challenger",) + (("champion",) if expect_champion else ()):
        found = evaluation["metrics"].get(side) or {}
        if model.primary_metric not in found:
            raise GateInputError(
                f"{source}/evaluation.json has no {side} value for the primary metric {model.primary_metric!r} "
                f"(found: {sorted(found)})"
            )
    predictions = read_predictions(predictions_csv, f"{source}/holdout_predictions.csv")
    return decide_on_predictions(model, predictions, expect_champion), evaluation
