"""Deciding a pending manual approval (used by `refit approve` / `refit reject`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from refit_core.champion import metadata_value
from refit_core.identity import CallerIdentity, same_person
from refit_core.steps import ApprovalDecision


class ApprovalError(ValueError):
    """No pending approval for that model version."""

    exit_code = 1


class ApprovalRefused(ApprovalError):
    """The caller may not make this decision (separation of duties); nothing was changed."""

    exit_code = 2


def approval_partition(model: str) -> str:
    """The audit-table partition key of a model's pending approvals: `approval#<model>`, apart from its runs, ledger
    and lock (partition `<model>`), so a role limited by `dynamodb:LeadingKeys` to it reads and deletes approvals
    only. Model names have no `#`, so it cannot be another model's partition."""
    return f"approval#{model}"


def approval_key(model: str, version: int) -> dict[str, Any]:
    return {"pk": {"S": approval_partition(model)}, "sk": {"S": f"approval#{int(version):06d}"}}


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
) -> dict[str, Any]:
    """Approve or reject the pending `version` as `approver` (the caller's STS identity, never a typed name): the
    registry (ApprovalDescription and `refit:decided_by`, `refit:decision`, `refit:decided_at`, `refit:started_by`)
    and the run's audit record (`approval`) carry who decided and who started the run. With
    `separation_of_duties`, approving a run its own starter started raises ApprovalRefused before anything changes."""
    item = dynamodb.get_item(TableName=audit_table, Key=approval_key(model, version)).get("Item")
    if item is None:
        raise ApprovalError(f"no approval is pending for {model} version {version}")
    run_id = item["run_id"]["S"]
    started_by = item["started_by"]["S"] if "started_by" in item else None
    trigger = item["trigger"]["S"] if "trigger" in item else None
    if approve and separation_of_duties:
        check_separation(approver.arn, started_by, trigger, run_id)
    status = "Approved" if approve else "Rejected"
    decided_at = datetime.now(UTC).isoformat(timespec="seconds")
    starter = started_by or f"none: trigger {trigger or 'unknown'}"
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
    stepfunctions.send_task_success(taskToken=item["task_token"]["S"], output=decision.model_dump_json())
    dynamodb.delete_item(TableName=audit_table, Key=approval_key(model, version))
    return {
        "model": model,
        "version": version,
        "status": status,
        "run_id": run_id,
        "by": approver.arn,
        "started_by": started_by,
    }


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
