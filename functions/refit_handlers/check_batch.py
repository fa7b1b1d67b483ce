"""Check the new batch against the champion's baseline: data quality first, then drift; decide whether to train."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from itertools import chain
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit, single_metric
from pydantic import BaseModel
from refit_core.artifacts import load_model_artifact
from refit_core.batch import BatchStats
from refit_core.champion import find_champion
from refit_core.config import ModelConfig
from refit_core.datasets import DataError, iter_parts, iter_table
from refit_core.drift import detect_drift
from refit_core.profile import ProfileError, build_profile, categorical_columns, loads_profile
from refit_core.quality import check_quality
from refit_core.report import render_html
from refit_core.s3uri import S3Uri
from refit_core.steps import CheckResult, DriftSummary, QualitySummary

from refit_handlers.common import Settings, client, parse, settings

logger = Logger()
tracer = Tracer()
metrics = Metrics()
NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "Refit")


class CheckEvent(BaseModel):
    run_id: str
    data_uri: str | None = None
    force: bool = False
    no_data: bool = False
    settled_by: str | None = None


def _stop(reason: str, outcome: str) -> dict[str, Any]:
    return {"action": "stop", "outcome": outcome, "reason": reason}


def _unreadable(result: dict[str, Any], error: DataError) -> dict[str, Any]:
    finding = {
        "check": "unreadable",
        "column": None,
        "severity": "block",
        "observed": None,
        "limit": None,
        "message": str(error),
    }
    result["decision"] = {"action": "fail", "reason": str(error)}
    result["quality"] = {"passed": False, "findings": [finding], "reason": str(error)}
    return result


def first_model_quality(
    chunks: Iterator[tuple[str, Any]], model: ModelConfig, source: str
) -> tuple[dict[str, Any], list[str]]:
    """With no champion there is no baseline: check the batch against the schema of its own first chunk and the
    config, streaming the rest. Returns the verdict and the batch's columns (what the first model trains on)."""
    _, first = next(chunks)
    columns = [str(c) for c in first.columns]
    if model.target not in first.columns:
        message = f"{source}: target column {model.target!r} is missing (columns: {list(first.columns)})"
        finding = {
            "check": "missing_column",
            "column": model.target,
            "severity": "block",
            "observed": "absent",
            "limit": "present",
            "message": message,
        }
        return {"passed": False, "n_rows": len(first), "findings": [finding], "reason": message}, columns
    categorical = categorical_columns(model.categorical_columns, model.target, model.problem_type)
    profile = build_profile(first, target=model.target, categorical=categorical, id_column=model.id_column)
    stats = BatchStats.of(chain([first], (chunk for _, chunk in chunks)), profile)
    return check_quality(stats, model.quality, model.drift.min_rows, source, against_baseline=False), columns


def check_batch(event: CheckEvent, config: Settings, s3: Any, sagemaker: Any) -> CheckResult:
    """What rides in the state: the quality and drift verdicts with capped lists; the per-column drift report is at
    `report_uri`."""
    result = _check_batch(event, config, s3, sagemaker)
    quality, drift = result.get("quality"), result.get("drift")
    return CheckResult(
        **{
            **result,
            "quality": QualitySummary.of(quality) if quality else None,
            "drift": DriftSummary.of(drift) if drift else None,
        }
    )


