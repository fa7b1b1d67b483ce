"""`train`: SageMaker training entrypoint.

Channels: `current` (the new batch), `train` (earlier accepted data, optional), `validation` (a fixed holdout,
optional: without it, a deterministic part of the current batch is the holdout), `baseline` (reference data for the
drift baseline, optional: without it, the current batch), `champion` (the serving model's model.tar.gz, optional).
Both models are judged on the same holdout rows.
Writes /opt/ml/model (model.joblib, baseline.json, evaluation.json) and /opt/ml/output/data
(evaluation.json, holdout_predictions.csv). Any error: a reason in /opt/ml/output/failure, exit 1.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
from refit_core.artifacts import METADATA_FILE, MODEL_FILE, ModelArtifact
from refit_core.datasets import DataError, iter_table, read_table, stable_row_hash
from refit_core.metrics import Resampler, bootstrap_counts, compute_metrics
from refit_core.profile import build_profile, categorical_columns, dumps_profile, numeric_summary
from refit_core.synthetic import HOLDOUT_ROWS_FILE, replay_lines

from refit_training.checkpoints import CheckpointStore
from refit_training.paths import OptMl
from refit_training.search import Interrupted, TermFlag, fingerprint, search

EXIT_INTERRUPTED = 143  # 128 + SIGTERM: what SageMaker and the local runtime read as "stopped, resume later"


class TrainingError(RuntimeError):
    """A reason the job cannot produce a model; written to /opt/ml/output/failure."""


def load_settings(opt: OptMl) -> dict[str, Any]:
    """The job's settings come as the `config` channel's config.json, not as a hyperparameter: SageMaker caps a
    hyperparameter value at 2,500 characters, which a model with many columns passes."""
    try:
        settings = json.loads(opt.settings.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise TrainingError(
            f"{opt.settings}: the 'config' channel must hold the job's JSON settings ({error})"
        ) from None
    if not isinstance(settings, dict):
        raise TrainingError(f"{opt.settings}: the job's settings must be a JSON object")
    return settings


def _read_channel(opt: OptMl, name: str, columns: list[str] | None = None) -> pd.DataFrame | None:
    """A channel's files (sub-folders included), aligned by column name to `columns` (the job's), extras left out."""
    folder = opt.channel(name)
    if not folder.is_dir() or not any(folder.iterdir()):
        return None
    try:
        return read_table(str(folder), columns=columns)
    except DataError as error:
        raise TrainingError(f"the {name!r} channel: {error}") from None


WEIGHT = "__refit_sample_weight__"  # rides along with the rows until training; never a feature
NEW_BATCH = "__refit_new_batch__"  # which rows came from the run's own batch (the search scores candidates on them)


def _read_weighted(opt: OptMl, name: str, config: dict[str, Any]) -> tuple[pd.DataFrame | None, dict[str, int]]:
    """A channel's rows with each row's recency weight in WEIGHT (from the job's window settings: the weight of the
    file it came from, 1 for a file the settings do not list), and the rows read from each file."""
    folder = opt.channel(name)
    if not folder.is_dir() or not any(folder.iterdir()):
        return None, {}
    files = config.get("window", {}).get("files", {})
    frames, rows = [], {}
    try:
        for path, frame in iter_table(str(folder), chunk_rows=None, columns=config.get("columns")):
            relative = f"{name}/{Path(path).relative_to(folder).as_posix()}"
            rows[relative] = int(len(frame))
            frames.append(frame.assign(**{WEIGHT: float(files.get(relative, {}).get("weight", 1.0))}))
    except DataError as error:
        raise TrainingError(f"the {name!r} channel: {error}") from None
    return (pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]), rows


def _same_columns(channel: str, frame: pd.DataFrame, current: pd.DataFrame) -> None:
    missing = [c for c in current.columns if c not in frame.columns]
    if missing:
        raise TrainingError(f"the {channel!r} channel lacks columns the current batch has: {', '.join(missing)}")


def _drop_rows_in(frame: pd.DataFrame, other: pd.DataFrame, columns: list[str], what: str) -> pd.DataFrame:
    """`frame` without the rows that equal a row of `other` on `columns` (the current batch's columns). A column read
    with different types from two files (integers here, floats there) is compared as numbers, or else as text."""
    if not set(columns) <= set(frame.columns):
        return frame
    left, right = frame[columns].copy(), other[columns].copy()
    for column in columns:
        if left[column].dtype != right[column].dtype:
            numeric = pd.api.types.is_numeric_dtype(left[column]) and pd.api.types.is_numeric_dtype(right[column])
            left[column], right[column] = (
                (left[column].astype(float), right[column].astype(float))
                if numeric
                else (
                    left[column].astype(str),
                    right[column].astype(str),
                )
            )
    seen = np.isin(stable_row_hash(left), stable_row_hash(right))
    if seen.any():
        print(f"refit: dropped {int(seen.sum())} {what}", flush=True)
    return frame[~seen]


def split_holdout(frame: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Deterministic by row content: the same batch always yields the same holdout rows."""
    hashes = stable_row_hash(frame) ^ np.uint64(seed)
    position = (hashes % np.uint64(1_000_000)).astype(float) / 1_000_000
    holdout = position < fraction
    return frame[~holdout], frame[holdout]


def feature_columns(config: dict[str, Any], frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in (config["target"], config.get("id_column"))]


def load_champion(opt: OptMl, scratch: Path, expected_sha256: str | None) -> ModelArtifact | None:
    """The champion from its channel, its model file checked against the registry's digest before it is loaded."""
    folder = opt.channel("champion")
    archives = sorted(folder.glob("*.tar.gz")) if folder.is_dir() else []
    return ModelArtifact.from_archive(archives[0], scratch, expected_sha256) if archives else None


def bootstrap_intervals(
    names: list[str], y_true: np.ndarray, scores: np.ndarray, seed: int, samples: int = 200
) -> dict[str, list[float]]:
    """95% percentile bootstrap interval of each holdout metric."""
    rng = np.random.default_rng(seed)
    resampler = Resampler(y_true, scores)
    draws: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(samples):
        counts = bootstrap_counts(rng, y_true.size)
        if not resampler.varies(counts):
            continue
        for name in names:
            draws[name].append(resampler.metric(name, counts))
    return {name: [float(np.quantile(v, 0.025)), float(np.quantile(v, 0.975))] for name, v in draws.items() if v}


def run(opt: OptMl, term: TermFlag | None = None) -> dict[str, Any]:
    term = term or TermFlag()
    started = time.monotonic()
    config = load_settings(opt)
    target = config["target"]
    current, rows_read = _read_weighted(opt, "current", config)
    if current is None:
        raise TrainingError("the 'current' channel is empty: there is no batch to train and judge on")
    if target not in current.columns:
        raise TrainingError(f"target column {target!r} is missing from the current batch")
    earlier, earlier_rows = _read_weighted(opt, "train", config)
    rows_read.update(earlier_rows)
    weights_of_current = current.pop(WEIGHT)
    if earlier is not None:
        earlier_weights = earlier.pop(WEIGHT)
    validation = _read_channel(opt, "validation", config.get("columns"))
    if validation is not None:
        _same_columns("validation", validation, current)
        current_train, holdout = current, validation
    else:
        current_train, holdout = split_holdout(current, config["holdout_fraction"], config["seed"])
    reference = _read_channel(opt, "baseline", config.get("columns"))  # read first: a bad one fails at once
    if reference is not None:
        _same_columns("baseline", reference, current)
    else:
        reference = current
    columns = list(current.columns)
    if earlier is not None:
        # A batch re-run by hand may already be in the accepted training data: its rows must not leak into the
        # holdout both models are judged on.
        earlier = _drop_rows_in(earlier, current, columns, "earlier rows that are in the current batch")
    if validation is not None:
        current_train = _drop_rows_in(current_train, holdout, columns, "current rows that are in the validation set")
        if earlier is not None:
            earlier = _drop_rows_in(earlier, holdout, columns, "earlier rows that are in the validation set")
    current_train = current_train.assign(**{WEIGHT: weights_of_current.loc[current_train.index]})
    if earlier is not None:
        earlier = earlier.assign(**{WEIGHT: earlier_weights.loc[earlier.index]})
    current_train = current_train.assign(**{NEW_BATCH: True})
    if earlier is not None:
        earlier = earlier.assign(**{NEW_BATCH: False})
    training = pd.concat([earlier, current_train], ignore_index=True) if earlier is not None else current_train
    training = training.dropna(subset=[target]).reset_index(drop=True)
    new_batch_rows = training.pop(NEW_BATCH).to_numpy(dtype=bool)
    sample_weight = training.pop(WEIGHT).to_numpy(dtype=float)
    weighted = bool(config.get("window", {}).get("half_life_days"))
    holdout = holdout.dropna(subset=[target])
    if len(training) < 20 or len(holdout) < 20:
        raise TrainingError(f"too little labelled data: {len(training)} training rows, {len(holdout)} holdout rows")
    if config["problem_type"] == "binary_classification" and training[target].nunique() < 2:
        raise TrainingError(f"target {target!r} has a single class in the training data")
    if config["problem_type"] == "binary_classification" and holdout[target].nunique() < 2:
        raise TrainingError(
            f"the holdout rows of {'the validation channel' if validation is not None else 'the current batch'} "
            f"have a single class ({holdout[target].iloc[0]} only): "
            "AUC and the champion/challenger comparison are undefined on them"
        )

    features = feature_columns(config, training)
    print(
        f"refit: training on {len(training)} rows, {len(features)} features; holdout {len(holdout)} rows",
        flush=True,
    )
    store = CheckpointStore(opt.checkpoints, fingerprint(config, training))
    model, search_summary = search(
        config,
        training,
        features,
        target,
        store,
        term,
        sample_weight=sample_weight if weighted else None,
        scored_rows=new_batch_rows if earlier is not None else None,
    )
    y_true = holdout[target].to_numpy(dtype=float)
    trained = ModelArtifact(model, features, config["problem_type"], {})
    challenger_scores = trained.scores(holdout)
    metrics = compute_metrics(config["metrics"], y_true, challenger_scores)
    for name, value in metrics.items():
        print(f"refit:holdout:{name}={value:.6f}", flush=True)
    intervals = bootstrap_intervals(config["metrics"], y_true, challenger_scores, config["seed"])

    predictions = pd.DataFrame(
        {"row_id": stable_row_hash(holdout).astype(str), "label": y_true, "challenger": challenger_scores}
    )
    for column in config.get("segment_columns", []):
        if column not in holdout.columns:
            raise TrainingError(f"guard segment column {column!r} is not in the current batch")
        predictions[f"segment:{column}"] = holdout[column].astype(str).to_numpy()
    evaluation: dict[str, Any] = {
        "format": "refit.evaluation/1",
        "problem_type": config["problem_type"],
        "metrics": {"challenger": metrics, "champion": None},
        "intervals": {"challenger": intervals, "champion": None},
        "search": search_summary,
        "n_train": int(len(training)),
        "n_holdout": int(len(holdout)),
        "features": features,
        "champion_version": None,
        # What the job read: rows per file of its `current` and `train` channels, and whether rows were weighted.
        "inputs": {
            "rows": rows_read,
            "window": config.get("window", {}).get("description"),
            "half_life_days": config.get("window", {}).get("half_life_days"),
            "weighted": weighted,
            "sum_of_weights": round(float(sample_weight.sum()), 6) if weighted else None,
        },
    }
    with tempfile.TemporaryDirectory() as scratch:
        champion = load_champion(opt, Path(scratch), config.get("champion_sha256"))
        if champion is not None:
            champion_scores = champion.scores(holdout)
            predictions["champion"] = champion_scores
            evaluation["metrics"]["champion"] = compute_metrics(config["metrics"], y_true, champion_scores)
            evaluation["intervals"]["champion"] = bootstrap_intervals(
                config["metrics"], y_true, champion_scores, config["seed"]
            )
            evaluation["champion_version"] = champion.metadata.get("trained_at_run")

    opt.model.mkdir(parents=True, exist_ok=True)
    opt.output_data.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, opt.model / MODEL_FILE)
    metadata = {
        "features": features,
        "problem_type": config["problem_type"],
        "target": target,
        "trained_at_run": config.get("run_id"),
    }
    (opt.model / METADATA_FILE).write_text(json.dumps(metadata, sort_keys=True))
    # The drift reference, unless a baseline channel names one, is the newest data the model was trained and judged
    # on (the whole current batch): later batches are compared with what the serving model was last shown to handle.
    categorical = categorical_columns(config["categorical_columns"], target, config["problem_type"])
    profile = build_profile(reference, target=target, categorical=categorical, id_column=config.get("id_column"))
    # What the model's outputs and its primary metric looked like on its holdout: the reference for prediction drift
    # and for the performance-drop test on later labelled batches.
    profile["prediction"] = numeric_summary(pd.Series(challenger_scores))
    profile["holdout"] = {
        "metric": config["primary_metric"],
        "value": metrics[config["primary_metric"]],
        "rows": int(len(holdout)),
    }
    (opt.model / "baseline.json").write_text(dumps_profile(profile))
    evaluation["training_seconds"] = round(time.monotonic() - started, 3)
    for folder in (opt.model, opt.output_data):
        (folder / "evaluation.json").write_text(json.dumps(evaluation, sort_keys=True, indent=1))
    predictions.to_csv(opt.output_data / "holdout_predictions.csv", index=False)
    if config.get("replay_rows"):  # deploy.synthetic_traffic: rows to replay to a quiet canary (refit_core.synthetic)
        (opt.output_data / HOLDOUT_ROWS_FILE).write_text(
            replay_lines(holdout, [target, config.get("id_column") or target], config["replay_rows"], config["seed"])
        )
    (opt.output_data / "baseline.json").write_text(dumps_profile(profile))
    print(f"refit: done in {evaluation['training_seconds']} s", flush=True)
    return evaluation


def main() -> int:
    opt = OptMl.from_env()
    term = TermFlag()
    try:
        run(opt, term)
        return 0
    except Interrupted as interrupted:
        print(f"refit: stopped by SIGTERM before {interrupted}; finished folds are checkpointed", flush=True)
        return EXIT_INTERRUPTED
    except Exception as error:  # every failure must leave a reason for DescribeTrainingJob
        reason = str(error) if isinstance(error, TrainingError) else f"{type(error).__name__}: {error}"
        traceback.print_exc()
        opt.failure.parent.mkdir(parents=True, exist_ok=True)
        opt.failure.write_text(reason[:1000])
        print(f"refit: training failed: {reason}", file=sys.stderr, flush=True)
        return 1
