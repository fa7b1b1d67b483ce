"""Model search: a seeded random search over three families, each candidate judged by k-fold cross-validation on the
training rows, one fold at a time with a checkpoint after each, within a trial and time budget; then the best is
refit on all training rows."""

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


# Each family's first candidate: settings that are good on most tabular data.
DEFAULTS: dict[str, dict[str, Any]] = {
    "hgb": {"learning_rate": 0.1, "max_leaf_nodes": 31, "min_samples_leaf": 20, "l2_regularization": 0.0},
    "linear": {"C": 1.0},
    "forest": {"max_depth": 12, "n_estimators": 150, "min_samples_leaf": 1, "max_features": "sqrt"},
}
# Where later candidates are drawn from: a (low, high) float pair is log-uniform, a list is a uniform choice.
SPACE: dict[str, dict[str, tuple[float, float] | list[Any]]] = {
    "hgb": {
        "learning_rate": (0.02, 0.3),
        "max_leaf_nodes": [15, 31, 63],
        "min_samples_leaf": [10, 20, 50],
        "l2_regularization": [0.0, 0.1, 1.0],
    },
    "linear": {"C": (0.001, 10.0)},
    "forest": {
        "max_depth": [8, 12, 16, None],
        "n_estimators": [100, 150, 250],
        "min_samples_leaf": [1, 3, 10],
        "max_features": ["sqrt", 0.5],
    },
}
FAMILY_ORDER = ("hgb", "linear", "forest")


