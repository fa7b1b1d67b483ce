"""Manual approval: park the run with a task token until a decision arrives through the Approve function's URL
(`refit approve` / `refit reject`), or expire it."""

from __future__ import annotations

import base64
import json
import os
import time
from typing import Any

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.utilities.parser.models import LambdaFunctionUrlModel
from pydantic import BaseModel
from refit_core.approvals import SEPARATION_OF_DUTIES_ENV, answer_decision_request, approval_key
from refit_core.identity import CallerIdentity
from refit_core.steps import ApprovalDecision, ApprovalRequested

from refit_handlers.common import Settings, client, parse, settings

logger = Logger()
tracer = Tracer()


class ApprovalRequest(BaseModel):
    task_token: str
    run_id: str
    model_package_arn: str
    version: int
    reason: str
    trigger: str | None = None  # the run's trigger and recorded starter, for separation of duties
    started_by: str | None = None


class ApprovalExpiry(BaseModel):
    model_package_arn: str
    version: int


def request_approval(event: ApprovalRequest, config: Settings, dynamodb: Any, sns: Any, sagemaker: Any) -> dict:
    model = config.model
    expires = int(time.time()) + model.approval_timeout_seconds
    dynamodb.put_item(
        TableName=config.audit_table,
        Item={
            **approval_key(model.name, event.version),
            "task_token": {"S": event.task_token},
            "run_id": {"S": event.run_id},
            "model_package_arn": {"S": event.model_package_arn},
            "expires_at": {"N": str(expires)},
            **({"trigger": {"S": event.trigger}} if event.trigger else {}),
            **({"started_by": {"S": event.started_by}} if event.started_by else {}),
        },
    )
    sns.publish(
        TopicArn=config.topic_arn,
        Subject=f"refit {model.name}: version {event.version} awaits approval"[:99],
        Message=(
            f"The gate would promote version {event.version} of {model.name}: {event.reason}\n"
            f"Approve: refit approve {model.name} {event.version}\nReject:  refit reject {model.name} "
            f"{event.version}\nWithout a decision it is rejected after {model.approval_timeout_seconds} s. "
            "The serving endpoint is untouched while it waits."
        ),
    )
    return {"requested": True, "version": event.version}


def expire_approval(event: ApprovalExpiry, config: Settings, dynamodb: Any, sagemaker: Any) -> dict:
    sagemaker.update_model_package(
        ModelPackageArn=event.model_package_arn,
        ModelApprovalStatus="Rejected",
        ApprovalDescription="no decision before the approval timeout",
    )
    dynamodb.delete_item(TableName=config.audit_table, Key=approval_key(config.model.name, event.version))
    return {
        "approved": False,
        "by": "timeout",
        "reason": f"no decision within {config.model.approval_timeout_seconds} s; version {event.version} rejected",
    }


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def request_handler(event: dict, context: Any) -> dict:
    requested = request_approval(
        parse(ApprovalRequest, event), settings(), client("dynamodb"), client("sns"), client("sagemaker")
    )
    return ApprovalRequested(**requested).to_state()


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def expire_handler(event: dict, context: Any) -> dict:
    decision = expire_approval(parse(ApprovalExpiry, event), settings(), client("dynamodb"), client("sagemaker"))
    return ApprovalDecision(**decision).to_state()


def verified_caller(event: LambdaFunctionUrlModel) -> CallerIdentity | None:
    """The caller as AWS authenticated the request (AuthType AWS_IAM: `requestContext.authorizer.iam`); None for a
    request that carries no verified identity."""
    authorizer = event.requestContext.authorizer
    principal = authorizer.iam if authorizer is not None else None
    if principal is None or not principal.userArn or not principal.accountId:
        return None
    return CallerIdentity(arn=principal.userArn, account=principal.accountId, user_id=principal.userId or "")


def decide(event: LambdaFunctionUrlModel, config: Settings, separation_of_duties: bool, clients: Any) -> dict:
    """A decision request through the function URL -> the URL's HTTP response (payload format 2.0)."""
    if event.requestContext.http.method != "POST":
        status, answer = 405, {"error": f"{event.requestContext.http.method}: send the decision with POST"}
    else:
        body = event.body if isinstance(event.body, str) else None
        if body is not None and event.isBase64Encoded:
            body = base64.b64decode(body).decode("utf-8", errors="replace")
        status, answer = answer_decision_request(
            body=body,
            caller=verified_caller(event),
            model=config.model.name,
            separation_of_duties=separation_of_duties,
            audit_table=config.audit_table,
            dynamodb=clients("dynamodb"),
            sagemaker=clients("sagemaker"),
            stepfunctions=clients("stepfunctions"),
        )
    caller = verified_caller(event)
    logger.info(
        "approval request answered",
        extra={"status": status, "caller": caller.arn if caller else None, "answer": answer},
    )
    return {"statusCode": status, "headers": {"content-type": "application/json"}, "body": json.dumps(answer)}


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def decide_handler(event: dict, context: Any) -> dict:
    separation = os.environ.get(SEPARATION_OF_DUTIES_ENV, "false") == "true"
    return decide(parse(LambdaFunctionUrlModel, event), settings(), separation, client)
