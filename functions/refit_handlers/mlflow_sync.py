"""After Finalize (only when `[mlflow]` is configured): the run's audit record in MLflow (refit_core.mlflow_sync).

Its outcome is already stored; this step can only add to the record. Whatever goes wrong with MLflow (the server
unreachable, credentials refused, a name MLflow rejects) is written into the audit record's `mlflow` field and counted
as the `MlflowErrors` metric (its alarm tells the team); the handler returns normally so the run ends as it was."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from pydantic import BaseModel
from refit_core.mlflow_sync import concerns_mlflow, sync_run, trained_challenger
from refit_core.s3uri import S3Uri
from refit_core.steps import AuditKey

from refit_handlers.common import client, parse, to_dynamodb

logger = Logger()
tracer = Tracer()
metrics = Metrics()


class MlflowEvent(BaseModel):
    audit_key: AuditKey


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
    experiment, registered_model = env["REFIT_MLFLOW_EXPERIMENT"], env["REFIT_MLFLOW_REGISTERED_MODEL"]
    record = read_record(dynamodb, table, key)
    if record is None:
        return {"error": f"no audit record {key.pk} / {key.sk} in {table}", "tracking_uri": tracking_uri}
    if not concerns_mlflow(record):
        return None  # no client is made (nor MLflow imported) for a run that skipped, stopped or failed early
    field: dict[str, Any] | None
    try:
        lineage = (
            read_json(s3, (record.get("registry") or {}).get("lineage_uri")) if trained_challenger(record) else None
        )
        evaluation = read_json(s3, (lineage or {}).get("evaluation_uri"))
        result = sync_run(make_client(tracking_uri), record, lineage, evaluation, experiment, registered_model, table)
        field = None if result is None else result.to_record(tracking_uri, registered_model)
    except Exception as error:  # MLflow's own, HTTP, credentials, S3: all only recorded
        field = {
            "error": f"{type(error).__name__}: {error}"[:2000],
            "tracking_uri": tracking_uri,
            "registered_model": registered_model,
        }
    if field is not None:
        dynamodb.update_item(
            TableName=table,
            Key={"pk": {"S": key.pk}, "sk": {"S": key.sk}},
            UpdateExpression="SET #mlflow = :mlflow",
            ExpressionAttributeNames={"#mlflow": "mlflow"},
            ExpressionAttributeValues={":mlflow": TypeSerializer().serialize(to_dynamodb(field))},
        )
    return field


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict, context: Any) -> dict:
    event_ = parse(MlflowEvent, event)
    metrics.add_dimension(name="Model", value=event_.audit_key.pk)
    field = log_to_mlflow(event_.audit_key, dict(os.environ), client("dynamodb"), client("s3"))
    failed = field is not None and "error" in field
    metrics.add_metric(name="MlflowErrors", unit=MetricUnit.Count, value=int(failed))
    if failed:
        logger.warning("MLflow logging failed; the run's outcome is unchanged", extra={"mlflow": field})
    else:
        logger.info("logged to MLflow", extra={"mlflow": field})
    return {"logged": field is not None and not failed, "error": field.get("error") if failed else None}
