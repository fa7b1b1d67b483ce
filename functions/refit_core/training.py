"""The SageMaker training job refit starts, and what a finished job cost."""

from __future__ import annotations

import io
import tarfile
from typing import Any

from refit_core.config import ModelConfig
from refit_core.datasets import DataError, object_columns
from refit_core.names import training_job_name
from refit_core.network import isolated
from refit_core.s3uri import S3Uri

OUTPUT_FILES = ("evaluation.json", "holdout_predictions.csv", "baseline.json")
# Written only when the job was asked for them (`replay_rows`): the holdout rows synthetic traffic replays.
OPTIONAL_OUTPUT_FILES = ("holdout_rows.jsonl",)


class TrainingOutputError(ValueError):
    """A finished job whose output cannot be used; the message names the object and what is missing."""


class TrainingInputError(ValueError):
    """Data a job would train on that cannot train with the rest; the message names the file and the column."""


def check_trainable(s3: Any, objects: list[tuple[S3Uri, str | None]], columns: list[str]) -> None:
    """Before anything is spent: every file a job would read (URI, version) has the columns it trains on, from each
    file's header or footer alone. A file kept before refit checked schemas (or put under `training/` by hand) that
    lacks one fails the run here, naming the file, instead of failing a paid training job."""
    for uri, version_id in objects:
        try:
            found = object_columns(s3, uri, version_id)
        except DataError as error:
            raise TrainingInputError(f"{error}; it would be trained on, so nothing was started") from None
        missing = [column for column in columns if column not in found]
        if missing:
            raise TrainingInputError(
                f"{uri}: cannot train with the new batch: missing column(s) {missing} (it has {found}); nothing was "
                "started. Fix or remove the file, or narrow the training window."
            )


# Statuses after which SageMaker will not change the job again.
TERMINAL = {"Completed", "Failed", "Stopped"}
# A spot job that ends for lack of capacity: the caller may resubmit it on demand (SageMaker has no fallback).
CAPACITY_SECONDARY_STATUSES = {"MaxWaitTimeExceeded"}
CAPACITY_FAILURE_MARKERS = ("InsufficientCapacity", "capacity", "MaxWaitTimeExceeded")


def inputs_manifest_key(model: str, run_id: str, job_name: str) -> str:
    """Where the job's inputs (object versions, hyperparameters, image) are recorded for its lineage: one file per
    job, because parallel candidates and on-demand fallbacks of one run train on their own settings."""
    return f"reports/{model}/{run_id}/inputs/{job_name}.json"


def job_data_prefix(model: str, run_id: str, job_name: str) -> str:
    """Where StartTraining pins the objects a job trains on (copies of the resolved versions, `current/` and
    `train/`), read by the job's `current` and `train` channels; expired by a lifecycle rule (the inputs manifest
    and lineage name the source versions, which stay in the data bucket)."""
    return f"job-data/{model}/{run_id}/{job_name}/"


def settings_prefix(model: str, run_id: str, job_name: str) -> str:
    """Where the job's settings (config.json) are written: the job's `config` input channel."""
    return f"reports/{model}/{run_id}/inputs/{job_name}/"


def job_settings(
    model: ModelConfig,
    run_id: str,
    family: str | None = None,
    window_files: dict[str, dict[str, float]] | None = None,
) -> dict[str, Any]:
    """What `train` is told, as config.json in the job's `config` channel. A file has no size cap; a hyperparameter
    value has (2,500 characters), which about 86 categorical column names pass. With `family` (parallel candidates)
    the job searches that family alone. `window_files` (refit_core.window.window_files): each pinned file's age and
    recency weight, by its path in the channels (`current/<name>`, `train/<name>`)."""
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
        # Holdout rows kept for synthetic traffic (refit_core.synthetic); 0 when it is off.
        "replay_rows": model.deploy.synthetic_traffic.replay_rows,
        "families": [family] if family else model.search.families,
        "max_trials": model.search.max_trials,
        "cv_folds": model.search.cv_folds,
        "search_seconds": min(model.search.max_seconds, int(model.spot.max_runtime_seconds * 0.8)),
        "window": {
            "description": model.training_window.describe(),
            "half_life_days": model.training_window.half_life_days or None,
            "files": window_files or {},
        },
    }
    return config


