"""Deciding a pending manual approval (used by `refit approve` / `refit reject`)."""

from __future__ import annotations

from typing import Any

from refit_core.champion import metadata_value
from refit_core.steps import ApprovalDecision


class ApprovalError(ValueError):
    """No pending approval for that model version."""


def approval_key(model: str, version: int) -> dict[str, Any]:
    return {"pk": {"S": model}, "sk": {"S": f"approval#{int(version):06d}"}}


def decide_approval(
    *,
    model: str,
    version: int,
    approve: bool,
    by: str,
    comment: str,
    audit_table: str,
    dynamodb: Any,
    sagemaker: Any,
    stepfunctions: Any,
) -> dict[str, Any]:
    item = dynamodb.get_item(TableName=audit_table, Key=approval_key(model, version)).get("Item")
    if item is None:
        raise ApprovalError(f"no approval is pending for {model} version {version}")
    status = "Approved" if approve else "Rejected"
    sagemaker.update_model_package(
        ModelPackageArn=item["model_package_arn"]["S"],
        ModelApprovalStatus=status,
        ApprovalDescription=f"{status.lower()} by {by}: {comment}"[:1000],
    )
    decision = ApprovalDecision(approved=approve, by=by, reason=comment or f"{status.lower()} by {by}")
    stepfunctions.send_task_success(taskToken=item["task_token"]["S"], output=decision.model_dump_json())
    dynamodb.delete_item(TableName=audit_table, Key=approval_key(model, version))
    return {"model": model, "version": version, "status": status, "run_id": item["run_id"]["S"]}


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
