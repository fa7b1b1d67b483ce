"""First state: validate the execution input, name the run, take the model's single-flight lock."""

from __future__ import annotations

import time
from datetime import UTC
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from botocore.exceptions import ClientError
from pydantic import BaseModel
from refit_core import ledger
from refit_core.datasets import S3Object, list_s3_object_details
from refit_core.ledger import Batch
from refit_core.monitor import MonitorError, latest_decision, take_feedback
from refit_core.runs import PENDING_ALARM_KEY, parse_run_input, run_id_from_execution, settled_by, utc_now
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


def record_pending_alarm(
    dynamodb: Any, table: str, model: str, run_id: str, holder: str, reason: str, now: str
) -> None:
    """The alarm run waiting for the lock; the holder's end starts it (refit_handlers.finalize.start_next_run)."""
    dynamodb.put_item(
        TableName=table,
        Item={
            "pk": {"S": model},
            "sk": {"S": PENDING_ALARM_KEY},
            "run_id": {"S": run_id},
            "waiting_for": {"S": holder},
            "reason": {"S": reason[:1000]},
            "at": {"S": now},
        },
    )


def clear_pending_alarm(dynamodb: Any, table: str, model: str) -> None:
    dynamodb.delete_item(TableName=table, Key={"pk": {"S": model}, "sk": {"S": PENDING_ALARM_KEY}})


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


def batch_of(s3: Any, data_uri: str, etag: str | None) -> Batch | None:
    """The named object as a ledger batch (ETag from the event when it carries one, else a HEAD); None when the
    object cannot be read: the check reports that, with its reason."""
    uri = S3Uri.parse(data_uri)
    try:
        head = s3.head_object(Bucket=uri.bucket, Key=uri.key)
    except ClientError:
        return None
    landed = head["LastModified"].astimezone(UTC).isoformat(timespec="milliseconds")
    return Batch(uri.bucket, uri.key, etag or head.get("ETag", "").strip('"'), landed)


def listed_batch(obj: S3Object) -> Batch:
    landed = obj.last_modified.astimezone(UTC).isoformat(timespec="milliseconds")
    return Batch(obj.uri.bucket, obj.uri.key, obj.etag, landed)


def reconcile(dynamodb: Any, config: Settings, objects: list[S3Object], now: str) -> int:
    """Record in the ledger every batch under the new-data prefix it does not know (an S3 event can be lost, and
    batches from before the ledger existed have none): one an earlier run settled (its audit record says so) as
    checked, any other as queued. Returns how many were queued."""
    model = config.model.name
    known = {item["sk"] for item in _ledger_keys(dynamodb, config.audit_table, model)}
    new = [batch for batch in map(listed_batch, objects) if batch.sort_key not in known]
    if not new:
        return 0
    history = recent_runs(dynamodb, config.audit_table, model)
    queued = 0
    for batch in new:
        earlier = settled_by(history, batch.uri, batch.etag)
        if earlier is not None:
            ledger.enqueue(
                dynamodb,
                config.audit_table,
                model,
                batch,
                now,
                "checked",
                run_id=earlier["run_id"],
                outcome=earlier["outcome"],
            )
        elif ledger.enqueue(dynamodb, config.audit_table, model, batch, now) is None:
            queued += 1
    return queued


def _ledger_keys(dynamodb: Any, table: str, model: str) -> list[dict[str, Any]]:
    reply = dynamodb.get_paginator("query").paginate(
        TableName=table,
        KeyConditionExpression="pk = :model AND begins_with(sk, :batch)",
        ExpressionAttributeValues={":model": {"S": model}, ":batch": {"S": ledger.LEDGER_PREFIX}},
        ProjectionExpression="sk",
        ConsistentRead=True,
    )
    return [{"sk": item["sk"]["S"]} for page in reply for item in page.get("Items", [])]


def _checked_message(item: dict[str, Any], uri: str) -> str:
    outcome = item.get("outcome") or item.get("status")
    return f"{uri} (ETag {item.get('etag')}) was already checked by run {item.get('run_id')} (outcome: {outcome})"


