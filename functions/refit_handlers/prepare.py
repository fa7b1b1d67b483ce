"""First state: validate the execution input, name the run, take the model's single-flight lock."""

from __future__ import annotations

import time
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from pydantic import BaseModel
from refit_core.datasets import list_s3_objects
from refit_core.runs import parse_run_input, run_id_from_execution, utc_now
from refit_core.s3uri import S3Uri

from refit_handlers.common import Settings, client, parse, settings

logger = Logger()
tracer = Tracer()
metrics = Metrics()

LOCK_SECONDS = 6 * 3600  # longer than any run; an abandoned lock expires instead of blocking forever


class PrepareEvent(BaseModel):
    payload: Any
    execution_name: str


def newest_batch(s3: Any, bucket: str, prefix: str) -> str | None:
    objects = list_s3_objects(s3, S3Uri(bucket, prefix))
    if not objects:
        return None
    newest = max(objects, key=lambda o: s3.head_object(Bucket=o.bucket, Key=o.key)["LastModified"])
    return str(newest)


def acquire_lock(dynamodb: Any, table: str, model: str, run_id: str, now: int) -> str | None:
    """Returns None when the lock is ours, else the run id holding it."""
    try:
        dynamodb.put_item(
            TableName=table,
            Item={
                "pk": {"S": model},
                "sk": {"S": "lock"},
                "owner": {"S": run_id},
                "expires_at": {"N": str(now + LOCK_SECONDS)},
            },
            ConditionExpression="attribute_not_exists(pk) OR expires_at < :now OR #owner = :me",
            ExpressionAttributeNames={"#owner": "owner"},
            ExpressionAttributeValues={":now": {"N": str(now)}, ":me": {"S": run_id}},
        )
        return None
    except dynamodb.exceptions.ConditionalCheckFailedException:
        item = dynamodb.get_item(TableName=table, Key={"pk": {"S": model}, "sk": {"S": "lock"}}).get("Item", {})
        return item.get("owner", {}).get("S", "unknown")


def prepare(payload: Any, execution_name: str, config: Settings, s3: Any, dynamodb: Any) -> dict[str, Any]:
    model = config.model
    request = parse_run_input(payload, model.new_data_prefix, config.data_bucket)
    run_id = run_id_from_execution(execution_name)
    run = {
        "run_id": run_id,
        "model": model.name,
        "trigger": request.trigger,
        "reason": request.reason,
        "force": request.force,
        "data_uri": request.data_uri,
        "started_at": utc_now(),
        "proceed": True,
        "no_data": False,
    }
    holder = acquire_lock(dynamodb, config.audit_table, model.name, run_id, int(time.time()))
    if holder is not None:
        run.update(proceed=False, reason=f"another run ({holder}) holds the lock for model {model.name}")
        return run
    if run["data_uri"] is None:
        run["data_uri"] = newest_batch(s3, config.data_bucket, model.new_data_prefix)
        if run["data_uri"] is None:
            run["no_data"] = True
    return run


@logger.inject_lambda_context(log_event=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict, context: Any) -> dict:
    config = settings()
    parsed = parse(PrepareEvent, event)
    run = prepare(parsed.payload, parsed.execution_name, config, client("s3"), client("dynamodb"))
    metrics.add_dimension(name="Model", value=config.model.name)
    metrics.add_metric(name=f"RunsStarted_{run['trigger']}", unit=MetricUnit.Count, value=1)
    logger.info("run prepared", extra={"run": run})
    return run
