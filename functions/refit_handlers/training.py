"""Start the SageMaker training job (managed spot, checkpoints keyed by run) and poll it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from pydantic import BaseModel
from refit_core.datasets import list_s3_objects
from refit_core.lineage import prefix_identities
from refit_core.metric_names import higher_is_better
from refit_core.names import training_job_name
from refit_core.s3uri import S3Uri
from refit_core.steps import TrainingStep
from refit_core.training import (
    best_cv_score,
    check_trainable,
    choose_candidate,
    inputs_manifest_key,
    job_data_prefix,
    job_settings,
    read_training_outputs,
    settings_prefix,
    summarize_job,
    training_job_request,
)
from refit_core.window import pin_inputs, resolve_window, window_files

from refit_handlers.common import Settings, client, parse, settings

logger = Logger()
tracer = Tracer()
metrics = Metrics()


class StartEvent(BaseModel):
    run_id: str
    data_uri: str
    champion_model_uri: str | None = None
    champion_sha256: str | None = None  # the registry's digest of the champion's model.joblib (refit_core.artifacts)
    attempt: int = 1
    spot: bool = True
    family: str | None = None
    started_at: str | None = None  # the run's start: the training window's "now", the same for all its jobs
    data_etag: str | None = None  # the new batch's ETag when the run checked it
    train_columns: list[str] | None = None  # CheckBatch's: every file trained on must have them


class PollEvent(BaseModel):
    job_name: str
    attempt: int = 1
    window: dict[str, Any] | None = None  # StartTraining's window summary, carried to the audit record


class PickEvent(BaseModel):
    run_id: str
    candidates: list[dict[str, Any]]


def month_spend(dynamodb: Any, table: str, model: str, month: str) -> float:
    """Estimated training cost of this month's runs, from their audit records."""
    total = 0.0
    paginator = dynamodb.get_paginator("query")
    for page in paginator.paginate(
        TableName=table,
        KeyConditionExpression="pk = :m AND begins_with(sk, :month)",
        ExpressionAttributeValues={":m": {"S": model}, ":month": {"S": f"run#{month}"}},
        ProjectionExpression="training",
    ):
        for item in page["Items"]:
            cost = item.get("training", {}).get("M", {}).get("estimated_cost_usd", {}).get("N")
            total += float(cost) if cost else 0.0
    return total


def start_training(event: StartEvent, config: Settings, s3: Any, sagemaker: Any, dynamodb: Any) -> dict[str, Any]:
    model = config.model
    if model.monthly_training_budget_usd is not None:
        price = config.instance_prices[model.training_instance_type]
        # Parallel candidates start together and see the same spend: each checks the worst case of all of them,
        # so they are all refused or all started, and together they cannot pass the cap.
        jobs = len(model.search.families) if event.family else 1
        worst_case = jobs * model.spot.max_runtime_seconds / 3600 * price
        spent = month_spend(dynamodb, config.audit_table, model.name, datetime.now(UTC).strftime("%Y-%m"))
        if spent + worst_case > model.monthly_training_budget_usd:
            what = f"{jobs} parallel jobs" if jobs > 1 else "this job"
            return {
                "next": "refused",
                "attempt": event.attempt,
                "family": event.family,
                "reason": f"training budget: ${spent:.2f} spent this month + up to ${worst_case:.2f} for {what} "
                f"({model.spot.max_runtime_seconds} s each on {model.training_instance_type}) would pass the "
                f"${model.monthly_training_budget_usd:.2f} monthly cap",
            }
    optional = {
        channel: S3Uri(config.data_bucket, prefix)
        for channel, prefix in (
            ("validation", model.validation_data_prefix),
            ("baseline", model.baseline_data_prefix),
        )
    }
    present = {channel: uri for channel, uri in optional.items() if list_s3_objects(s3, uri)}
    spot = event.spot and model.spot.enabled
    history = S3Uri(config.data_bucket, model.training_data_prefix)
    now = datetime.fromisoformat(event.started_at) if event.started_at else datetime.now(UTC)
    resolved = resolve_window(s3, model.training_window, history, S3Uri.parse(event.data_uri), now)
    if event.train_columns:
        check_trainable(s3, [(batch.uri, batch.version_id) for _, batch in resolved.objects], event.train_columns)
    job_name = training_job_name(config.endpoint_name, event.run_id, event.attempt, spot, event.family)
    pinned = S3Uri(config.artifact_bucket, job_data_prefix(model.name, event.run_id, job_name))
    window_inputs = pin_inputs(s3, resolved, pinned, history, event.data_etag)
    request = training_job_request(
        model=model,
        name_prefix=config.endpoint_name,  # the endpoint is named by the model's prefix (refit_core.names)
        run_id=event.run_id,
        attempt=event.attempt,
        spot=spot,
        image_uri=config.image_uri,
        role_arn=config.sagemaker_role_arn,
        batch_uri=str(pinned.join("current")) + "/",
        earlier_data_uri=str(pinned.join("train")) + "/" if resolved.kept else None,
        champion_model_uri=event.champion_model_uri,
        artifact_bucket=config.artifact_bucket,
        kms_key_arn=config.kms_key_arn,
        vpc_config=config.vpc_config,
        family=event.family,
        validation_data_uri=str(present["validation"]) if "validation" in present else None,
        baseline_data_uri=str(present["baseline"]) if "baseline" in present else None,
    )
    inputs = window_inputs + [
        {**identity, "channel": channel} for channel, uri in present.items() for identity in prefix_identities(s3, uri)
    ]
    job_config = json.dumps(
        {
            **job_settings(model, event.run_id, event.family, window_files(window_inputs, pinned)),
            "columns": event.train_columns,
            "champion_sha256": event.champion_sha256,
        },
        sort_keys=True,
    )
    config_object = S3Uri(config.artifact_bucket, settings_prefix(model.name, event.run_id, request["TrainingJobName"]))
    s3.put_object(
        Bucket=config_object.bucket,
        Key=config_object.join("config.json").key,
        ContentType="application/json",
        Body=job_config.encode(),
    )
    manifest = S3Uri(config.artifact_bucket, inputs_manifest_key(model.name, event.run_id, request["TrainingJobName"]))
    window = {**resolved.summary(), "inputs_manifest_uri": str(manifest)}
    s3.put_object(
        Bucket=manifest.bucket,
        Key=manifest.key,
        ContentType="application/json",
        Body=json.dumps(
            {
                "inputs": inputs,
                "window": {**window, "now": now.isoformat()},
                "hyperparameters": {"config": job_config},
                "image_uri": config.image_uri,
            },
            indent=1,
        ).encode(),
    )
    sagemaker.create_training_job(**request)
    logger.info("training job started", extra={"job": request["TrainingJobName"], "spot": spot})
    return {
        "job_name": request["TrainingJobName"],
        "attempt": event.attempt,
        "spot": spot,
        "family": event.family,
        "window": window,
        "next": "wait",
    }


