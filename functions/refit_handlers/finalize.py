"""Last state of every run: keep the batch as training data, write the audit record, publish the summary,
release the lock. Runs on success, on a stop and after any caught failure."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from boto3.dynamodb.types import TypeSerializer
from pydantic import BaseModel
from refit_core import ledger
from refit_core.approvals import SERVED_OUTCOMES, withdraw_unserved_package
from refit_core.audit import format_summary, summarize_run
from refit_core.champion import endpoint_view, find_champion, record_serving
from refit_core.runs import PENDING_ALARM_KEY, SETTLED_OUTCOMES, run_id_from_execution, utc_now
from refit_core.s3uri import S3Uri
from refit_core.steps import AuditKey, FinalStep, RunInfo, RunState

from refit_handlers.common import Settings, client, parse, settings, to_dynamodb

logger = Logger()
tracer = Tracer()
metrics = Metrics()


class FinalizeEvent(BaseModel):
    state: Any  # parsed by RunState.from_state, which never raises: every run gets its record
    execution_name: str
    execution_started_at: str


def keep_batch_for_training(s3: Any, config: Settings, state: RunState) -> str | None:
    """A batch that passed the quality gate becomes training data for later runs (after this run trained on it,
    so its holdout rows were never seen by the challenger) — unless this run tried to train on it and did not
    finish: a batch whose own training failed or was refused would be read by every later job."""
    check = state.check
    if check is None or not check.data_uri or check.quality is None or not check.quality.passed:
        return None
    training = state.training
    if training is not None and training.next != "done":
        return None
    if (check.decision is not None and check.decision.action == "train") and training is None:
        return None  # the run failed between the check and training: it never showed the batch trains
    return _copy_batch(s3, config, state, config.model.training_data_prefix)


def quarantine_batch(s3: Any, config: Settings, state: RunState) -> str | None:
    """A batch the quality gate refused is copied to `quarantine/<model>/`, where its reason (in the audit record)
    can be read beside it; the original stays where it landed."""
    check = state.check
    refused = check is not None and check.decision is not None and check.decision.action == "fail"
    if not refused or not check.data_uri:
        return None
    return _copy_batch(s3, config, state, config.model.quarantine_prefix)


def _copy_batch(s3: Any, config: Settings, state: RunState, prefix: str) -> str:
    source = S3Uri.parse(state.check.data_uri)
    run_id = state.run.run_id if state.run else "run"
    target = S3Uri(config.data_bucket, f"{prefix}{run_id}-{source.key.rsplit('/', 1)[-1]}")
    copy_source = {"Bucket": source.bucket, "Key": source.key}
    etag = state.run.data_etag if state.run else None
    # The bytes the run checked, not whatever the key holds now (a batch overwritten since fails the copy).
    condition = {"CopySourceIfMatch": f'"{etag}"'} if etag else {}
    s3.copy_object(Bucket=target.bucket, Key=target.key, CopySource=copy_source, **condition)
    return str(target)


def release_lock(dynamodb: Any, table: str, model: str, run_id: str) -> None:
    try:
        dynamodb.delete_item(
            TableName=table,
            Key={"pk": {"S": model}, "sk": {"S": "lock"}},
            ConditionExpression="#owner = :me",
            ExpressionAttributeNames={"#owner": "owner"},
            ExpressionAttributeValues={":me": {"S": run_id}},
        )
    except dynamodb.exceptions.ConditionalCheckFailedException:
        pass  # held by another run (this one was skipped) or already expired


def settle_batch(dynamodb: Any, config: Settings, run: RunInfo | None, outcome: str) -> bool:
    """The ledger item of the batch this run claimed records how the run ended: `checked` when the outcome settles
    the bytes, else `unsettled` (the schedule tries it again)."""
    if run is None or not run.claimed_batch or not run.data_uri or not run.data_etag:
        return False
    uri = S3Uri.parse(run.data_uri)
    batch = ledger.Batch(uri.bucket, uri.key, run.data_etag, "")
    return ledger.settle(
        dynamodb,
        config.audit_table,
        config.model.name,
        batch,
        run.run_id,
        outcome,
        outcome in SETTLED_OUTCOMES,
        utc_now(),
    )


def start_next_run(
    stepfunctions: Any, dynamodb: Any, config: Settings, run_id: str, outcome: str | None = None
) -> tuple[str | None, str | None]:
    """After the lock is released: an alarm run that waited for it comes first, unless this run put a new model in
    service (the alarm judged the model this run replaced; the monitor judges the new one afresh, and its alarm fires
    again if that one falls short too). Else, when batches are queued, the run that checks the oldest of them (each
    run checks one batch and starts the next when it ends, so the queue drains one by one). Names derive from the
    ending run, so a retried call starts nothing twice. Returns the started execution's name and, when a waiting
    alarm was dropped, why."""
    key = {"pk": {"S": config.model.name}, "sk": {"S": PENDING_ALARM_KEY}}
    pending = dynamodb.get_item(TableName=config.audit_table, Key=key, ConsistentRead=True).get("Item")
    dropped = None
    if pending is not None and outcome in SERVED_OUTCOMES:
        dynamodb.delete_item(TableName=config.audit_table, Key=key)
        dropped = (
            f"the quality alarm that fired during this run (run {pending['run_id']['S']}) was dropped: this run put a "
            "new model in service, which the monitor judges afresh"
        )
    elif pending is not None:
        # The waiting run clears the request once it holds the lock: a failed start here leaves it for the next end.
        return _start(stepfunctions, config, f"alarm-{_digest(run_id)}", {"alarm_after": run_id}), None
    if not ledger.entries(dynamodb, config.audit_table, config.model.name, status="queued"):
        return None, dropped
    return _start(stepfunctions, config, f"queue-{_digest(run_id)}", {"queued_after": run_id}), dropped


def _digest(run_id: str) -> str:
    return hashlib.sha256(run_id.encode()).hexdigest()[:32]


def _start(stepfunctions: Any, config: Settings, name: str, run_input: dict[str, str]) -> str:
    try:
        stepfunctions.start_execution(stateMachineArn=config.state_machine_arn, name=name, input=json.dumps(run_input))
    except stepfunctions.exceptions.ExecutionAlreadyExists:
        pass  # this run's end already started it
    return name


def end_run(
    record: dict[str, Any],
    run: RunInfo | dict[str, Any] | None,
    run_id: str,
    config: Settings,
    dynamodb: Any,
    stepfunctions: Any,
) -> None:
    """What every run's end does before its record is stored: settle its batch in the ledger, and, when it held the
    model's lock, release it and start the next queued run. Problems go into the record; none stops it."""
    info = RunInfo.model_validate(run) if isinstance(run, dict) else run
    try:
        settle_batch(dynamodb, config, info, record["outcome"])
    except Exception as error:
        record["problems"].append(f"could not settle the batch in the ledger: {type(error).__name__}: {error}")
    if info is not None and not info.proceed:
        return  # a run that did not take the lock neither releases it nor starts the next run
    try:
        release_lock(dynamodb, config.audit_table, config.model.name, run_id)
    except Exception as error:  # the record is still stored; the lock expires (ModelConfig.lock_seconds)
        record["problems"].append(f"could not release the lock: {type(error).__name__}: {error}")
        return
    try:
        record["next_run"], dropped = start_next_run(stepfunctions, dynamodb, config, run_id, record.get("outcome"))
        if dropped:
            record["pending_alarm"] = dropped
    except Exception as error:  # the queue (and a waiting alarm) waits for the next run's end or the schedule
        record["problems"].append(f"could not start the next run: {type(error).__name__}: {error}")


