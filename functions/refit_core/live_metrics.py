"""The live primary metric judged with its uncertainty, and estimated before labels arrive (the monitor's statistics).

- `metric_interval`: the metric on the labelled rows of the monitor's window with a confidence interval. ROC AUC uses
  DeLong's variance (placement values, ties counted half; O(n log n)) on the logit scale, so the interval stays
  inside (0, 1); accuracy, precision and recall are proportions (Wilson score interval on their own denominator);
  every other metric uses a percentile bootstrap (`refit_core.metrics.Resampler`).
- `alarm_bound` / `breach`: the quality alarm's rule. The alarm watches the *conservative* bound (the upper bound of
  a metric to maximize), so it fires only when the whole interval is on the wrong side of the threshold, and only on
  at least `min_rows` labelled rows.
- `estimated_metric`: confidence-based performance estimation (CBPE, as NannyML does): the expected value of the
  metric if the labels were drawn from the model's own probabilities. Right only while the model is calibrated on
  the live traffic; under concept drift the probabilities themselves are wrong and so is the estimate (see
  `calibration_check` and the README).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats
from threadpoolctl import threadpool_limits

from refit_core.metric_names import CLASSIFICATION_METRICS, METRIC_DIRECTIONS, higher_is_better
from refit_core.metrics import EPSILON, Resampler, bootstrap_counts, compute_metric, expected_calibration_error

WILSON_METRICS = ("accuracy", "precision", "recall")
ESTIMABLE_METRICS = ("roc_auc", "accuracy", "precision", "recall", "f1", "log_loss")
BOOTSTRAP_REPLICATES = 1000


def roc_auc_from_counts(positive: np.ndarray, negative: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC AUC and DeLong's variance from the positive and negative counts (or weights) of each distinct score, in
    increasing score order along the last axis; leading axes are independent samples (e.g. one row per monitor
    hour). A positive's placement is the share of negatives scored below it (ties count half), a negative's the
    share of positives scored above it; AUC is the mean positive placement and its variance is
    var(positive placements) / P + var(negative placements) / N (DeLong, DeLong & Clarke-Pearson 1988). NaN where a
    class is absent."""
    positive = np.asarray(positive, dtype=float)
    negative = np.asarray(negative, dtype=float)
    total_positive = positive.sum(axis=-1, keepdims=True)
    total_negative = negative.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        positive_placement = (np.cumsum(negative, axis=-1) - 0.5 * negative) / total_negative
        negative_placement = (total_positive - np.cumsum(positive, axis=-1) + 0.5 * positive) / total_positive
        auc = (positive * positive_placement).sum(axis=-1, keepdims=True) / total_positive
        spread_positive = (positive * (positive_placement - auc) ** 2).sum(axis=-1, keepdims=True)
        spread_negative = (negative * (negative_placement - auc) ** 2).sum(axis=-1, keepdims=True)
        # With one row of a class its placement has no sample variance: that term is taken as 0.
        variance = np.where(total_positive > 1, spread_positive / (total_positive - 1), 0.0) / total_positive
        variance += np.where(total_negative > 1, spread_negative / (total_negative - 1), 0.0) / total_negative
    return auc[..., 0], variance[..., 0]