def poll_training(event: PollEvent, config: Settings, sagemaker: Any) -> dict[str, Any]:
    description = sagemaker.describe_training_job(TrainingJobName=event.job_name)
    price = config.instance_prices[config.model.training_instance_type]
    summary = summarize_job(description, price, config.model.spot.fallback_to_on_demand)
    summary["attempts"] = event.attempt
    summary["attempt"] = event.attempt
    summary["window"] = event.window
    return summary


def pick_candidate(event: PickEvent, config: Settings, s3: Any) -> dict[str, Any]:
    """After parallel candidates: the job whose chosen model has the best cross-validated score goes to the gate."""
    summaries, scores = [], {}
    for item in event.candidates:
        summary = {**(item.get("training") or {}), "family": item.get("family")}
        if item.get("error"):  # a Lambda in this candidate's branch failed: the others still count
            error = item["error"]
            summary.update(
                next="failed", status="Failed", failure_reason=f"{error.get('Error')}: {error.get('Cause')}"[:500]
            )
        if summary.get("next") == "done":
            evaluation = json.loads(
                read_training_outputs(s3, summary["output_path"], summary["job_name"])["evaluation.json"]
            )
            scores[summary["job_name"]] = best_cv_score(evaluation)
        summaries.append(summary)
    chosen = choose_candidate(summaries, scores, higher_is_better(config.model.primary_metric))
    logger.info("candidate chosen", extra={"chosen": chosen.get("chosen"), "candidates": chosen["candidates"]})
    return chosen


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def start_handler(event: dict, context: Any) -> dict:
    config = settings()
    started = start_training(parse(StartEvent, event), config, client("s3"), client("sagemaker"), client("dynamodb"))
    return TrainingStep(**started).to_state()


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def poll_handler(event: dict, context: Any) -> dict:
    config = settings()
    summary = poll_training(parse(PollEvent, event), config, client("sagemaker"))
    if summary["next"] in ("done", "failed", "fallback"):
        metrics.add_dimension(name="Model", value=config.model.name)
        if summary["billable_seconds"] is not None:
            metrics.add_metric(
                name="TrainingBillableSeconds", unit=MetricUnit.Seconds, value=summary["billable_seconds"]
            )
        if summary["estimated_cost_usd"] is not None:
            metrics.add_metric(name="TrainingCostUSD", unit=MetricUnit.NoUnit, value=summary["estimated_cost_usd"])
        logger.info("training job finished", extra={"summary": summary})
    return TrainingStep(**summary).to_state()


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def pick_handler(event: dict, context: Any) -> dict:
    config = settings()
    return TrainingStep(**pick_candidate(parse(PickEvent, event), config, client("s3"))).to_state()
