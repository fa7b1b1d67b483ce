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
