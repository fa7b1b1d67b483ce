"""A run that ended without reaching Finalize (timed out, aborted, or failed where no Catch reached) still gets what
Finalize gives every run: the endpoint back on its champion, an audit record with the reason, the lock released and
a summary. Started by an EventBridge rule on the state machine's own "Step Functions Execution Status Change" events.
With `[mlflow]` it then starts the MlflowSync function on the stored record without waiting (REFIT_MLFLOW_FUNCTION):
a challenger the run registered loses `challenger`, and its MLflow run ends FAILED or KILLED with the reason.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from typing import Any, Literal

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from pydantic import BaseModel, Field
from refit_core.approvals import withdraw_unserved_package
from refit_core.audit import summarize_run
from refit_core.champion import endpoint_view
from refit_core.runs import run_id_from_execution, utc_now
from refit_core.steps import AuditKey, RunInfo

from refit_handlers.common import Settings, client, parse, settings
from refit_handlers.deploy import Rollback, rollback
from refit_handlers.finalize import end_run, store_and_publish
from refit_handlers.mlflow_sync import start_sync

logger = Logger()
tracer = Tracer()
metrics = Metrics()

OUTCOMES = {"TIMED_OUT": "timed_out", "ABORTED": "aborted", "FAILED": "failed_outside_catch"}


class ExecutionStatusDetail(BaseModel):
    executionArn: str  # noqa: N815 - the event's own field names
    stateMachineArn: str  # noqa: N815
    name: str
    status: Literal["TIMED_OUT", "ABORTED", "FAILED"]
    startDate: int | None = None  # noqa: N815 - epoch milliseconds
    error: str | None = None
    cause: str | None = None


class ExecutionStatusEvent(BaseModel):
    detail_type: Literal["Step Functions Execution Status Change"] = Field(alias="detail-type")
    detail: ExecutionStatusDetail


def audit_record_exists(dynamodb: Any, table: str, model: str, execution_name: str) -> bool:
    """Whether Finalize already wrote this execution's record (a FAILED status after Finalize is a normal end)."""
    paginator = dynamodb.get_paginator("query")
    for page in paginator.paginate(
        TableName=table,
        KeyConditionExpression="pk = :model AND begins_with(sk, :runs)",
        FilterExpression="#execution = :name",
        ExpressionAttributeNames={"#execution": "execution"},
        ExpressionAttributeValues={":model": {"S": model}, ":runs": {"S": "run#"}, ":name": {"S": execution_name}},
        ProjectionExpression="pk",
    ):
        if page.get("Items"):
            return True
    return False


def last_run_state(stepfunctions: Any, execution_arn: str) -> dict[str, Any]:
    """The run's accumulated state as the last state that finished left it (the exited event with the highest id;
    ordered by id rather than trusting the page order)."""
    newest: tuple[int, dict[str, Any]] = (-1, {})
    paginator = stepfunctions.get_paginator("get_execution_history")
    for page in paginator.paginate(executionArn=execution_arn, reverseOrder=True, includeExecutionData=True):
        for event in page["events"]:
            output = (event.get("stateExitedEventDetails") or {}).get("output")
            if output is None or event["id"] <= newest[0]:
                continue
            try:
                state = json.loads(output)
            except json.JSONDecodeError:
                continue
            if isinstance(state, dict):
                newest = (event["id"], state)
    return newest[1]


def restore_endpoint(state: dict[str, Any], config: Settings, sagemaker: Any, autoscaling: Any) -> str:
    """Put the endpoint back on the config it had before the run, when the run had started a canary or a shadow and
    not finished promoting it. A first deployment (no champion before) and a promotion under way are left as they are."""
    redeploy = state.get("redeploy") or {}
    if redeploy.get("previous_config"):  # a manual rollback / promotion that did not reach its verdict
        previous = redeploy["previous_config"]
        result = rollback(Rollback(action="restore", previous_config=previous), config, sagemaker, autoscaling)
        return f"endpoint returned to {previous}" if result.get("changed") else f"endpoint already on {previous}"
    deploy = state.get("deploy") or {}
    if deploy.get("mode") == "guardrails" and (state.get("guardrails") or {}).get("next") == "judge":
        # SageMaker had finished on the new config and refit had not judged it: an unjudged challenger is no pass.
        previous = deploy.get("previous_config")
        result = rollback(
            Rollback(action="rollback", previous_config=previous), config, sagemaker, autoscaling, rescaled=False
        )
        return f"endpoint returned to {previous}" if result.get("changed") else f"endpoint already on {previous}"
    if deploy.get("mode") == "guardrails":  # the update is SageMaker's: it finishes or rolls back on its own
        return (
            f"a guarded update to {deploy.get('expected_config')} was started; it is SageMaker's to finish or roll back"
        )
    if deploy.get("mode") not in ("canary", "shadow"):
        return "endpoint untouched by this run"
    if state.get("promotion"):
        return f"the {deploy['mode']} had passed and was being promoted; endpoint left on the promoted config"
    previous = deploy.get("previous_config") or (state.get("check") or {}).get("champion_config")
    # Nothing registers the champion again after this: its scalable target stays unless the update forbids it.
    result = rollback(
        Rollback(action="rollback", previous_config=previous), config, sagemaker, autoscaling, rescaled=False
    )
    return f"endpoint returned to {previous}" if result.get("changed") else f"endpoint already on {previous}"


