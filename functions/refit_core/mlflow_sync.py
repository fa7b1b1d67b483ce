"""A run's audit record in MLflow: the run that trained a challenger becomes an MLflow run (why it ran, the settings,
CV and holdout metrics with their intervals, the gate's evidence, drift, cost, links), the challenger an MLflow model
version (its source is the artifact's S3 URI; nothing is uploaded), and the version's alias follows the deployment:
`challenger` from right after Register while the run deploys it or waits for its approval (log_challenger), `champion`
when it serves (MLflow moves an alias from the version that held it), none once it was not promoted, not approved,
rolled back, or its run ended without serving it (sync_run, when the outcome is stored).

Called by refit_handlers.mlflow_sync; takes an `mlflow.MlflowClient` and plain dicts. Both calls are idempotent and
share one MLflow run and version per refit run: each finds what an earlier call made (by the refit run id) and only
completes it."""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from itertools import zip_longest
from typing import Any

from refit_core.approvals import SERVED_OUTCOMES

CHALLENGER = "challenger"
CHAMPION = "champion"
RUN_TAG = "refit.run_id"
PACKAGE_TAG = "refit.model_package_arn"
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
MAX_TAG_CHARS = 5000  # kept under MLflow's limit on a run tag value
MAX_KEY_CHARS = 250  # MLflow's limit on a param, metric or tag key
UNNAMEABLE = re.compile(r"[^\w.\- :/]")  # what MLflow refuses in a key (a CV candidate's key holds '=' and ',')


# MLflow's own environment variables for a server that checks credentials (mlflow.environment_variables): Basic auth
# from the username and password, else a Bearer token.
BASIC_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
TOKEN_ENV = "MLFLOW_TRACKING_TOKEN"
CREDENTIAL_ENV = (*BASIC_ENV, TOKEN_ENV)
CREDENTIALS_SECRET_ENV = (
    "REFIT_MLFLOW_CREDENTIALS_SECRET"  # MlflowSync's `mlflow.credentials_secret` (set by the stack)
)


class MlflowCredentialsError(ValueError):
    """The `mlflow.credentials_secret` cannot be read or does not hold credentials (the message never holds a value)."""


