"""Model search: a few candidates from three families, judged by k-fold cross-validation on the training rows,
one fold at a time with a checkpoint after each, within a trial and time budget; then the best is refit."""

from __future__ import annotations

import hashlib
import signal
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from refit_core.datasets import stable_row_hash
from refit_core.metric_names import higher_is_better
from refit_core.metrics import compute_metric
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from refit_training.checkpoints import CheckpointStore


class Interrupted(Exception):
    """SIGTERM arrived (a spot interruption or a stop): finished folds are checkpointed; exit and resume later."""


@dataclass(frozen=True)
class Candidate:
    family: str
    params: tuple[tuple[str, Any], ...]

    @property
    def key(self) -> str:
        return f"{self.family}:" + ",".join(f"{k}={v}" for k, v in self.params)


CANDIDATES = [
    Candidate("hgb", (("learning_rate", 0.1), ("max_leaf_nodes", 31))),
    Candidate("linear", (("C", 1.0),)),
    Candidate("hgb", (("learning_rate", 0.05), ("max_leaf_nodes", 15))),
    Candidate("forest", (("max_depth", 12), ("n_estimators", 150))),
    Candidate("linear", (("C", 0.1),)),
    Candidate("hgb", (("learning_rate", 0.2), ("max_leaf_nodes", 63))),
]


def preprocessor(categorical: list[str], numeric: list[str]) -> ColumnTransformer:
    return ColumnTransformer(
        [
            ("numeric", Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())]), numeric),
            (
                "categorical",
                Pipeline(
                    [
                        ("impute", SimpleImputer(strategy="most_frequent")),
                        ("encode", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
                    ]
                ),
                categorical,
            ),
        ]
    )


def estimator(candidate: Candidate, classification: bool, seed: int) -> Any:
    """Each family's module is imported when a candidate of it is first built: a resumed job whose finished folds
    cover a family does not pay for importing it again."""
    params = dict(candidate.params)
    if candidate.family == "hgb":
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

        cls = HistGradientBoostingClassifier if classification else HistGradientBoostingRegressor
        return cls(max_iter=200, random_state=seed, **params)
    if candidate.family == "forest":
        from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

        cls = RandomForestClassifier if classification else RandomForestRegressor
        return cls(random_state=seed, n_jobs=1, **params)
    from sklearn.linear_model import LogisticRegression, Ridge

    if classification:
        return LogisticRegression(max_iter=2000, **params)
    return Ridge(alpha=1 / params["C"])


def pipeline(candidate: Candidate, config: dict[str, Any], features: pd.DataFrame) -> Pipeline:
    categorical = [
        c
        for c in features.columns
        if c in set(config["categorical_columns"]) or not pd.api.types.is_numeric_dtype(features[c])
    ]
    numeric = [c for c in features.columns if c not in categorical]
    classification = config["problem_type"] == "binary_classification"
    return Pipeline(
        [
            ("preprocess", preprocessor(categorical, numeric)),
            ("model", estimator(candidate, classification, config["seed"])),
        ]
    )


def scores_of(model: Pipeline, classification: bool, features: pd.DataFrame) -> np.ndarray:
    return model.predict_proba(features)[:, 1] if classification else model.predict(features)


def fingerprint(config: dict[str, Any], frame: pd.DataFrame) -> str:
    digest = hashlib.sha256(stable_row_hash(frame).tobytes())
    digest.update(repr(sorted((k, str(v)) for k, v in config.items() if k != "run_id")).encode())
    return digest.hexdigest()


class TermFlag:
    """Turns SIGTERM into a flag checked between folds (SageMaker allows 120 s before SIGKILL)."""

    def __init__(self) -> None:
        self.raised = False
        signal.signal(signal.SIGTERM, self._set)

    def _set(self, signum: int, frame: Any) -> None:
        self.raised = True


def search(
    config: dict[str, Any],
    training: pd.DataFrame,
    features: list[str],
    target: str,
    store: CheckpointStore,
    term: TermFlag,
) -> tuple[Pipeline, dict[str, Any]]:
    classification = config["problem_type"] == "binary_classification"
    metric = config["primary_metric"]
    folds = int(config.get("cv_folds", 3))
    budget_trials = int(config.get("max_trials", 4))
    budget_seconds = float(config.get("search_seconds", 600))
    families = set(config.get("families", ["hgb", "linear", "forest"]))
    candidates = [c for c in CANDIDATES if c.family in families][:budget_trials]
    x, y = training[features].reset_index(drop=True), training[target].reset_index(drop=True)
    splitter = (StratifiedKFold if classification else KFold)(n_splits=folds, shuffle=True, random_state=config["seed"])
    splits = list(splitter.split(x, y))
    finished = store.load()
    started = time.monotonic()
    results: dict[str, float] = {}
    for candidate in candidates:
        fold_scores = []
        for index, (train_rows, test_rows) in enumerate(splits):
            key = f"{candidate.key}#fold{index}"
            if key in finished:
                fold_scores.append(finished[key])
                continue
            if term.raised:
                store.log("interrupted", next=key)
                raise Interrupted(key)
            if time.monotonic() - started > budget_seconds:
                store.log("budget_exhausted", next=key)
                break
            model = pipeline(candidate, config, x).fit(x.iloc[train_rows], y.iloc[train_rows])
            score = compute_metric(
                metric, y.iloc[test_rows].to_numpy(dtype=float), scores_of(model, classification, x.iloc[test_rows])
            )
            store.record(key, score)
            fold_scores.append(score)
            print(f"refit:cv:{candidate.key}:fold{index}={score:.6f}", flush=True)
        if len(fold_scores) == folds:
            results[candidate.key] = float(np.mean(fold_scores))
    if not results:
        raise RuntimeError("the search budget ended before any candidate finished cross-validation")
    best_key = (max if higher_is_better(metric) else min)(results, key=results.get)
    best = next(c for c in candidates if c.key == best_key)
    model = pipeline(best, config, x).fit(x, y)
    store.log("refit_best", key=best_key)
    return model, {
        "cv_metric": metric,
        "cv_folds": folds,
        "cv_scores": results,
        "best": best_key,
        "family": best.family,
        "params": dict(best.params),
    }