def _check_batch(event: CheckEvent, config: Settings, s3: Any, sagemaker: Any) -> dict[str, Any]:
    """One streamed pass over the batch (memory: one chunk plus the baseline, whatever the batch's size)."""
    model = config.model
    champion = find_champion(sagemaker, config.endpoint_name)
    result: dict[str, Any] = {
        "data_uri": event.data_uri,
        "quality": None,
        "drift": None,
        "champion": champion,
        "has_champion": champion is not None,
        "champion_model_uri": champion["model_data_url"] if champion else None,
        "champion_sha256": champion.get("model_sha256") if champion else None,
        "champion_config": champion["endpoint_config"] if champion else None,
    }
    if event.no_data or not event.data_uri:
        result["decision"] = _stop(f"no batch under s3://{config.data_bucket}/{model.new_data_prefix}", "no_data")
        return result
    if event.settled_by:
        result["decision"] = _stop(event.settled_by, "already_checked")
        return result

    if champion is None or not champion.get("baseline_uri"):
        try:
            quality, columns = first_model_quality(iter_table(event.data_uri, s3), model, event.data_uri)
        except DataError as error:
            return _unreadable(result, error)
        result["quality"] = quality
        result["train_columns"] = columns
        if not quality["passed"]:
            result["decision"] = {"action": "fail", "reason": quality["reason"]}
        else:
            result["decision"] = {"action": "train", "reason": "no champion is serving yet: train the first model"}
        return result

    baseline_uri = S3Uri.parse(champion["baseline_uri"])
    try:
        profile = loads_profile(
            s3.get_object(Bucket=baseline_uri.bucket, Key=baseline_uri.key)["Body"].read(), str(baseline_uri)
        )
    except ProfileError as error:
        result["decision"] = {"action": "fail", "reason": str(error)}
        return result
    champion_model = load_model_artifact(
        s3, champion["model_data_url"], champion.get("model_sha256"), champion.get("model_package_arn")
    )
    try:
        stats = BatchStats.of(
            (part for _, part in iter_parts(event.data_uri, s3)),
            profile,
            scorer=champion_model.scores,
            score_columns=champion_model.features,
        )
    except DataError as error:
        return _unreadable(result, error)
    quality = check_quality(stats, model.quality, model.drift.min_rows, event.data_uri)
    result["quality"] = quality
    # The champion's training columns; a batch's extra columns are left out of training. In the champion's feature
    # order, whatever the batch's: a client sends headerless CSV rows in that order, and a challenger trained on a
    # reordered batch would read them shuffled once promoted.
    known = [name for name in stats.columns or [] if name in profile["columns"]]
    result["train_columns"] = [name for name in champion_model.features if name in known] + [
        name for name in known if name not in champion_model.features
    ]
    if not quality["passed"]:
        result["decision"] = {"action": "fail", "reason": quality["reason"]}
        return result
    if stats.score_error is not None:
        result["decision"] = {
            "action": "fail",
            "reason": f"{event.data_uri}: the serving model could not score the batch ({stats.score_error})",
        }
        return result

    drift = detect_drift(stats, model.drift)
    result["drift"] = drift
    report = S3Uri(config.artifact_bucket, f"reports/{model.name}/{event.run_id}/drift.json")
    s3.put_object(
        Bucket=report.bucket,
        Key=report.key,
        Body=json.dumps(drift, indent=1).encode(),
        ContentType="application/json",
    )
    result["report_uri"] = str(report)
    html_report = S3Uri(config.artifact_bucket, f"reports/{model.name}/{event.run_id}/drift.html")
    s3.put_object(
        Bucket=html_report.bucket,
        Key=html_report.key,
        ContentType="text/html; charset=utf-8",
        Body=render_html(drift, stats, f"refit {model.name}: drift of {event.data_uri}").encode(),
    )
    result["report_html_uri"] = str(html_report)
    for name, feature in drift["features"].items():
        with single_metric(
            name="FeatureDriftEffect", unit=MetricUnit.NoUnit, value=feature["effect_size"], namespace=NAMESPACE
        ) as metric:
            metric.add_dimension(name="Model", value=model.name)
            metric.add_dimension(name="Feature", value=name)
    metrics.add_metric(name="DriftDetected", unit=MetricUnit.Count, value=int(drift["drift_detected"]))
    if drift["drift_detected"]:
        drifted = drift["drifted_features"] + [
            label
            for label, part in (
                ("<target>", drift["target"]),
                ("<predictions>", drift["prediction"]),
                ("<performance>", drift["performance"]),
            )
            if (part or {}).get("drifted")
        ]
        result["decision"] = {"action": "train", "reason": f"drift in {', '.join(drifted)}"}
    elif event.force:
        result["decision"] = {"action": "train", "reason": "no drift, but the run was forced"}
    else:
        result["decision"] = _stop(
            f"no drift: no column shifted significantly (alpha {model.drift.alpha}, {model.drift.correction})",
            "no_drift",
        )
    return result


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict, context: Any) -> dict:
    config = settings()
    metrics.add_dimension(name="Model", value=config.model.name)
    result = check_batch(parse(CheckEvent, event), config, client("s3"), client("sagemaker"))
    logger.info("batch checked", extra={"decision": result.decision.model_dump() if result.decision else None})
    return result.to_state()
