"""First state: validate the execution input, name the run, take the model's single-flight lock."""

from __future__ import annotations

import time
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from botocore.exceptions import ClientError
from pydantic import BaseModel
from refit_core.datasets import S3Object, list_s3_object_details
from refit_core.runs import parse_run_input, run_id_from_execution, settled_by, utc_now
from refit_core.s3uri import S3Uri
from refit_core.steps import RunInfo

from refit_handlers.common import Settings, client, parse, settings

logger = Logger()
tracer = Tracer()
metrics = Metrics()

RECENT_RUNS = 50  # how far back a scheduled run looks for a run that settled the newest batch
SETTLED_BY_FIELDS = ("run_id", "data_uri", "data_etag", "outcome")


class PrepareEvent(BaseModel):
    payload: Any
    execution_name: str


def newest_batch(s3: Any, bucket: str, prefix: str) -> S3Object | None:
    objects = list_s3_object_details(s3, S3Uri(bucket, prefix))
    return max(objects, key=lambda o: (o.last_modified, o.uri.key)) if objects else None


def object_etag(s3: Any, data_uri: str) -> str | None:
    """The named batch's ETag, recorded with the run; a missing object is the check's to report, with its reason."""
    uri = S3Uri.parse(data_uri)
    try:
        return s3.head_object(Bucket=uri.bucket, Key=uri.key).get("ETag", "").strip('"')
    except ClientError:
        return None


def recent_runs(dynamodb: Any, table: str, model: str, limit: int = RECENT_RUNS) -> list[dict[str, Any]]:
    """The model's newest run records (newest first), with only what settled_by reads."""
    reply = dynamodb.query(
        TableName=table,
        KeyConditionExpression="pk = :model AND begins_with(sk, :runs)",
        ExpressionAttributeValues={":model": {"S": model}, ":runs": {"S": "run#"}},
        ProjectionExpression=", ".join(f"#{name}" for name in SETTLED_BY_FIELDS),
        ExpressionAttributeNames={f"#{name}": name for name in SETTLED_BY_FIELDS},  # no reserved-word surprises
        ScanIndexForward=False,
        Limit=limit,
    )
    return [{k: v.get("S") for k, v in item.items()} for item in reply.get("Items", [])]


def acquire_lock(dynamodb: Any, table: str, model: str, run_id: str, now: int, lock_seconds: int) -> str | None:
    """Returns None when the lock is ours, else the run id holding it. The lock outlives any run of the model
    (`ModelConfig.lock_seconds`); an abandoned one expires instead of blocking forever."""
    try:
        dynamodb.put_item(
            TableName=table,
            Item={
                "pk": {"S": model},
                "sk": {"S": "lock"},
                "owner": {"S": run_id},
                "expires_at": {"N": str(now + lock_seconds)},
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
        "data_etag": None,
        "proceed": True,
        "no_data": False,
        "settled_by": None,
    }
    holder = acquire_lock(dynamodb, config.audit_table, model.name, run_id, int(time.time()), model.lock_seconds)
    if holder is not None:
        run.update(proceed=False, reason=f"another run ({holder}) holds the lock for model {model.name}")
        return run
    if run["data_uri"] is not None:
        run["data_etag"] = object_etag(s3, run["data_uri"])
        return run
    newest = newest_batch(s3, config.data_bucket, model.new_data_prefix)
    if newest is None:
        run["no_data"] = True
        return run
    run.update(data_uri=str(newest.uri), data_etag=newest.etag)
    if request.trigger == "schedule":
        # A schedule fires whether or not data arrived; a batch an earlier run already settled is not checked and
        # retrained on every day. Manual and alarm runs check it again: someone or something asked for it.
        earlier = settled_by(recent_runs(dynamodb, config.audit_table, model.name), run["data_uri"], newest.etag)
        if earlier is not None:
            run["settled_by"] = (
                f"no new batch since run {earlier['run_id']} checked {run['data_uri']} (outcome: {earlier['outcome']})"
            )
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
    return RunInfo(**run).to_state()