def training_job_request(
    *,
    model: ModelConfig,
    name_prefix: str,
    run_id: str,
    attempt: int,
    spot: bool,
    image_uri: str,
    role_arn: str,
    batch_uri: str,
    earlier_data_uri: str | None,
    champion_model_uri: str | None,
    artifact_bucket: str,
    kms_key_arn: str,
    vpc_config: dict[str, list[str]] | None = None,
    family: str | None = None,
    validation_data_uri: str | None = None,
    baseline_data_uri: str | None = None,
) -> dict[str, Any]:
    """CreateTrainingJob parameters. `name_prefix` is the model's `{project}-{model}` (refit_core.names). The job's
    settings (`job_settings`) are read from its `config` channel: the caller writes them to `settings_prefix` first.
    Checkpoints are keyed by the run (and the family, for parallel candidates), not the job, so an on-demand retry
    resumes them. The job is network-isolated, in `vpc_config` when given, and its volume and output are encrypted
    with the project key `kms_key_arn` (refit_core.network)."""
    artifacts = S3Uri(artifact_bucket, "")
    job = training_job_name(name_prefix, run_id, attempt, spot, family)
    channels = [
        ("config", str(artifacts.join(settings_prefix(model.name, run_id, job))) + "/", "application/json"),
        ("current", batch_uri, "text/csv"),
    ]
    if earlier_data_uri:
        channels.append(("train", earlier_data_uri, "text/csv"))
    if validation_data_uri:
        channels.append(("validation", validation_data_uri, "text/csv"))
    if baseline_data_uri:
        channels.append(("baseline", baseline_data_uri, "text/csv"))
    if champion_model_uri:
        channels.append(("champion", champion_model_uri, "application/x-gzip"))
    stopping = {"MaxRuntimeInSeconds": model.spot.max_runtime_seconds}
    if spot:
        stopping["MaxWaitTimeInSeconds"] = model.spot.effective_max_wait_seconds
    request: dict[str, Any] = {
        "TrainingJobName": job,
        "RoleArn": role_arn,
        "AlgorithmSpecification": {
            "TrainingImage": image_uri,
            "TrainingInputMode": "File",
            "MetricDefinitions": [
                {"Name": f"holdout:{metric}", "Regex": rf"refit:holdout:{metric}=([0-9.eE+-]+)"}
                for metric in model.metrics
            ],
        },
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
        "OutputDataConfig": {
            "S3OutputPath": str(artifacts.join("training", model.name)) + "/",
            "KmsKeyId": kms_key_arn,
        },
        "ResourceConfig": {
            "InstanceType": model.training_instance_type,
            "InstanceCount": 1,
            "VolumeSizeInGB": 10,
            "VolumeKmsKeyId": kms_key_arn,
        },
        "StoppingCondition": stopping,
        "EnableManagedSpotTraining": spot,
        "CheckpointConfig": {
            "S3Uri": str(artifacts.join("checkpoints", model.name, run_id, *([family] if family else []))) + "/",
            "LocalPath": "/opt/ml/checkpoints",
        },
        "RetryStrategy": {"MaximumRetryAttempts": model.spot.max_retry_attempts},
        **isolated(vpc_config),
        "EnableInterContainerTrafficEncryption": True,
        "Tags": [{"Key": "refit:model", "Value": model.name}, {"Key": "refit:run", "Value": run_id}]
        + ([{"Key": "refit:family", "Value": family}] if family else []),
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


def read_training_outputs(s3: Any, output_path: str, job_name: str) -> dict[str, bytes]:
    """evaluation.json, holdout_predictions.csv and baseline.json from a finished job's output.tar.gz, and
    holdout_rows.jsonl when the job wrote it."""
    archive_uri = S3Uri.parse(output_path).join(job_name, "output", "output.tar.gz")
    body = s3.get_object(Bucket=archive_uri.bucket, Key=archive_uri.key)["Body"].read()
    files: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as archive:
        for member in archive.getmembers():
            name = member.name.removeprefix("./")
            if name in OUTPUT_FILES + OPTIONAL_OUTPUT_FILES and member.isfile():
                files[name] = archive.extractfile(member).read()
    missing = [name for name in OUTPUT_FILES if name not in files]
    if missing:
        raise TrainingOutputError(f"{archive_uri}: training output lacks {missing}")
    return files


def best_cv_score(evaluation: dict[str, Any]) -> float:
    """The cross-validated score of the candidate a job chose (what parallel candidates are compared on)."""
    search = evaluation["search"]
    return float(search["cv_scores"][search["best"]])


def choose_candidate(
    candidates: list[dict[str, Any]], scores: dict[str, float], higher_is_better: bool
) -> dict[str, Any]:
    """One training summary for the run from the parallel candidates' summaries (`scores`: job name -> best CV score
    of each completed job). The chosen job's fields, with cost and time summed over every job that ran — the run paid
    for all of them — and a `candidates` list saying what each family did."""
    finished = [c for c in candidates if c.get("next") == "done" and c["job_name"] in scores]
    listing = [
        {
            "family": c.get("family"),
            "job_name": c.get("job_name"),
            "status": c.get("status") or c.get("next"),
            "cv_score": scores.get(c.get("job_name") or ""),
            "estimated_cost_usd": c.get("estimated_cost_usd"),
            "billable_seconds": c.get("billable_seconds"),
            "reason": c.get("failure_reason") or c.get("reason"),
        }
        for c in candidates
    ]
    totals = {
        key: round(sum(c.get(key) or 0 for c in candidates), 6)
        for key in ("estimated_cost_usd", "billable_seconds", "training_seconds")
    }
    spot_training = sum(c.get("training_seconds") or 0 for c in candidates if c.get("spot"))
    spot_billable = sum(c.get("billable_seconds") or 0 for c in candidates if c.get("spot"))
    savings = round((1 - spot_billable / spot_training) * 100, 1) if spot_training else None
    if finished:
        pick = max if higher_is_better else min
        chosen = pick(finished, key=lambda c: scores[c["job_name"]])
        return {**chosen, **totals, "savings_percent": savings, "candidates": listing, "chosen": chosen["family"]}
    refused = [c for c in candidates if c.get("next") == "refused"]
    if refused and len(refused) == len(candidates):
        return {"next": "refused", "reason": refused[0].get("reason"), "candidates": listing, **totals}
    reasons = "; ".join(f"{c['family']}: {c['reason'] or c['status']}" for c in listing)
    return {
        "next": "failed",
        "job_name": ", ".join(c["job_name"] for c in listing if c["job_name"]),
        "status": "Failed",
        "failure_reason": f"no candidate finished ({reasons})",
        "candidates": listing,
        "savings_percent": savings,
        **totals,
    }