def _nonempty_string(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def credentials_from_secret(secretsmanager: Any, secret_arn: str) -> dict[str, str]:
    """MLflow's credential environment variables from the secret: {"username", "password"} -> Basic, {"token"} ->
    Bearer (other keys are ignored). A secret that cannot be read or has another shape raises MlflowCredentialsError
    naming the secret and what is wrong (its key names, never its values)."""
    where = f"mlflow.credentials_secret {secret_arn}"
    try:
        secret = secretsmanager.get_secret_value(SecretId=secret_arn)
    except Exception as error:  # access denied, deleted, KMS refused, throttled: the message names no value
        raise MlflowCredentialsError(f"{where} could not be read: {type(error).__name__}: {error}") from None
    if "SecretString" not in secret:
        raise MlflowCredentialsError(f"{where} holds binary data; it must hold a JSON SecretString")
    try:
        document = json.loads(secret["SecretString"])
    except ValueError:
        raise MlflowCredentialsError(f"{where}: its SecretString is not JSON") from None
    if not isinstance(document, dict):
        raise MlflowCredentialsError(f"{where}: its SecretString must be a JSON object, not {type(document).__name__}")
    basic = "username" in document or "password" in document
    if basic and "token" in document:
        raise MlflowCredentialsError(f"{where} holds both username/password and token; keep one of them")
    if basic:
        if not (_nonempty_string(document.get("username")) and _nonempty_string(document.get("password"))):
            raise MlflowCredentialsError(f"{where}: username and password must both be non-empty strings")
        return dict(zip(BASIC_ENV, (document["username"], document["password"]), strict=True))
    if "token" in document:
        if not _nonempty_string(document["token"]):
            raise MlflowCredentialsError(f"{where}: token must be a non-empty string")
        return {TOKEN_ENV: document["token"]}
    keys = ", ".join(sorted(map(str, document))) or "none"
    raise MlflowCredentialsError(
        f'{where} must hold {{"username": ..., "password": ...}} or {{"token": ...}} (its keys: {keys})'
    )


def _key(name: str) -> str:
    return UNNAMEABLE.sub("_", name)[:MAX_KEY_CHARS]


@dataclass
class RunContents:
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


def trained_challenger(record: dict[str, Any]) -> bool:
    """The run trained a model that was judged and registered (the gate registers every judged challenger)."""
    return bool(record.get("registry") and (record.get("training") or {}).get("job_name"))


def concerns_mlflow(record: dict[str, Any]) -> bool:
    """The run trained a challenger, or changed what serves by a redeploy: else MLflow has nothing to learn from it."""
    return trained_challenger(record) or bool(record.get("outcome") in SERVED_OUTCOMES and record.get("redeploy"))


def _flat(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flat(f"{prefix}.{key}" if prefix else str(key), item, out)
    else:
        out[prefix] = value


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def run_contents(
    record: dict[str, Any], lineage: dict[str, Any] | None, evaluation: dict[str, Any] | None, audit_table: str
) -> RunContents:
    """What one run sends. Params: the training job's settings (from the lineage document) and the chosen candidate's
    hyperparameters; metrics: holdout metrics with their 95% bootstrap intervals (challenger and champion), CV scores,
    the gate's difference and interval, drift counts, seconds and cost; tags: trigger, reason, outcome, gate reason,
    drifted columns, and where the audit record, lineage, evaluation and drift report are."""
    contents = RunContents()
    lineage, evaluation = lineage or {}, evaluation or {}
    settings: dict[str, Any] = {}
    _flat("", lineage.get("hyperparameters") or {}, settings)
    for name in [k for k in settings if k.startswith("window.files.") or k == "run_id"]:
        del settings[name]  # one entry per file read (the lineage document lists them); the run id is a tag
    search = evaluation.get("search") or {}
    _flat("chosen", search.get("params") or {}, settings)
    for key in ("family", "cv_metric", "cv_folds", "best"):
        if search.get(key) is not None:
            settings[f"search.{key}"] = search[key]
    for key in ("n_train", "n_holdout"):
        if evaluation.get(key) is not None:
            settings[key] = evaluation[key]
    contents.params = {_key(k): str(v)[:MAX_PARAM_CHARS] for k, v in settings.items() if v is not None}

    metrics: dict[str, Any] = {}
    for side in ("challenger", "champion"):
        for name, value in ((evaluation.get("metrics") or {}).get(side) or {}).items():
            metrics[f"holdout.{side}.{name}"] = value
        for name, bounds in ((evaluation.get("intervals") or {}).get(side) or {}).items():
            if isinstance(bounds, list | tuple) and len(bounds) == 2:
                metrics[f"holdout.{side}.{name}.ci_low"], metrics[f"holdout.{side}.{name}.ci_high"] = bounds
    for key, score in (search.get("cv_scores") or {}).items():
        metrics[f"cv.{key}"] = score
    if search.get("best") in (search.get("cv_scores") or {}):
        metrics["cv.best"] = search["cv_scores"][search["best"]]
    gate = record.get("gate") or {}
    for key in ("p_value", "challenger", "champion", "improvement"):
        metrics[f"gate.{key}"] = gate.get(key)
    metrics["gate.promote"] = 1.0 if gate.get("promote") else 0.0
    lineage_gate = lineage.get("gate") or {}
    for key in ("ci_low", "ci_high", "required_improvement"):
        metrics[f"gate.{key}"] = lineage_gate.get(key)
    drift = record.get("drift") or {}
    if drift:
        metrics["drift.detected"] = 1.0 if drift.get("detected") else 0.0
        metrics["drift.n_drifted_features"] = drift.get("n_drifted_features")
    training = record.get("training") or {}
    for key in ("training_seconds", "billable_seconds", "savings_percent", "estimated_cost_usd"):
        metrics[f"training.{key}"] = training.get(key)
    contents.metrics = {_key(k): n for k, v in metrics.items() if (n := _number(v)) is not None}

    registry = record.get("registry") or {}
    tags = {
        RUN_TAG: record.get("run_id"),
        "refit.model": record.get("model"),
        "refit.trigger": record.get("trigger"),
        "refit.trigger_reason": record.get("trigger_reason"),
        "refit.status": record.get("status"),
        "refit.outcome": record.get("outcome"),
        "refit.message": record.get("message"),
        "refit.gate.reason": gate.get("reason"),
        "refit.gate.test": gate.get("test"),
        "refit.gate.primary_metric": gate.get("primary_metric"),
        "refit.drift.drifted_features": ", ".join(drift.get("drifted_features") or []) if drift else None,
        "refit.drift.report_uri": drift.get("report_html_uri") or drift.get("report_uri") if drift else None,
        "refit.training_job": training.get("job_name"),
        "refit.spot": str(training.get("spot")) if training.get("spot") is not None else None,
        "refit.data_uri": record.get("data_uri"),
        "refit.audit_record": f"dynamodb://{audit_table}/{record.get('pk')}/{record.get('sk')}",
        "refit.lineage_uri": registry.get("lineage_uri"),
        "refit.evaluation_uri": lineage.get("evaluation_uri"),
        PACKAGE_TAG: registry.get("model_package_arn"),
        "refit.registry_version": registry.get("version"),
        "refit.registry_approval": registry.get("approval"),
        "mlflow.runName": record.get("run_id"),
        "mlflow.note.content": f"{record['outcome']}: {record.get('message')}" if record.get("outcome") else None,
    }
    contents.tags = {k: str(v)[:MAX_TAG_CHARS] for k, v in tags.items() if v is not None and v != ""}
    return contents


@dataclass
class SyncResult:
    run_id: str | None = None
    experiment_id: str | None = None
    model_version: str | None = None
    aliases: dict[str, str | None] = field(default_factory=dict)  # alias -> the version it points at after the sync

    def to_record(self, tracking_uri: str, registered_model: str) -> dict[str, Any]:
        return {
            "tracking_uri": tracking_uri,
            "registered_model": registered_model,
            "run_id": self.run_id,
            "experiment_id": self.experiment_id,
            "model_version": self.model_version,
            "aliases": self.aliases,
        }


def _experiment_id(client: Any, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name)


def _ensure_registered_model(client: Any, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_registered_model(name, description="refit challengers and champions (one version per run)")


# The MLflow run's end as the refit run's status: a run that timed out or failed failed, a stopped one was killed.
RUN_END = {
    "SUCCEEDED": "FINISHED",
    "SKIPPED": "FINISHED",
    "FAILED": "FAILED",
    "TIMED_OUT": "FAILED",
    "ABORTED": "KILLED",
}


def run_end_status(record: dict[str, Any]) -> str:
    """MLflow's RunStatus name for the stored run's end (FAILED for a status refit does not know)."""
    return RUN_END.get(record.get("status") or "", "FAILED")


def _batches(items: list, size: int) -> list[list]:
    return [items[start : start + size] for start in range(0, len(items), size)] or [[]]


def log_run(
    client: Any, experiment: str, contents: RunContents, record: dict[str, Any], terminate: bool = True
) -> tuple[str, str]:
    """(experiment id, MLflow run id): the run logged, or the one an earlier call logged for this refit run, completed
    with what it lacks (params and metrics it has are kept: MLflow refuses a changed param) and the current tags.
    `terminate`: end it with the refit run's status (run_end_status); else it stays RUNNING (the run goes on)."""
    from mlflow.entities import Metric, Param, RunStatus, RunTag

    experiment_id = _experiment_id(client, experiment)
    found = client.search_runs([experiment_id], filter_string=f"tags.`{RUN_TAG}` = '{record['run_id']}'", max_results=1)
    if found:
        run_id, data = found[0].info.run_id, found[0].data
        timestamp = int(time.time() * 1000)
        params = [Param(k, v) for k, v in contents.params.items() if k not in data.params]
        metrics = [Metric(k, v, timestamp, 0) for k, v in contents.metrics.items() if k not in data.metrics]
        tags = [RunTag(k, v) for k, v in contents.tags.items() if data.tags.get(k) != v]
    else:
        run = client.create_run(experiment_id, tags=contents.tags, run_name=record["run_id"])
        run_id, timestamp = run.info.run_id, run.info.start_time
        params = [Param(k, v) for k, v in contents.params.items()]
        metrics = [Metric(k, v, timestamp, 0) for k, v in contents.metrics.items()]
        tags = []
    # MLflow's log_batch takes at most 100 params and 100 tags per call.
    for part_params, part_metrics, part_tags in zip_longest(
        *(_batches(items, 100) for items in (params, metrics, tags)), fillvalue=[]
    ):
        if part_params or part_metrics or part_tags:
            client.log_batch(run_id, metrics=part_metrics, params=part_params, tags=part_tags)
    if terminate:
        client.set_terminated(run_id, status=RunStatus.to_string(getattr(RunStatus, run_end_status(record))))
    return experiment_id, run_id


def _description(record: dict[str, Any]) -> str:
    if record.get("outcome"):
        return f"refit run {record.get('run_id')}: {record['outcome']} - {record.get('message')}"[:5000]
    approval = (record.get("registry") or {}).get("approval")
    return f"refit run {record.get('run_id')}: registered ({approval}); the run is deploying or awaiting approval"


def register_version(client: Any, registered_model: str, run_id: str, record: dict[str, Any], source: str) -> str:
    """The challenger as a version of the registered model (source: the model artifact's S3 URI), holding `challenger`
    once created; or the version an earlier call registered for the same MLflow run, its description brought up to
    date (its aliases are left to the caller)."""
    _ensure_registered_model(client, registered_model)
    for version in client.search_model_versions(f"name = '{registered_model}' and run_id = '{run_id}'"):
        if version.description != _description(record):
            client.update_model_version(registered_model, version.version, description=_description(record))
        return version.version
    registry = record.get("registry") or {}
    tags = {
        RUN_TAG: record.get("run_id"),
        PACKAGE_TAG: registry.get("model_package_arn"),
        "refit.registry_version": registry.get("version"),
    }
    version = client.create_model_version(
        registered_model,
        source,
        run_id=run_id,
        tags={k: str(v) for k, v in tags.items() if v is not None},
        description=_description(record),
    )
    client.set_registered_model_alias(registered_model, CHALLENGER, version.version)
    return version.version


def _alias(client: Any, registered_model: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(registered_model, alias).version
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def _aliases(client: Any, registered_model: str) -> dict[str, str | None]:
    """alias -> the version it points at (None: not set)."""
    return {alias: _alias(client, registered_model, alias) for alias in (CHAMPION, CHALLENGER)}


def _version_of_package(client: Any, registered_model: str, package_arn: str) -> str | None:
    for version in client.search_model_versions(f"name = '{registered_model}'"):
        if (version.tags or {}).get(PACKAGE_TAG) == package_arn:
            return version.version
    return None


def follow_deployment(client: Any, registered_model: str, record: dict[str, Any], version: str | None) -> dict:
    """Move the aliases to what the run left serving. The run's own version: `champion` when the run put it in
    service, else (not promoted, not approved, rolled back, failed) it keeps no alias. A redeploy (`refit rollback`,
    `refit promote`) moves `champion` to the version of the package it put back in service, or removes it when MLflow
    has no version of that package."""
    served = record.get("outcome") in SERVED_OUTCOMES
    if version is not None:
        if served:
            client.set_registered_model_alias(registered_model, CHAMPION, version)
        if _alias(client, registered_model, CHALLENGER) == version:
            client.delete_registered_model_alias(registered_model, CHALLENGER)
    redeploy = record.get("redeploy") or {}
    if served and redeploy.get("model_package_arn"):
        serving = _version_of_package(client, registered_model, redeploy["model_package_arn"])
        if serving is not None:
            client.set_registered_model_alias(registered_model, CHAMPION, serving)
        elif _alias(client, registered_model, CHAMPION) is not None:
            # What serves now was never logged (registered before `[mlflow]`): no MLflow version is the champion.
            client.delete_registered_model_alias(registered_model, CHAMPION)
    return _aliases(client, registered_model)


def _log_challenger_run(
    client: Any,
    record: dict[str, Any],
    lineage: dict[str, Any] | None,
    evaluation: dict[str, Any] | None,
    experiment: str,
    registered_model: str,
    audit_table: str,
    *,
    terminate: bool,
) -> SyncResult:
    """What log_challenger and sync_run both do for a run that trained a challenger: its MLflow run (ended with the
    refit run's status when `terminate`, else left RUNNING), and the challenger's version when the lineage names its
    artifact. The aliases are the caller's."""
    result = SyncResult()
    contents = run_contents(record, lineage, evaluation, audit_table)
    result.experiment_id, result.run_id = log_run(client, experiment, contents, record, terminate=terminate)
    source = (lineage or {}).get("model_data_url")
    if source:
        result.model_version = register_version(client, registered_model, result.run_id, record, source)
    return result


def log_challenger(
    client: Any,
    record: dict[str, Any],
    lineage: dict[str, Any] | None,
    evaluation: dict[str, Any] | None,
    experiment: str,
    registered_model: str,
    audit_table: str,
) -> SyncResult | None:
    """Right after Register, while the run goes on (canary, shadow, A/B test, approval): the MLflow run with everything
    known so far (it stays RUNNING), and the challenger's version holding `challenger`. `record` is the run summarized
    so far (no outcome yet). None when nothing was registered or the lineage names no artifact (then only the run is
    logged); sync_run completes both when the outcome is stored."""
    if not trained_challenger(record):
        return None
    result = _log_challenger_run(
        client, record, lineage, evaluation, experiment, registered_model, audit_table, terminate=False
    )
    if result.model_version is not None:
        client.set_registered_model_alias(registered_model, CHALLENGER, result.model_version)  # a retry's too
    result.aliases = _aliases(client, registered_model)
    return result


def sync_run(
    client: Any,
    record: dict[str, Any],
    lineage: dict[str, Any] | None,
    evaluation: dict[str, Any] | None,
    experiment: str,
    registered_model: str,
    audit_table: str,
) -> SyncResult | None:
    """Log a stored run to MLflow, completing what log_challenger began for it, and end the MLflow run with the refit
    run's status. None when the run has nothing for MLflow: it neither trained a challenger nor changed what serves
    (a skipped run, no drift, bad data)."""
    if not concerns_mlflow(record):
        return None
    if trained_challenger(record):
        result = _log_challenger_run(
            client, record, lineage, evaluation, experiment, registered_model, audit_table, terminate=True
        )
    else:
        result = SyncResult()
        _ensure_registered_model(client, registered_model)
    result.aliases = follow_deployment(client, registered_model, record, result.model_version)
    return result
