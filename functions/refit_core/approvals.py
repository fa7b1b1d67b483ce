"""Deciding a pending manual approval: the rules the Approve function applies server-side to a request `refit
approve` / `refit reject` (or anyone else) sends to its function URL, as the identity AWS verified."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from refit_core.champion import metadata_value
from refit_core.identity import CallerIdentity, same_person
from refit_core.steps import ApprovalDecision

PENDING = "PendingManualApproval"
SEPARATION_OF_DUTIES_ENV = "REFIT_SEPARATION_OF_DUTIES"  # the Approve function's `[approval] separation_of_duties`


class ApprovalError(ValueError):
    """No pending approval for that model version (nothing was changed). `status`: the HTTP status the Approve
    function answers with."""

    status = 404


class ApprovalRefused(ApprovalError):
    """The caller may not make this decision (separation of duties, another model, another run); nothing was
    changed."""

    status = 403


class DecisionTooLate(ApprovalError):
    """The run stopped waiting (timed out, stopped) before the decision reached it: nothing was decided."""

    status = 409


class AlreadyDecided(ApprovalError):
    """Another decision claimed the pending version first (two approvers at the same instant): this one changed
    nothing."""

    status = 409


STOPPED_WAITING = ("TaskTimedOut", "TaskDoesNotExist", "InvalidToken")  # SendTaskSuccess's errors for a gone task


class BadDecisionRequest(ApprovalError):
    """The request body is not a decision request (nothing was changed)."""

    status = 400


class DecisionRequest(BaseModel):
    """What a caller of the Approve function's URL sends (JSON). Who decides is not part of it: it is the caller's
    identity as AWS verified the request's signature. An unknown field (`by`, say) is refused, not ignored."""

    model_config = ConfigDict(extra="forbid")

    model: str
    version: int = Field(ge=1)
    decision: Literal["approve", "reject"]
    comment: str = Field("", max_length=1000)
    run_id: str | None = None  # when given, the pending version must belong to this run

    @classmethod
    def from_body(cls, body: str | None) -> DecisionRequest:
        try:
            return cls.model_validate(json.loads(body or ""))
        except json.JSONDecodeError as error:
            raise BadDecisionRequest(f"the request body is not JSON ({error.msg}); send {_EXAMPLE}") from None
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in item['loc']) or 'body'}: {item['msg']}" for item in error.errors()
            )
            raise BadDecisionRequest(f"bad decision request: {problems}; send {_EXAMPLE}") from None


_EXAMPLE = '{"model": "churn", "version": 7, "decision": "approve" | "reject", "comment": "..."}'


def approval_partition(model: str) -> str:
    """The audit-table partition key of a model's pending approvals: `approval#<model>`, apart from its runs, ledger
    and lock (partition `<model>`), so a role limited by `dynamodb:LeadingKeys` to it reads and deletes approvals
    only. Model names have no `#`, so it cannot be another model's partition."""
    return f"approval#{model}"


def approval_key(model: str, version: int) -> dict[str, Any]:
    return {"pk": {"S": approval_partition(model)}, "sk": {"S": f"approval#{int(version):06d}"}}


CLAIM_LEASE_SECONDS = 900  # Lambda's longest invocation: an older claim's holder has ended (crashed, timed out)


def claim_decision(
    dynamodb: Any, audit_table: str, model: str, version: int, approver: str, status: str, decided_at: str
) -> str:
    """Claim the pending approval item for one decision, before anything changes: a conditional write on the item,
    so of two decisions racing on the same version exactly one goes on (DynamoDB applies a conditional update to an
    item atomically). The loser gets AlreadyDecided naming who claimed it and when, and changes nothing. A claim
    older than CLAIM_LEASE_SECONDS belonged to an invocation that ended without finishing, and may be taken over.
    Returns the claim's id (release_claim needs it)."""
    claim = uuid.uuid4().hex
    now = int(time.time())
    try:
        dynamodb.update_item(
            TableName=audit_table,
            Key=approval_key(model, version),
            UpdateExpression="SET claim_id = :claim, claimed_by = :by, claimed_at = :at, claimed_decision = :status, "
            "claim_expires = :expires",
            ConditionExpression="attribute_exists(task_token) AND "
            "(attribute_not_exists(claim_id) OR claim_expires < :now)",
            ExpressionAttributeValues={
                ":claim": {"S": claim},
                ":by": {"S": approver},
                ":at": {"S": decided_at},
                ":status": {"S": status},
                ":expires": {"N": str(now + CLAIM_LEASE_SECONDS)},
                ":now": {"N": str(now)},
            },
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
        )
    except dynamodb.exceptions.ConditionalCheckFailedException as error:
        held = error.response.get("Item")
        if held is None or "claimed_by" not in held:  # the item went away: the other decision finished (or expired)
            raise AlreadyDecided(
                f"{model} version {version} was decided meanwhile (its approval is no longer pending); nothing changed"
            ) from None
        raise AlreadyDecided(
            f"{model} version {version} was already decided by {held['claimed_by']['S']} at {held['claimed_at']['S']} "
            f"({held['claimed_decision']['S']}); nothing changed"
        ) from None
    return claim


