"""The SageMaker training job refit starts, and what a finished job cost."""

from __future__ import annotations

import json
from typing import Any

from refit_core.config import ModelConfig
from refit_core.s3uri import S3Uri

# Statuses after which SageMaker will not change the job again.
TERMINAL = {"Completed", "Failed", "Stopped"}
# A spot job that ends for lack of capacity: the caller may resubmit it on demand (SageMaker has no fallback).
CAPACITY_SECONDARY_STATUSES = {"MaxWaitTimeExceeded"}
CAPACITY_FAILURE_MARKERS = ("InsufficientCapacity", "capacity", "MaxWaitTimeExceeded")


def job_name(model: str, run_id: str, attempt: int, spot: bool) -> str:
    suffix = f"{'s' if spot else 'od'}{attempt}"
    base = f"{model}-{run_id}"[: 63 - len(suffix) - 1].rstrip("-")
    return f"{base}-{suffix}"


def hyperparameters(model: ModelConfig, run_id: str) -> dict[str, str]:
    config = {
        "target": model.target,
        "problem_type": model.problem_type,
        "metrics": model.metrics,
        "primary_metric": model.primary_metric,
        "categorical_columns": model.categorical_columns,
        "id_column": model.id_column,
        "holdout_fraction": model.holdout_fraction,
        "seed": model.seed,
        "run_id": run_id,
        "segment_columns": model.segment_columns,
        "families": model.search.families,
        "max_trials": model.search.max_trials,
        "cv_folds": model.search.cv_folds,
        "search_seconds": min(model.search.max_seconds, int(model.spot.max_runtime_seconds * 0.8)),
    }
    return {"config": json.dumps(config, sort_keys=True)}


def training_job_request(
    *,
    model: ModelConfig,
    run_id: str,
    attempt: int,
    spot: bool,
    image_uri: str,
    role_arn: str,
    batch_uri: str,
    earlier_data_uri: str | None,
    champion_model_uri: str | None,
    artifact_bucket: str,
) -> dict[str, Any]:
    """CreateTrainingJob parameters. Checkpoints are keyed by the run, not the job, so an on-demand retry resumes them."""
    artifacts = S3Uri(artifact_bucket, "")
    channels = [("current", batch_uri, "text/csv")]
    if earlier_data_uri:
        channels.append(("train", earlier_data_uri, "text/csv"))
    if champion_model_uri:
        channels.append(("champion", champion_model_uri, "application/x-gzip"))
    stopping = {"MaxRuntimeInSeconds": model.spot.max_runtime_seconds}
    if spot:
        stopping["MaxWaitTimeInSeconds"] = model.spot.effective_max_wait_seconds
    request: dict[str, Any] = {
        "TrainingJobName": job_name(model.name, run_id, attempt, spot),
        "RoleArn": role_arn,
        "AlgorithmSpecification": {
            "TrainingImage": image_uri,
            "TrainingInputMode": "File",
            "MetricDefinitions": [
                {"Name": f"holdout:{metric}", "Regex": rf"refit:holdout:{metric}=([0-9.eE+-]+)"}
                for metric in model.metrics
            ],
        },
        "HyperParameters": hyperparameters(model, run_id),
        "InputDataConfig": [
            {
                "ChannelName": name,
                "ContentType": content_type,
                "DataSource": {
                    "S3DataSource": {
                        "S3DataType": "S3Prefix",
                        "S3Uri": uri,
                        "S3DataDistributionType": "FullyReplicated",
                    }
                },
            }
            for name, uri, content_type in channels
        ],
        "OutputDataConfig": {"S3OutputPath": str(artifacts.join("training", model.name)) + "/"},
        "ResourceConfig": {
            "InstanceType": model.training_instance_type,
            "InstanceCount": 1,
            "VolumeSizeInGB": 10,
        },
        "StoppingCondition": stopping,
        "EnableManagedSpotTraining": spot,
        "CheckpointConfig": {
            "S3Uri": str(artifacts.join("checkpoints", model.name, run_id)) + "/",
            "LocalPath": "/opt/ml/checkpoints",
        },
        "RetryStrategy": {"MaximumRetryAttempts": model.spot.max_retry_attempts},
        "EnableNetworkIsolation": False,
        "EnableInterContainerTrafficEncryption": True,
        "Tags": [{"Key": "refit:model", "Value": model.name}, {"Key": "refit:run", "Value": run_id}],
    }
    return request


def summarize_job(description: dict[str, Any], price_per_hour: float, fallback_enabled: bool) -> dict[str, Any]:
    """A JSON-safe summary of DescribeTrainingJob, with the next step for the state machine."""
    status = description["TrainingJobStatus"]
    secondary = description.get("SecondaryStatus", "")
    reason = description.get("FailureReason", "")
    spot = bool(description.get("EnableManagedSpotTraining"))
    training = description.get("TrainingTimeInSeconds")
    billable = description.get("BillableTimeInSeconds")
    savings = None
    if spot and training and billable is not None:
        savings = round((1 - billable / training) * 100, 1)
    cost = round(billable / 3600 * price_per_hour, 6) if billable is not None else None
    if status not in TERMINAL:
        next_step = "wait"
    elif status == "Completed":
        next_step = "done"
    elif (
        spot
        and fallback_enabled
        and (secondary in CAPACITY_SECONDARY_STATUSES or any(marker in reason for marker in CAPACITY_FAILURE_MARKERS))
    ):
        next_step = "fallback"
    else:
        next_step = "failed"
    return {
        "job_name": description["TrainingJobName"],
        "status": status,
        "secondary_status": secondary,
        "failure_reason": reason or None,
        "spot": spot,
        "training_seconds": training,
        "billable_seconds": billable,
        "savings_percent": savings,
        "estimated_cost_usd": cost,
        "model_data_url": description.get("ModelArtifacts", {}).get("S3ModelArtifacts"),
        "output_path": description.get("OutputDataConfig", {}).get("S3OutputPath"),
        "next": next_step,
    }