def left_serving(state: dict[str, Any], endpoint: dict[str, Any] | None) -> bool:
    """Whether the run's challenger serves after restore_endpoint: a promotion under way, a first deployment, or a
    guarded update SageMaker had finished (InService on the config it asked for)."""
    deploy = state.get("deploy") or {}
    if deploy.get("mode") == "guardrails":
        return bool(endpoint) and (endpoint["status"], endpoint["config"]) == (
            "InService",
            deploy.get("expected_config"),
        )
    return bool(state.get("promotion")) or deploy.get("mode") == "create"


def clean_up(
    detail: ExecutionStatusDetail,
    config: Settings,
    stepfunctions: Any,
    dynamodb: Any,
    sagemaker: Any,
    sns: Any,
    autoscaling: Any,
) -> dict[str, Any]:
    model = config.model.name
    if audit_record_exists(dynamodb, config.audit_table, model, detail.name):
        return {"action": "none", "reason": f"{detail.name} reached Finalize; its record stands"}
    state = last_run_state(stepfunctions, detail.executionArn)
    problems: list[str] = []
    try:
        endpoint_note = restore_endpoint(state, config, sagemaker, autoscaling)
    except Exception as error:  # the record must still be written
        endpoint_note = f"could not restore the endpoint: {type(error).__name__}: {error}"
        problems.append(endpoint_note)
    try:
        endpoint = endpoint_view(sagemaker, config.endpoint_name)
    except Exception as error:
        endpoint = None
        problems.append(f"could not read the endpoint: {error}")
    started = (
        datetime.fromtimestamp(detail.startDate / 1000, UTC).isoformat(timespec="seconds")
        if detail.startDate
        else utc_now()
    )
    record = summarize_run(state, model, detail.name, started, utc_now(), endpoint)
    why = {"TIMED_OUT": "timed out", "ABORTED": "was stopped", "FAILED": "failed where no Catch reached"}[detail.status]
    reason = ": ".join(part for part in (detail.error, detail.cause) if part)
    record.update(
        status=detail.status,
        outcome=OUTCOMES[detail.status],
        message=f"the execution {why} before Finalize{f' ({reason[:1500]})' if reason else ''}; {endpoint_note}",
        problems=[*record.get("problems", []), *problems],
        kept_for_training=None,
    )
    registry = state.get("registry") or {}
    try:
        record["registry_update"] = withdraw_unserved_package(
            sagemaker,
            registry.get("model_package_arn"),
            left_serving(state, endpoint),
            record["run_id"],
            record["message"],
        )
    except Exception as error:
        record["problems"].append(f"could not withdraw the run's model package approval: {error}")
    run = state.get("run") if isinstance(state.get("run"), dict) else None
    try:
        parsed_run = RunInfo.model_validate(run) if run else None
    except ValueError as error:
        parsed_run = None
        record["problems"].append(f"the run's state could not be read: {error}"[:1000])
    run_id = (run or {}).get("run_id") or run_id_from_execution(detail.name)
    end_run(record, parsed_run, run_id, config, dynamodb, stepfunctions)
    store_and_publish(record, config, dynamodb, sns)
    return {
        "action": "recorded",
        "status": detail.status,
        "outcome": record["outcome"],
        "message": record["message"],
        "audit_key": {"pk": record["pk"], "sk": record["sk"]},
    }


@logger.inject_lambda_context(log_event=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict, context: Any) -> dict:
    config = settings()
    parsed = parse(ExecutionStatusEvent, event)
    result = clean_up(
        parsed.detail,
        config,
        client("stepfunctions"),
        client("dynamodb"),
        client("sagemaker"),
        client("sns"),
        client("application-autoscaling"),
    )
    mlflow_function = os.environ.get("REFIT_MLFLOW_FUNCTION")
    if result["action"] == "recorded" and mlflow_function:
        # After the record is stored: MlflowSync reads it (its errors are its own to record and count).
        key = AuditKey.model_validate(result["audit_key"])
        result["mlflow_error"] = start_sync(
            client("lambda"), client("dynamodb"), config.audit_table, mlflow_function, key
        )
    if result["action"] == "recorded":
        metrics.add_dimension(name="Model", value=config.model.name)
        metrics.add_metric(name=f"Runs{parsed.detail.status.title().replace('_', '')}", unit=MetricUnit.Count, value=1)
    logger.info("run end checked", extra={"result": result})
    return result