def release_claim(dynamodb: Any, audit_table: str, model: str, version: int, claim: str) -> None:
    """Give back this decision's claim (its result was not delivered: the version awaits a decision again). Only the
    claim's holder releases it; an item that went away meanwhile (the run's timeout) needs nothing."""
    try:
        dynamodb.update_item(
            TableName=audit_table,
            Key=approval_key(model, version),
            UpdateExpression="REMOVE claim_id, claimed_by, claimed_at, claimed_decision, claim_expires",
            ConditionExpression="claim_id = :claim",
            ExpressionAttributeValues={":claim": {"S": claim}},
        )
    except dynamodb.exceptions.ConditionalCheckFailedException:
        pass


def check_separation(approver: str, started_by: str | None, trigger: str | None, run_id: str) -> None:
    """Separation of duties: the identity that started a run may not approve it. A run started by an S3 event, a
    schedule, an alarm or the queue has no human starter; a manual run that recorded none cannot be approved under
    the rule (whoever started it by hand may be the approver)."""
    if started_by is None:
        if trigger == "manual":
            raise ApprovalRefused(
                f"separation of duties: run {run_id} was started by hand without a recorded starter (requested_by), "
                "so nobody may approve it; reject it and start it again with `refit trigger`"
            )
        return
    if same_person(approver, started_by):
        raise ApprovalRefused(
            f"separation of duties: {approver} started run {run_id} ({started_by}) and may not approve it; "
            "ask another approver"
        )


def decide_approval(
    *,
    model: str,
    version: int,
    approve: bool,
    approver: CallerIdentity,
    comment: str,
    separation_of_duties: bool,
    audit_table: str,
    dynamodb: Any,
    sagemaker: Any,
    stepfunctions: Any,
    expected_run: str | None = None,
) -> dict[str, Any]:
    """Approve or reject the pending `version` as `approver` (the caller's identity as AWS verified it, never a typed
    name): the registry (ApprovalDescription and `refit:decided_by`, `refit:decision`, `refit:decided_at`,
    `refit:started_by`) and the run's audit record (`approval`) carry who decided and who started the run. Refused
    before anything changes (ApprovalError / ApprovalRefused): nothing pending for the version, a package no longer
    PendingManualApproval, a pending version of another run than `expected_run`, with `separation_of_duties` an
    approval by the run's own starter, and (AlreadyDecided) a version another decision claimed first."""
    item = dynamodb.get_item(TableName=audit_table, Key=approval_key(model, version)).get("Item")
    if item is None:
        raise ApprovalError(f"no approval is pending for {model} version {version}")
    run_id = item["run_id"]["S"]
    if expected_run is not None and expected_run != run_id:
        raise ApprovalRefused(
            f"{model} version {version} awaits approval in run {run_id}, not in run {expected_run}; nothing changed"
        )
    current = sagemaker.describe_model_package(ModelPackageName=item["model_package_arn"]["S"])["ModelApprovalStatus"]
    if current != PENDING:
        raise ApprovalError(f"{model} version {version} is {current}, no longer awaiting approval; nothing changed")
    started_by = item["started_by"]["S"] if "started_by" in item else None
    trigger = item["trigger"]["S"] if "trigger" in item else None
    if approve and separation_of_duties:
        check_separation(approver.arn, started_by, trigger, run_id)
    status = "Approved" if approve else "Rejected"
    decided_at = datetime.now(UTC).isoformat(timespec="seconds")
    claim = claim_decision(dynamodb, audit_table, model, version, approver.arn, status, decided_at)
    starter = started_by or f"none: trigger {trigger or 'unknown'}"
    try:
        sagemaker.update_model_package(
            ModelPackageArn=item["model_package_arn"]["S"],
            ModelApprovalStatus=status,
            ApprovalDescription=f"{status.lower()} by {approver.arn}: {comment}"[:1000],
            CustomerMetadataProperties={
                "refit:decided_by": metadata_value(approver.arn),
                "refit:decision": status,
                "refit:decided_at": metadata_value(decided_at),
                "refit:started_by": metadata_value(starter),
                "refit:separation_of_duties": "on" if separation_of_duties else "off",
            },
        )
    except Exception:
        # Nothing changed: give the claim back, so a retry (this approver's or another's) can decide.
        release_claim(dynamodb, audit_table, model, version, claim)
        raise
    decision = ApprovalDecision(
        approved=approve,
        by=approver.arn,
        reason=comment or f"{status.lower()} by {approver.arn}",
        session=approver.session,
        decided_at=decided_at,
        started_by=started_by,
        trigger=trigger,
        separation_of_duties=separation_of_duties,
    )
    try:
        stepfunctions.send_task_success(taskToken=item["task_token"]["S"], output=decision.model_dump_json())
    except Exception as error:
        code = getattr(error, "response", {}).get("Error", {}).get("Code")
        if code not in STOPPED_WAITING:
            # The run still waits and got nothing (throttled, a network error): the version goes back to awaiting a
            # decision, so the registry does not say Approved for a run that never heard it and a retry can decide.
            sagemaker.update_model_package(
                ModelPackageArn=item["model_package_arn"]["S"],
                ModelApprovalStatus=PENDING,
                ApprovalDescription=f"{status.lower()} by {approver.arn} not delivered to run {run_id} "
                f"({code or type(error).__name__}); still awaiting a decision"[:1000],
                CustomerMetadataProperties={"refit:decision": "undelivered"},
                # Nobody decided: the version must not keep naming an approver or a time.
                CustomerMetadataPropertiesToRemove=["refit:decided_by", "refit:decided_at"],
            )
            release_claim(dynamodb, audit_table, model, version, claim)
            raise
        # The run's timeout (or a stop) came first: the registry must not keep an approval no run acted on.
        dynamodb.delete_item(TableName=audit_table, Key=approval_key(model, version))
        sagemaker.update_model_package(
            ModelPackageArn=item["model_package_arn"]["S"],
            ModelApprovalStatus="Rejected",
            ApprovalDescription=f"{status.lower()} by {approver.arn} after run {run_id} stopped waiting ({code})"[
                :1000
            ],
            CustomerMetadataProperties={"refit:decision": "Rejected"},
        )
        raise DecisionTooLate(
            f"run {run_id} no longer waits for a decision on {model} version {version} ({code}: it timed out or was "
            "stopped); the version stays Rejected"
        ) from None
    dynamodb.delete_item(TableName=audit_table, Key=approval_key(model, version))
    return {
        "model": model,
        "version": version,
        "status": status,
        "run_id": run_id,
        "by": approver.arn,
        "started_by": started_by,
    }