def prepare(payload: Any, execution_name: str, config: Settings, s3: Any, dynamodb: Any) -> dict[str, Any]:
    """Validate the input, record the batch in the ledger, take the lock, and choose the one batch this run checks:
    the named one for a manual run, else the oldest queued batch (one by one, oldest first), else the newest batch
    when the schedule may retry it or the run is forced."""
    model = config.model
    table = config.audit_table
    request = parse_run_input(payload, model.new_data_prefix, config.data_bucket)
    run_id = run_id_from_execution(execution_name)
    now = utc_now()
    run = {
        "run_id": run_id,
        "model": model.name,
        "trigger": request.trigger,
        "reason": request.reason,
        "force": request.force,
        "data_uri": request.data_uri,
        "started_at": now,
        "data_etag": None,
        "proceed": True,
        "no_data": False,
        "settled_by": None,
        "skip_outcome": None,
        "claimed_batch": False,
        "queued": 0,
        "provenance": "batch",
        "requested_by": request.requested_by,
    }
    if request.deploy is not None:
        # A manual rollback / promotion: no batch, no ledger; the lock keeps it apart from every other run.
        run.update(
            mode="redeploy",
            deploy_version=request.deploy.deploy_version,
            deploy_kind=request.deploy.kind,
            deploy_force=request.deploy.force,
        )
        holder = acquire_lock(dynamodb, table, model.name, run_id, int(time.time()), model.lock_seconds)
        if holder is not None:
            run.update(proceed=False, reason=f"another run ({holder}) holds the lock for model {model.name}")
        return run
    named = batch_of(s3, request.data_uri, request.etag) if request.data_uri else None
    if request.data_uri is not None and named is not None:
        run["data_etag"] = named.etag
        existing = ledger.enqueue(dynamodb, table, model.name, named, now)
        # A re-delivered event, or a manual pick of bytes already checked, ends here (a forced run checks again).
        if existing is not None and existing["status"] != "queued" and not request.force:
            run.update(proceed=False, skip_outcome="already_checked", reason=_checked_message(existing, named.uri))
            return run
    newly_queued = 0
    objects: list[S3Object] = []
    if request.data_uri is None:
        objects = list_s3_object_details(s3, S3Uri(config.data_bucket, model.new_data_prefix))
        newly_queued = reconcile(dynamodb, config, objects, now)

    holder = acquire_lock(dynamodb, table, model.name, run_id, int(time.time()), model.lock_seconds)
    if holder is not None and request.trigger == "alarm":
        # CloudWatch sends one event per ALARM episode: an alarm run that cannot start now must not be lost.
        record_pending_alarm(dynamodb, table, model.name, run_id, holder, request.reason, now)
        # The holder may have ended between the two calls without seeing the request: then this run is the one.
        holder = acquire_lock(dynamodb, table, model.name, run_id, int(time.time()), model.lock_seconds)
    if holder is not None:
        waiting = named is not None or newly_queued > 0
        note = " the batch is queued and is checked when that run releases the lock" if waiting else ""
        if request.trigger == "alarm":
            note = " the alarm's retrain starts when that run releases the lock, unless that run promotes a new model"
        run.update(
            proceed=False,
            skip_outcome="queued" if waiting or request.trigger == "alarm" else None,
            reason=f"another run ({holder}) holds the lock for model {model.name};{note}".rstrip(";"),
        )
        return run
    if request.trigger == "alarm":
        clear_pending_alarm(dynamodb, table, model.name)  # this run is the retrain a waiting alarm asked for

    queue = ledger.entries(dynamodb, table, model.name, status="queued")
    run["queued"] = len(queue)
    if request.trigger == "alarm":
        _explain_alarm(run, config, s3)
        feedback_uri = take_feedback(s3, config.data_bucket, model, run_id)
        feedback = batch_of(s3, feedback_uri, None) if feedback_uri else None
        if feedback is not None:
            # The traffic that hurt, with its labels: what the alarm's retrain learns from and is judged on.
            ledger.enqueue(dynamodb, table, model.name, feedback, now)
            run.update(data_uri=feedback.uri, data_etag=feedback.etag, provenance="feedback")
            run["claimed_batch"] = ledger.claim(dynamodb, table, model.name, feedback, run_id, now, ("queued",))
            run["reason"] += f"; retraining on the labelled traffic gathered since the last alarm run ({feedback.uri})"
            return run
    if request.trigger == "manual" and named is not None:
        # The batch someone named; a forced run checks it again whatever the ledger says.
        allowed = ("queued", "unsettled", "checked", "checking") if request.force else ("queued", "unsettled")
        run["claimed_batch"] = ledger.claim(dynamodb, table, model.name, named, run_id, now, allowed)
        if not run["claimed_batch"]:
            run["settled_by"] = _checked_message(ledger.entry(dynamodb, table, model.name, named) or {}, named.uri)
        return run
    if request.trigger == "s3" and named is not None and not queue:
        # Another run checked this event's batch between the event and the lock.
        run["settled_by"] = _checked_message(ledger.entry(dynamodb, table, model.name, named) or {}, named.uri)
        return run
    if request.data_uri is not None and named is None:
        return run  # the object cannot be read: the check reports why
    if queue:
        return _take(run, queue[0], dynamodb, table, model.name, run_id, now)
    newest = max(objects, key=lambda o: (o.last_modified, o.uri.key)) if objects else None
    if newest is None:
        run["no_data"] = True
        return run
    batch = listed_batch(newest)
    run.update(data_uri=batch.uri, data_etag=batch.etag)
    # A schedule fires whether or not data arrived: a batch an earlier run settled is not checked and retrained on
    # every day, but one whose run failed or was refused by the budget is tried again. An alarm forces a retrain.
    allowed = ("queued", "unsettled", "checked", "checking") if request.force else ("queued", "unsettled")
    run["claimed_batch"] = ledger.claim(dynamodb, table, model.name, batch, run_id, now, allowed)
    if not run["claimed_batch"]:
        item = ledger.entry(dynamodb, table, model.name, batch) or {}
        run["settled_by"] = (
            f"no new batch since run {item.get('run_id')} checked {batch.uri} (outcome: {item.get('outcome')})"
        )
    return run


def _explain_alarm(run: dict[str, Any], config: Settings, s3: Any) -> None:
    """The reason of a run the quality alarm started, in the monitor's own words (live metric, interval, rows)."""
    try:
        decision = latest_decision(s3, config.artifact_bucket, config.model)
    except (ClientError, MonitorError):
        return
    if decision and decision.get("breached"):
        run["reason"] = f"{run['reason']}: {decision['reason']} (monitor run {decision.get('run_id')})"


def _take(
    run: dict[str, Any], item: dict[str, Any], dynamodb: Any, table: str, model: str, run_id: str, now: str
) -> dict[str, Any]:
    batch = ledger.as_batch(item)
    claimed = ledger.claim(dynamodb, table, model, batch, run_id, now, ("queued",))
    run.update(data_uri=batch.uri, data_etag=batch.etag, claimed_batch=claimed)
    if run["trigger"] == "s3" and run["reason"] != f"new data {batch.uri}":
        run["reason"] = f"{run['reason']}; checking the oldest queued batch {batch.uri} first"
    if not claimed:
        run["settled_by"] = f"{batch.uri} was claimed by another run"
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