def roc_auc_intervals(positive: np.ndarray, negative: np.ndarray, confidence: float = 0.95) -> dict[str, np.ndarray]:
    """`roc_auc_from_counts` plus the two-sided interval at `confidence`, built on the logit scale (delta method:
    se(logit AUC) = se(AUC) / (AUC (1 - AUC))) and mapped back, so it stays within (0, 1) and is asymmetric near
    the ends, where a symmetric one undercovers. An AUC of exactly 0 or 1 gets the degenerate interval [AUC, AUC]
    (DeLong's variance is 0 there). Arrays over the leading axes: value, lower, upper, variance, n."""
    auc, variance = roc_auc_from_counts(positive, negative)
    z = stats.norm.ppf(0.5 + confidence / 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        inside = (auc > 0) & (auc < 1)
        logit = np.log(auc / (1 - auc))
        half_width = z * np.sqrt(variance) / (auc * (1 - auc))
        lower = np.where(inside, 1 / (1 + np.exp(-(logit - half_width))), auc)
        upper = np.where(inside, 1 / (1 + np.exp(-(logit + half_width))), auc)
    n = np.asarray(positive, dtype=float).sum(axis=-1) + np.asarray(negative, dtype=float).sum(axis=-1)
    return {"value": auc, "lower": lower, "upper": upper, "variance": variance, "n": n}


def _score_groups(scores: np.ndarray, positive_weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positive and negative counts per distinct score, in increasing score order. A row adds `positive_weight` to
    the positives and the rest of 1 to the negatives: its label (0 or 1), or its probability for an expected count."""
    _, group = np.unique(scores, return_inverse=True)
    return np.bincount(group, positive_weight), np.bincount(group, 1 - positive_weight)


def wilson_interval(successes: float, trials: float, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson's score interval for a proportion (good coverage down to a few dozen trials, never outside [0, 1])."""
    z = stats.norm.ppf(0.5 + confidence / 2)
    share = successes / trials
    centre = (share + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z / (1 + z * z / trials) * np.sqrt(share * (1 - share) / trials + z * z / (4 * trials * trials))
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def _validated(metric: str, y_true: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    if metric not in METRIC_DIRECTIONS:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(sorted(METRIC_DIRECTIONS))}")
    y_true = np.asarray(y_true, dtype=float)
    scores = np.asarray(scores, dtype=float)
    if y_true.ndim != 1 or scores.ndim != 1 or y_true.size != scores.size:
        raise ValueError(
            f"{metric}: labels and scores must be 1-D and of equal length, got shapes {y_true.shape} and {scores.shape}"
        )
    for name, values in (("labels", y_true), ("scores", scores)):
        bad = ~np.isfinite(values)
        if bad.any():
            raise ValueError(f"{metric}: {int(bad.sum())} {name} are not finite (first at row {int(np.argmax(bad))})")
    if metric in CLASSIFICATION_METRICS:
        bad = (y_true != 0) & (y_true != 1)
        if bad.any():
            first = int(np.argmax(bad))
            raise ValueError(f"{metric}: labels must be 0 or 1, row {first} is {y_true[first]:g}")
        bad = (scores < 0) | (scores > 1)
        if bad.any():
            first = int(np.argmax(bad))
            raise ValueError(
                f"{metric}: scores must be positive-class probabilities in [0, 1], row {first} is {scores[first]:g}"
            )
    return y_true, scores


def _undefined(metric: str, n: int, confidence: float, method: str, reason: str) -> dict[str, Any]:
    return {
        "metric": metric,
        "value": None,
        "lower": None,
        "upper": None,
        "n": n,
        "confidence": confidence,
        "method": method,
        "reason": reason,
    }


def metric_interval(
    metric: str,
    y_true: np.ndarray,
    scores: np.ndarray,
    confidence: float = 0.95,
    seed: int = 0,
    *,
    replicates: int = BOOTSTRAP_REPLICATES,
) -> dict[str, Any]:
    """The metric on labelled rows with a two-sided interval at `confidence`: {metric, value, lower, upper, n,
    confidence, method}; `scores` as in `refit_core.metrics.compute_metric`. Where the metric is undefined (no
    rows; one class for AUC; no predicted or no actual positives for precision or recall) value, lower and upper
    are None and `reason` says why. `seed` fixes the bootstrap (the only random method)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    y_true, scores = _validated(metric, y_true, scores)
    n = int(y_true.size)
    if metric == "roc_auc":
        method = "delong_logit"
    elif metric in WILSON_METRICS:
        method = "wilson"
    else:
        method = "percentile_bootstrap"
    if n == 0:
        return _undefined(metric, 0, confidence, method, "no labelled rows")
    positive = y_true == 1
    result: dict[str, Any] = {"metric": metric, "n": n, "confidence": confidence, "method": method}
    if metric == "roc_auc":
        if positive.all() or not positive.any():
            return _undefined(metric, n, confidence, method, f"only one class among the {n:,} labelled rows")
        interval = roc_auc_intervals(*_score_groups(scores, y_true), confidence)
        result.update({key: float(interval[key]) for key in ("value", "lower", "upper")})
        result["standard_error"] = float(np.sqrt(interval["variance"]))
        return result
    if metric in WILSON_METRICS:
        predicted = scores >= 0.5
        if metric == "accuracy":
            successes, trials, what = np.count_nonzero(predicted == positive), n, "rows"
        elif metric == "precision":
            successes, trials, what = np.count_nonzero(predicted & positive), np.count_nonzero(predicted), "predicted"
        else:
            successes, trials, what = np.count_nonzero(predicted & positive), np.count_nonzero(positive), "positives"
        if trials == 0:
            reason = "no predicted positives" if metric == "precision" else "no positive labels"
            return _undefined(metric, n, confidence, method, f"{reason} among the {n:,} labelled rows")
        lower, upper = wilson_interval(successes, trials, confidence)
        result.update({"value": float(successes / trials), "lower": lower, "upper": upper, "denominator": int(trials)})
        result["denominator_of"] = what
        return result
    value = compute_metric(metric, y_true, scores)
    rng = np.random.default_rng(seed)
    resampler = Resampler(y_true, scores)
    # A resample is a few dot products: BLAS threads only spin, and on a busy 2-core machine they made 1,000
    # resamples of 25,000 rows take 6.7 s instead of 0.4 s (measured; threadpoolctl comes with scikit-learn).
    with threadpool_limits(1, user_api="blas"):
        draws = np.array([resampler.metric(metric, bootstrap_counts(rng, n)) for _ in range(replicates)])
    tail = (1 - confidence) / 2
    lower, upper = np.quantile(draws, [tail, 1 - tail])
    result.update({"value": value, "lower": float(lower), "upper": float(upper), "replicates": replicates})
    return result


def alarm_bound(interval: dict[str, Any], metric: str) -> float | None:
    """The bound the quality alarm watches: the upper bound of a metric to maximize (the best the live model may
    plausibly be), the lower bound of one to minimize. None when the metric is undefined."""
    if interval.get("value") is None:
        return None
    return interval["upper"] if higher_is_better(metric) else interval["lower"]


def _decimals(*values: float) -> int:
    """The fewest decimals (2 to 6) that keep the given values apart when printed."""
    for decimals in range(2, 7):
        printed = [f"{value:.{decimals}f}" for value in values]
        if len(set(printed)) == len(printed):
            return decimals
    return 6


def _summary(interval: dict[str, Any], decimals: int) -> str:
    level = f"{interval['confidence'] * 100:g}%"
    return (
        f"live {interval['metric']} {interval['value']:,.{decimals}f} ({level} CI {interval['lower']:,.{decimals}f}"
        f"–{interval['upper']:,.{decimals}f}, n = {interval['n']:,})"
    )


def breach(interval: dict[str, Any], threshold: float, min_rows: int) -> dict[str, Any]:
    """Is the live metric (a `metric_interval` result) wrong beyond doubt? Breached when at least `min_rows` rows are
    labelled and the whole interval is on the wrong side of `threshold` (below it for a metric to maximize, above it
    for one to minimize). The reason reads "live roc_auc 0.71 (95% CI 0.68–0.74, n = 3,200) below 0.75" and, when
    not breached, says why."""
    metric = interval["metric"]
    if interval.get("value") is None:
        return {"breached": False, "reason": f"live {metric} undefined: {interval.get('reason', 'no value')}"}
    n = int(interval["n"])
    maximize = higher_is_better(metric)
    bound = alarm_bound(interval, metric)
    decimals = _decimals(bound, threshold)
    summary = _summary(interval, decimals)
    side = "below" if maximize else "above"
    if n < min_rows:
        return {"breached": False, "reason": f"{summary}: n = {n:,} < {min_rows:,} labelled rows"}
    if (bound < threshold) if maximize else (bound > threshold):
        return {"breached": True, "reason": f"{summary} {side} {threshold:,.{decimals}f}"}
    which = "upper" if maximize else "lower"
    return {
        "breached": False,
        "reason": f"{summary}: {which} bound {bound:,.{decimals}f} is not {side} {threshold:,.{decimals}f}",
    }


def estimated_metric(metric: str, probabilities: np.ndarray) -> float | None:
    """Confidence-based performance estimation: the metric expected if each row's label were drawn from its predicted
    positive-class probability, i.e. if the model is calibrated on this traffic. Expected confusion matrix at the
    0.5 threshold (a row predicted positive adds p to the true and 1 - p to the false positives) for accuracy,
    precision, recall and F1; the ROC curve of expected true- and false-positive rates for AUC; mean binary entropy
    for log loss. None for other metrics (calibration error, regression), for no rows, or where the expected
    denominator is 0."""
    if metric not in ESTIMABLE_METRICS:
        return None
    p = np.asarray(probabilities, dtype=float)
    if p.ndim != 1:
        raise ValueError(f"estimated {metric}: probabilities must be 1-D, got shape {p.shape}")
    if p.size == 0:
        return None
    bad = ~np.isfinite(p) | (p < 0) | (p > 1)
    if bad.any():
        first = int(np.argmax(bad))
        raise ValueError(f"estimated {metric}: probabilities must be in [0, 1], row {first} is {p[first]:g}")
    if metric == "roc_auc":
        positive, negative = _score_groups(p, p)
        if positive.sum() == 0 or negative.sum() == 0:
            return None
        return float(roc_auc_from_counts(positive, negative)[0])
    if metric == "log_loss":
        clipped = np.clip(p, EPSILON, 1 - EPSILON)
        return float(-np.mean(clipped * np.log(clipped) + (1 - clipped) * np.log(1 - clipped)))
    predicted = p >= 0.5
    tp, fp = p[predicted].sum(), (1 - p[predicted]).sum()
    fn, tn = p[~predicted].sum(), (1 - p[~predicted]).sum()
    numerator, denominator = {
        "accuracy": (tp + tn, p.size),
        "precision": (tp, tp + fp),
        "recall": (tp, tp + fn),
        "f1": (2 * tp, 2 * tp + fp + fn),
    }[metric]
    return float(numerator / denominator) if denominator > 0 else None


def calibration_check(
    y_true: np.ndarray,
    probabilities: np.ndarray,
    max_ece: float = 0.02,
    simulations: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """Is the model calibrated enough for `estimated_metric` to be trusted? Expected calibration error (10 equal-width
    bins, `refit_core.metrics.expected_calibration_error`) on labelled rows (the holdout at training, or the live
    labelled window), compared with the ECE that perfectly calibrated probabilities would show on as many rows
    (labels simulated from the probabilities themselves, `simulations` times): a small sample has a sizeable ECE by
    chance alone. Trustworthy when the ECE is within `max_ece` or not beyond what chance explains (p >= 0.01)."""
    y_true, p = _validated("calibration_error", y_true, probabilities)
    n = int(y_true.size)
    if n == 0:
        return {"ece": None, "n": 0, "trustworthy": False, "reason": "no labelled rows"}
    ece = expected_calibration_error(y_true, p)
    rng = np.random.default_rng(seed)
    bins = np.minimum((p * 10).astype(int), 9)
    share = np.bincount(bins, minlength=10) / n
    predicted = np.bincount(bins, p, minlength=10) / n
    null = np.empty(simulations)
    for index in range(simulations):
        observed = np.bincount(bins, (rng.random(n) < p).astype(float), minlength=10) / n
        null[index] = np.sum(np.abs(observed - predicted)[share > 0])
    p_value = float((1 + np.count_nonzero(null >= ece)) / (1 + simulations))
    trustworthy = bool(ece <= max_ece or p_value >= 0.01)
    if trustworthy:
        reason = f"ECE {ece:.3f} on {n:,} rows (chance alone: {np.quantile(null, 0.95):.3f} at 95%)"
    else:
        reason = f"ECE {ece:.3f} on {n:,} rows exceeds {max_ece:g} and chance (p = {p_value:.3f}): miscalibrated"
    return {
        "ece": ece,
        "n": n,
        "null_ece_95": float(np.quantile(null, 0.95)),
        "p_value": p_value,
        "max_ece": max_ece,
        "trustworthy": trustworthy,
        "reason": reason,
    }