def store_and_publish(record: dict[str, Any], config: Settings, dynamodb: Any, sns: Any) -> None:
    """Write the audit record (its essentials when the whole record cannot be stored) and publish its summary: how
    every run ends, whether Finalize or the run-end cleanup records it."""
    serializer = TypeSerializer()
    try:
        item = {key: serializer.serialize(value) for key, value in to_dynamodb(record).items()}
        dynamodb.put_item(TableName=config.audit_table, Item=item)
    except (TypeError, ValueError, dynamodb.exceptions.ClientError) as error:
        # The full record could not be stored (e.g. an item over 400 KB): keep the essentials rather than none.
        essentials = {
            k: record[k]
            for k in (
                "pk",
                "sk",
                "run_id",
                "model",
                "execution",
                "status",
                "outcome",
                "message",
                "trigger",
                "started_at",
                "ended_at",
            )
        }
        essentials["audit_error"] = f"full record not stored: {type(error).__name__}: {error}"[:1000]
        dynamodb.put_item(
            TableName=config.audit_table,
            Item={key: serializer.serialize(value) for key, value in to_dynamodb(essentials).items()},
        )
    subject, message = format_summary(record)
    sns.publish(
        TopicArn=config.topic_arn,
        Subject=subject,
        Message=message,
        MessageAttributes={"status": {"DataType": "String", "StringValue": record["status"]}},
    )


