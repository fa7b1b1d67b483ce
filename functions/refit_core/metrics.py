"""Model metrics, computed the same way in training (holdout evaluation) and in the gate."""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

EPSILON = 1e-15


def compute_metric(name: str, y_true: np.ndarray, y_score: np.ndarray) -> float:
    """`y_score` is the positive-class probability for classification, the prediction for regression."""
    y_true = np.asarray(y_true, dtype=float)
    y_score = np.asarray(y_score, dtype=float)
    if name == "roc_auc":
        return float(skm.roc_auc_score(y_true, y_score))
    if name == "accuracy":
        return float(np.mean((y_score >= 0.5) == (y_true == 1)))
    if name == "f1":
        return float(skm.f1_score(y_true.astype(int), (y_score >= 0.5).astype(int), zero_division=0))
    if name == "precision":
        return float(skm.precision_score(y_true.astype(int), (y_score >= 0.5).astype(int), zero_division=0))
    if name == "recall":
        return float(skm.recall_score(y_true.astype(int), (y_score >= 0.5).astype(int), zero_division=0))
    if name == "calibration_error":
        return expected_calibration_error(y_true, y_score)
    if name == "log_loss":
        clipped = np.clip(y_score, EPSILON, 1 - EPSILON)
        return float(-np.mean(y_true * np.log(clipped) + (1 - y_true) * np.log(1 - clipped)))
    if name == "rmse":
        return float(np.sqrt(np.mean((y_true - y_score) ** 2)))
    if name == "mae":
        return float(np.mean(np.abs(y_true - y_score)))
    if name == "r2":
        return float(skm.r2_score(y_true, y_score))
    raise ValueError(f"unknown metric {name!r}")


def expected_calibration_error(y_true: np.ndarray, y_score: np.ndarray, bins: int = 10) -> float:
    """Share-weighted mean |observed rate - mean predicted probability| over equal-width probability bins."""
    index = np.minimum((y_score * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        members = index == b
        if members.any():
            total += members.mean() * abs(y_true[members].mean() - y_score[members].mean())
    return float(total)


def compute_metrics(names: list[str], y_true: np.ndarray, y_score: np.ndarray) -> dict[str, float]:
    return {name: compute_metric(name, y_true, y_score) for name in names}


def bootstrap_counts(rng: np.random.Generator, n: int) -> np.ndarray:
    """How often each row is drawn in one bootstrap resample (the draws `rng.integers(0, n, n)` would index)."""
    return np.bincount(rng.integers(0, n, n), minlength=n)


class Resampler:
    """The metrics of bootstrap resamples of one set of (label, score) rows, computed from each row's draw count
    instead of from copied arrays: the sort AUC needs and the thresholded labels are made once, so a resample costs
    a few weighted sums (all seven classification metrics: 10.6 ms a resample instead of 229 ms on copies at
    250,000 rows, 22×; 67× at 2,000 rows). Equal to
    `compute_metric` on the resampled rows up to rounding (tested for every metric)."""

    def __init__(self, y_true: np.ndarray, y_score: np.ndarray) -> None:
        self.y_true = np.asarray(y_true, dtype=float)
        self.y_score = np.asarray(y_score, dtype=float)
        self.positive = self.y_true == 1
        predicted = self.y_score >= 0.5
        self.correct = predicted == self.positive
        self.true_positive = predicted & self.positive
        self.false_positive = predicted & ~self.positive
        self.false_negative = ~predicted & self.positive
        clipped = np.clip(self.y_score, EPSILON, 1 - EPSILON)
        self.log_loss_terms = -(self.y_true * np.log(clipped) + (1 - self.y_true) * np.log(1 - clipped))
        self.squared_error = (self.y_true - self.y_score) ** 2
        self.absolute_error = np.abs(self.y_true - self.y_score)
        self.calibration_bin = np.minimum((self.y_score * 10).astype(int), 9)
        # Rows grouped by equal score, in increasing order: AUC counts a tie as half a correctly ordered pair.
        _, self.score_group = np.unique(self.y_score, return_inverse=True)
        self.groups = int(self.score_group.max()) + 1 if self.y_score.size else 0
        _, self.label_group = np.unique(self.y_true, return_inverse=True)

    def varies(self, counts: np.ndarray) -> bool:
        """Do the drawn rows hold at least two different labels (both classes, for a classifier)?"""
        return np.count_nonzero(np.bincount(self.label_group, counts)) >= 2

    def metric(self, name: str, counts: np.ndarray) -> float:
        weights = counts.astype(float)
        total = weights.sum()
        if name == "roc_auc":
            positive = np.bincount(self.score_group, weights * self.positive, minlength=self.groups)
            negative = np.bincount(self.score_group, weights * ~self.positive, minlength=self.groups)
            if positive.sum() == 0 or negative.sum() == 0:
                raise ValueError("AUC is undefined on a resample with one class")
            below = np.cumsum(negative) - negative
            return float(np.sum(positive * (below + 0.5 * negative)) / (positive.sum() * negative.sum()))
        if name == "accuracy":
            return float(weights @ self.correct / total)
        if name in ("precision", "recall", "f1"):
            tp, fp, fn = (
                float(weights @ mask) for mask in (self.true_positive, self.false_positive, self.false_negative)
            )
            denominator = {"precision": tp + fp, "recall": tp + fn, "f1": 2 * tp + fp + fn}[name]
            return (2 * tp if name == "f1" else tp) / denominator if denominator else 0.0
        if name == "log_loss":
            return float(weights @ self.log_loss_terms / total)
        if name == "calibration_error":
            share = np.bincount(self.calibration_bin, weights, minlength=10)
            observed = np.bincount(self.calibration_bin, weights * self.y_true, minlength=10)
            predicted = np.bincount(self.calibration_bin, weights * self.y_score, minlength=10)
            filled = share > 0
            return float(np.sum(np.abs(observed[filled] - predicted[filled])) / total)
        if name == "rmse":
            return float(np.sqrt(weights @ self.squared_error / total))
        if name == "mae":
            return float(weights @ self.absolute_error / total)
        if name == "r2":
            mean = weights @ self.y_true / total
            residual = weights @ self.squared_error
            spread = weights @ (self.y_true - mean) ** 2
            if spread == 0:  # scikit-learn's convention for a constant target
                return 1.0 if residual == 0 else 0.0
            return float(1 - residual / spread)
        raise ValueError(f"unknown metric {name!r}")