def _draw(rng: np.random.Generator, space: dict[str, tuple[float, float] | list[Any]]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for name, domain in space.items():
        if isinstance(domain, tuple):
            low, high = np.log(domain[0]), np.log(domain[1])
            params[name] = float(f"{np.exp(rng.uniform(low, high)):.3g}")  # 3 digits: keys stay readable
        else:
            params[name] = domain[int(rng.integers(len(domain)))]
    return params


def candidates(families: list[str], trials: int, seed: int) -> list[Candidate]:
    """The first `trials` candidates of a seeded random search, taken from the families in turn: each family's
    defaults first, then draws from its space. Round robin, so a budget of as many trials as families tries every
    family once. Each family draws from its own stream (seeded by the run's seed and the family), so the
    candidates of one family do not depend on which others are searched, and a resumed job rebuilds the same list
    (their keys name the checkpointed folds). A family whose space runs out of new settings stops contributing."""
    chosen = [f for f in FAMILY_ORDER if f in set(families)]
    queues: dict[str, list[Candidate]] = {}
    for family in chosen:
        rng = np.random.default_rng([seed, FAMILY_ORDER.index(family)])
        seen: set[Candidate] = set()
        queue: list[Candidate] = []
        for params in [DEFAULTS[family]] + [_draw(rng, SPACE[family]) for _ in range(4 * trials)]:
            candidate = Candidate(family, tuple(sorted(params.items())))
            if candidate not in seen:
                seen.add(candidate)
                queue.append(candidate)
        queues[family] = queue[:trials]
    ordered: list[Candidate] = []
    for position in range(trials):
        ordered.extend(queues[family][position] for family in chosen if position < len(queues[family]))
    return ordered[:trials]


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


# Families fitted in blocks with warm_start, by the parameter that counts their stages (or trees).
BLOCK_PARAMETER = {"hgb": "max_iter", "forest": "n_estimators"}
FIRST_BLOCK = 25  # stages fitted before the fold's speed is known
BLOCK_SECONDS = 30.0  # later blocks are sized to end this long after they start, well inside the 120 s grace


def fit_fold(
    candidate: Candidate,
    config: dict[str, Any],
    x_train: pd.DataFrame,
    y_train: pd.Series,
    store: CheckpointStore,
    key: str,
    term: TermFlag,
    sample_weight: np.ndarray | None = None,
) -> Pipeline:
    """Fit one fold's pipeline. Boosting stages (hgb) and trees (forest) are added with warm_start in blocks sized
    to take about BLOCK_SECONDS each: a SIGTERM in the middle of a long fold saves what is fitted and exits within
    SageMaker's 120 s grace, and the restart continues from it. A fold that will take less than a block is fitted in
    two calls (25 stages, then the rest), so short jobs pay almost nothing for this. scikit-learn's warm start adds
    the stages and trees a single fit would, so the model is the one an uninterrupted run fits (tested).
    `sample_weight` (recency weights, one per row) goes to the estimator's fit; every family accepts it."""
    model = pipeline(candidate, config, x_train)
    weights = {} if sample_weight is None else {"sample_weight": sample_weight}
    if candidate.family not in BLOCK_PARAMETER:
        return model.fit(x_train, y_train, **{f"model__{k}": v for k, v in weights.items()})
    parameter = BLOCK_PARAMETER[candidate.family]
    total = model.named_steps["model"].get_params()[parameter]
    saved = store.load_partial(key)
    if saved is not None:
        model, done = saved
        features = model.named_steps["preprocess"].transform(x_train)
    else:
        features, done = model.named_steps["preprocess"].fit_transform(x_train), 0
    estimator = model.named_steps["model"]
    estimator.set_params(warm_start=True)
    seconds_per_stage: float | None = None
    while done < total:
        step = FIRST_BLOCK if seconds_per_stage is None else max(1, int(BLOCK_SECONDS / seconds_per_stage))
        before, started = done, time.monotonic()
        done = min(total, done + step)
        estimator.set_params(**{parameter: done})
        estimator.fit(features, y_train, **weights)
        seconds_per_stage = max(time.monotonic() - started, 1e-6) / (done - before)
        if getattr(estimator, "n_iter_", done) < done:  # boosting stopped early: a single fit stops here too
            break
        if done < total and term.raised:
            store.save_partial(key, model, done)
            raise Interrupted(key)
    estimator.set_params(warm_start=False, **{parameter: total})
    return model


def scores_of(model: Pipeline, classification: bool, features: pd.DataFrame) -> np.ndarray:
    return model.predict_proba(features)[:, 1] if classification else model.predict(features)


def fingerprint(config: dict[str, Any], frame: pd.DataFrame) -> str:
    digest = hashlib.sha256(stable_row_hash(frame).tobytes())
    digest.update(repr(sorted((k, str(v)) for k, v in config.items() if k != "run_id")).encode())
    return digest.hexdigest()


class TermFlag:
    """Turns SIGTERM into a flag checked between folds and between blocks of boosting stages or trees (SageMaker
    allows 120 s before SIGKILL)."""

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
    sample_weight: np.ndarray | None = None,
    scored_rows: np.ndarray | None = None,
) -> tuple[Pipeline, dict[str, Any]]:
    """Cross-validate the candidates and refit the best on all rows. With `sample_weight` (recency weights) every
    fit is weighted, the cross-validation folds' included (each fold fits with its rows' weights); fold scores are
    unweighted, as the gate's holdout score is. With `scored_rows` (a boolean mask: the new batch's rows) each fold
    trains on all its rows but is scored on those only: a candidate is chosen for the data it will serve, not for
    the history that outnumbers it (after a concept change the history's favourite is often the wrong model)."""
    classification = config["problem_type"] == "binary_classification"
    metric = config["primary_metric"]
    folds = int(config.get("cv_folds", 3))
    budget_trials = int(config.get("max_trials", 4))
    budget_seconds = float(config.get("search_seconds", 600))
    families = list(config.get("families", FAMILY_ORDER))
    trials = candidates(families, budget_trials, int(config["seed"]))
    x, y = training[features].reset_index(drop=True), training[target].reset_index(drop=True)
    splitter = (StratifiedKFold if classification else KFold)(n_splits=folds, shuffle=True, random_state=config["seed"])
    if scored_rows is not None:
        scored_rows = np.asarray(scored_rows, dtype=bool)
        # Stratify on (label, scored) so each fold's scored rows hold both classes; fall back to all rows when too few.
        strata = y.astype(str) + "|" + pd.Series(scored_rows).astype(str) if classification else None
        if scored_rows.sum() < 10 * folds or (classification and y[scored_rows].nunique() < 2):
            scored_rows = None
    splits = list(splitter.split(x, strata if scored_rows is not None and classification else y))
    finished = store.load()
    started = time.monotonic()
    results: dict[str, float] = {}
    for candidate in trials:
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
            fold_weight = None if sample_weight is None else sample_weight[train_rows]
            model = fit_fold(candidate, config, x.iloc[train_rows], y.iloc[train_rows], store, key, term, fold_weight)
            scored = test_rows if scored_rows is None else test_rows[scored_rows[test_rows]]
            score = compute_metric(
                metric, y.iloc[scored].to_numpy(dtype=float), scores_of(model, classification, x.iloc[scored])
            )
            store.record(key, score)
            store.clear_partial()
            fold_scores.append(score)
            print(f"refit:cv:{candidate.key}:fold{index}={score:.6f}", flush=True)
        if len(fold_scores) == folds:
            results[candidate.key] = float(np.mean(fold_scores))
    if not results:
        raise RuntimeError("the search budget ended before any candidate finished cross-validation")
    best_key = (max if higher_is_better(metric) else min)(results, key=results.get)
    best = next(c for c in trials if c.key == best_key)
    model = fit_fold(best, config, x, y, store, f"refit:{best_key}", term, sample_weight)
    store.clear_partial()
    store.log("refit_best", key=best_key)
    return model, {
        "cv_metric": metric,
        "cv_folds": folds,
        "cv_scores": results,
        "best": best_key,
        "family": best.family,
        "params": dict(best.params),
        "weighted": sample_weight is not None,
        "scored_on": "all rows" if scored_rows is None else f"the new batch's {int(scored_rows.sum())} rows",
    }
