"""A run in MLflow (only when `[mlflow]` is configured; refit_core.mlflow_sync), at two moments:

- right after Register (`{"stage": "challenger", "state": ...}`, the state machine's `Log challenger to MLflow`): the
  MLflow run so far and the challenger's version with alias `challenger`; the result goes into the run's state
  (`$.mlflow_challenger`), which the audit record keeps as `mlflow_challenger`;
- once the outcome is stored (`{"audit_key": ...}`: `Log to MLflow` after Finalize, or started by the run-end Cleanup
  for a run that ended without Finalize): the same MLflow run and version completed, the run ended with the refit
  run's status, the aliases moved to what serves; the result goes into the audit record's `mlflow` field.

With `mlflow.credentials_secret`, MLflow's own credential variables are set from that Secrets Manager secret (read once
per container) before the client is made. Whatever goes wrong with MLflow (the server unreachable, credentials refused
or their secret unreadable, a name MLflow rejects) is recorded there as `error` and counted as the `MlflowErrors` metric
(its alarm tells the team); the handler returns normally, so the run goes on, or ends, as it would have without
MLflow."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any, Literal

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from pydantic import BaseModel
from refit_core.audit import summarize_run
from refit_core.config import model_from_json
from refit_core.mlflow_sync import (
    CREDENTIAL_ENV,
    CREDENTIALS_SECRET_ENV,
    SyncResult,
    concerns_mlflow,
    credentials_from_secret,
    log_challenger,
    sync_run,
    trained_challenger,
)
from refit_core.runs import utc_now
from refit_core.s3uri import S3Uri
from refit_core.steps import AuditKey

from refit_handlers.common import client, parse, to_dynamodb

logger = Logger()
tracer = Tracer()
metrics = Metrics()


class MlflowEvent(BaseModel):
    audit_key: AuditKey


class ChallengerEvent(BaseModel):
    stage: Literal["challenger"]
    state: Any  # the run's state right after Register, summarized as Finalize will summarize it
    execution_name: str
    execution_started_at: str


def read_record(dynamodb: Any, table: str, key: AuditKey) -> dict[str, Any] | None:
    item = dynamodb.get_item(TableName=table, Key={"pk": {"S": key.pk}, "sk": {"S": key.sk}}, ConsistentRead=True).get(
        "Item"
    )
    if item is None:
        return None
    deserializer = TypeDeserializer()
    return json.loads(json.dumps({k: deserializer.deserialize(v) for k, v in item.items()}, default=float))


def read_json(s3: Any, uri: str | None) -> dict[str, Any] | None:
    if not uri:
        return None
    location = S3Uri.parse(uri)
    return json.loads(s3.get_object(Bucket=location.bucket, Key=location.key)["Body"].read())


def mlflow_client(tracking_uri: str) -> Any:
    """MLflow's own client. A SageMaker tracking server ARN resolves through the `sagemaker-mlflow` plugin, which signs
    each request with SigV4 as the function's role; HTTP timeouts and retries come from MLFLOW_HTTP_REQUEST_* (set by
    the stack)."""
    import mlflow

    # Also the process-wide URI: the plugin's routing header is computed from it, not from the client's.
    mlflow.set_tracking_uri(tracking_uri)
    return mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


_credentials: dict[str, dict[str, str]] = {}  # secret ARN -> MLflow's credential variables, read once per container


def use_credentials(env: dict[str, str]) -> None:
    """With `mlflow.credentials_secret` (its ARN in REFIT_MLFLOW_CREDENTIALS_SECRET): MLflow's own credential
    variables set from the secret, which is read once per container (forget_credentials makes the next call read it
    again). Raises MlflowCredentialsError when the secret cannot be read or holds no credentials."""
    secret_arn = env.get(CREDENTIALS_SECRET_ENV)
    if not secret_arn:
        return
    if secret_arn not in _credentials:
        _credentials[secret_arn] = credentials_from_secret(client("secretsmanager"), secret_arn)
    for name in CREDENTIAL_ENV:
        os.environ.pop(name, None)
    os.environ.update(_credentials[secret_arn])


def forget_credentials(env: dict[str, str]) -> None:
    """After a failed sync: the next one reads the secret again (it may have been rotated, or fixed)."""
    _credentials.pop(env.get(CREDENTIALS_SECRET_ENV) or "", None)


def _error(error: Exception, tracking_uri: str, registered_model: str) -> dict[str, Any]:
    return {
        "error": f"{type(error).__name__}: {error}"[:2000],
        "tracking_uri": tracking_uri,
        "registered_model": registered_model,
    }


def store_field(dynamodb: Any, table: str, key: AuditKey, field: dict[str, Any]) -> None:
    """Write the audit record's `mlflow` field (the rest of the record stays as stored)."""
    dynamodb.update_item(
        TableName=table,
        Key={"pk": {"S": key.pk}, "sk": {"S": key.sk}},
        UpdateExpression="SET #mlflow = :mlflow",
        ExpressionAttributeNames={"#mlflow": "mlflow"},
        ExpressionAttributeValues={":mlflow": TypeSerializer().serialize(to_dynamodb(field))},
    )