def mark_champion(sagemaker: Any, config: Settings, state: RunState, run_id: str, now: str) -> list[str] | None:
    """The registry says what serves: the package of the endpoint's champion variant (read from the endpoint, not
    from the run's intent) is marked serving, and the package the run replaced is no longer marked."""
    champion = find_champion(sagemaker, config.endpoint_name)
    if champion is None or not champion.get("model_package_arn"):
        return None
    run, redeploy = state.run, state.redeploy
    if redeploy is not None:
        replaced, previous = redeploy.previous_package_arn, redeploy.previous_version
    else:
        before = state.check.champion if state.check is not None else None
        replaced, previous = (before.model_package_arn, before.version) if before else (None, None)
    return record_serving(
        sagemaker,
        champion["model_package_arn"],
        replaced,
        run_id,
        now,
        previous_version=previous,
        requested_by=run.requested_by if run and redeploy else None,
        reason=run.reason if run and redeploy else None,
        kind=redeploy.kind if redeploy else None,
        forced=bool(redeploy and redeploy.forced),
        replaced_reason=f"lost the A/B test: {state.ab.reason}" if state.ab and state.ab.result == "won" else None,
    )


def finalize(
    event: FinalizeEvent, config: Settings, s3: Any, dynamodb: Any, sns: Any, sagemaker: Any, stepfunctions: Any
) -> dict:
    state, problems = RunState.from_state(event.state)
    kept = quarantined = None
    try:
        kept = keep_batch_for_training(s3, config, state)
    except Exception as error:  # the audit record must still be written
        problems.append(f"could not keep the batch for training: {error}")
    try:
        quarantined = quarantine_batch(s3, config, state)
    except Exception as error:
        problems.append(f"could not quarantine the refused batch: {error}")
    try:
        endpoint = endpoint_view(sagemaker, config.endpoint_name)
    except Exception as error:
        endpoint = None
        problems.append(f"could not read the endpoint: {error}")
    record = summarize_run(
        state, config.model.name, event.execution_name, event.execution_started_at, utc_now(), endpoint
    )
    record["kept_for_training"] = kept
    record["quarantined"] = (
        {"uri": quarantined, "reason": state.check.decision.reason} if quarantined and state.check.decision else None
    )
    try:
        record["registry_update"] = withdraw_unserved_package(
            sagemaker,
            state.registry.model_package_arn if state.registry else None,
            record["outcome"] in SERVED_OUTCOMES,
            record["run_id"],
            f"run ended {record['outcome']}: {record['message']}",
        )
    except Exception as error:
        problems.append(f"could not withdraw the run's model package approval: {error}")
    if record["outcome"] in SERVED_OUTCOMES:
        try:
            record["serving_update"] = mark_champion(sagemaker, config, state, record["run_id"], record["ended_at"])
        except Exception as error:
            problems.append(f"could not mark the serving model package in the registry: {error}")
    record["problems"] = problems + record["problems"]
    run_id = (state.run.run_id if state.run else None) or run_id_from_execution(event.execution_name)
    end_run(record, state.run, run_id, config, dynamodb, stepfunctions)
    store_and_publish(record, config, dynamodb, sns)
    return FinalStep(
        status=record["status"],
        outcome=record["outcome"],
        message=record["message"],
        audit_key=AuditKey(pk=record["pk"], sk=record["sk"]),
    ).to_state()


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict, context: Any) -> dict:
    config = settings()
    result = finalize(
        parse(FinalizeEvent, event),
        config,
        client("s3"),
        client("dynamodb"),
        client("sns"),
        client("sagemaker"),
        client("stepfunctions"),
    )
    metrics.add_dimension(name="Model", value=config.model.name)
    metrics.add_metric(name=f"Runs{result['status'].title()}", unit=MetricUnit.Count, value=1)
    logger.info("run finished", extra={"result": result})
    return result