def answer_decision_request(
    *,
    body: str | None,
    caller: CallerIdentity | None,
    model: str,
    separation_of_duties: bool,
    audit_table: str,
    dynamodb: Any,
    sagemaker: Any,
    stepfunctions: Any,
) -> tuple[int, dict[str, Any]]:
    """The Approve function's answer to one request: (HTTP status, JSON body). `caller` is the identity AWS verified
    for the request (the function URL's `requestContext.authorizer.iam`), None when there is none. 200 with the
    decision; 400 a body that is not a decision request; 403 refused (no verified caller, another model's approval,
    another run, separation of duties); 404 nothing pending for that version; 409 the run stopped waiting first, or
    another decision claimed the version first. A refusal changes nothing and its body
    is `{"error": "<one line>"}`."""
    try:
        if caller is None:
            raise ApprovalRefused(
                "no verified caller identity: the Approve function decides only requests AWS authenticated (its "
                "function URL's AuthType must be AWS_IAM); nothing changed"
            )
        request = DecisionRequest.from_body(body)
        if request.model != model:
            raise ApprovalRefused(f"this function decides the approvals of {model}, not of {request.model}")
        decided = decide_approval(
            model=model,
            version=request.version,
            approve=request.decision == "approve",
            approver=caller,
            comment=request.comment,
            separation_of_duties=separation_of_duties,
            audit_table=audit_table,
            dynamodb=dynamodb,
            sagemaker=sagemaker,
            stepfunctions=stepfunctions,
            expected_run=request.run_id,
        )
    except ApprovalError as error:
        return error.status, {"error": str(error)}
    return 200, decided


SERVED_OUTCOMES = frozenset({"promoted", "deployed_first", "redeployed"})  # the run left a new champion serving


def withdraw_unserved_package(
    sagemaker: Any, package_arn: str | None, served: bool, run_id: str, why: str
) -> str | None:
    """A package this run registered but that does not serve when the run ends (rolled back, failed, stopped, timed
    out) is set Rejected: the registry must not keep saying Approved (or awaiting approval) for a model whose run
    turned it down, or anything that deploys "the latest approved package" picks a model that failed its canary.
    The reason and the run are in its ApprovalDescription and in CustomerMetadataProperties (`refit:rejected_run`,
    `refit:rejected_reason`). Returns what was changed, for the audit record; None when nothing needed changing."""
    if package_arn is None or served:
        return None
    status = sagemaker.describe_model_package(ModelPackageName=package_arn)["ModelApprovalStatus"]
    if status == "Rejected":
        return None
    sagemaker.update_model_package(
        ModelPackageArn=package_arn,
        ModelApprovalStatus="Rejected",
        ApprovalDescription=f"rejected by refit run {run_id} (was {status}): {why}"[:1000],
        CustomerMetadataProperties={
            "refit:rejected_run": metadata_value(run_id),
            "refit:rejected_reason": metadata_value(why),
        },
    )
    return f"model package {package_arn} set Rejected (was {status}): {why}"[:1000]