def _documents(s3: Any, record: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The run's lineage and evaluation documents (a registered challenger's)."""
    lineage = read_json(s3, (record.get("registry") or {}).get("lineage_uri")) if trained_challenger(record) else None
    return lineage, read_json(s3, (lineage or {}).get("evaluation_uri"))


def _logged(
    log: Callable[..., SyncResult | None],
    record: dict[str, Any],
    env: dict[str, str],
    s3: Any,
    make_client: Callable[[str], Any],
) -> dict[str, Any] | None:
    """What log_to_mlflow and log_challenger_to_mlflow share: the run's documents, the credentials, then `log`
    (sync_run or log_challenger) on a client of the tracking server. Returns the `mlflow` field: the MLflow run,
    version and aliases, or the error (MLflow's own, HTTP, credentials refused or unreadable, S3: all only recorded,
    never raised); None when `log` found nothing for MLflow."""
    table, tracking_uri = env["REFIT_AUDIT_TABLE"], env["REFIT_MLFLOW_TRACKING_URI"]
    experiment, registered_model = env["REFIT_MLFLOW_EXPERIMENT"], env["REFIT_MLFLOW_REGISTERED_MODEL"]
    try:
        lineage, evaluation = _documents(s3, record)
        use_credentials(env)
        result = log(make_client(tracking_uri), record, lineage, evaluation, experiment, registered_model, table)
        return None if result is None else result.to_record(tracking_uri, registered_model)
    except Exception as error:
        forget_credentials(env)
        return _error(error, tracking_uri, registered_model)


def log_to_mlflow(
    key: AuditKey,
    env: dict[str, str],
    dynamodb: Any,
    s3: Any,
    make_client: Callable[[str], Any] = mlflow_client,
) -> dict[str, Any] | None:
    """Sync one stored run to MLflow and store what happened in its audit record (`mlflow`): the MLflow run, version
    and aliases, or the error. Returns that field (None when the run had nothing for MLflow)."""
    table, tracking_uri = env["REFIT_AUDIT_TABLE"], env["REFIT_MLFLOW_TRACKING_URI"]
    record = read_record(dynamodb, table, key)
    if record is None:
        return {"error": f"no audit record {key.pk} / {key.sk} in {table}", "tracking_uri": tracking_uri}
    if not concerns_mlflow(record):
        return None  # no client is made (nor MLflow imported) for a run that skipped, stopped or failed early
    field = _logged(sync_run, record, env, s3, make_client)
    if field is not None:
        store_field(dynamodb, table, key, field)
    return field


def log_challenger_to_mlflow(
    event: ChallengerEvent, env: dict[str, str], s3: Any, make_client: Callable[[str], Any] = mlflow_client
) -> dict[str, Any] | None:
    """Right after Register: the run so far in MLflow and its version holding `challenger`. Returns what happened
    (the MLflow run, version and aliases, or the error), for the run's state; None when nothing was registered."""
    summary = summarize_run(
        event.state,
        model_from_json(env["REFIT_MODEL_CONFIG"]).name,
        event.execution_name,
        event.execution_started_at,
        utc_now(),
        None,
    )
    record = {**summary, "status": "RUNNING", "outcome": None, "message": None}  # its outcome is not known yet
    if not trained_challenger(record):
        return None
    return _logged(log_challenger, record, env, s3, make_client)


def start_sync(lambda_: Any, dynamodb: Any, table: str, function: str, key: AuditKey) -> str | None:
    """Start the MLflow sync of a stored record without waiting for it (an asynchronous invocation of the MlflowSync
    function: the run-end Cleanup's way). A refused invocation is written into the record's `mlflow` field and
    returned; None when it was started."""
    try:
        lambda_.invoke(
            FunctionName=function,
            InvocationType="Event",
            Payload=json.dumps({"audit_key": key.model_dump()}).encode(),
        )
        return None
    except Exception as error:
        message = f"could not start the MLflow sync ({function}): {type(error).__name__}: {error}"[:2000]
        try:
            store_field(dynamodb, table, key, {"error": message})
        except Exception as unstored:  # the run's record stands as stored; the caller logs why MLflow was not told
            message += f" (not written into the record: {type(unstored).__name__}: {unstored})"
        return message


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict, context: Any) -> dict:
    if isinstance(event, dict) and event.get("stage") == "challenger":
        challenger = parse(ChallengerEvent, event)
        model = model_from_json(os.environ["REFIT_MODEL_CONFIG"]).name
        field = log_challenger_to_mlflow(challenger, dict(os.environ), client("s3"))
    else:
        event_ = parse(MlflowEvent, event)
        model = event_.audit_key.pk
        field = log_to_mlflow(event_.audit_key, dict(os.environ), client("dynamodb"), client("s3"))
    metrics.add_dimension(name="Model", value=model)
    failed = field is not None and "error" in field
    metrics.add_metric(name="MlflowErrors", unit=MetricUnit.Count, value=int(failed))
    if failed:
        logger.warning("MLflow logging failed; the run's outcome is unchanged", extra={"mlflow": field})
    else:
        logger.info("logged to MLflow", extra={"mlflow": field})
    return {
        "logged": field is not None and not failed,
        "error": field.get("error") if failed else None,
        **{k: (field or {}).get(k) for k in ("run_id", "model_version", "aliases") if (field or {}).get(k)},
    }
