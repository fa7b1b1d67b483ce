"""Which model is serving now: read from the endpoint itself, the only source of truth for 'champion'; and the
registry's record of it (the package that serves carries `refit:serving`), kept in step by the run that changed it.
"""

from __future__ import annotations

import re
from typing import Any

from refit_core.canary import CHAMPION

PACKAGE_ENV = "REFIT_MODEL_PACKAGE_ARN"


def describe_endpoint(sagemaker: Any, endpoint_name: str) -> dict[str, Any] | None:
    try:
        return sagemaker.describe_endpoint(EndpointName=endpoint_name)
    except sagemaker.exceptions.ClientError as error:
        if "Could not find endpoint" in str(error) or error.response["Error"]["Code"] == "ValidationException":
            return None
        raise


def endpoint_view(sagemaker: Any, endpoint_name: str) -> dict[str, Any] | None:
    """JSON-safe view of the endpoint: status, config and each variant's current weight."""
    endpoint = describe_endpoint(sagemaker, endpoint_name)
    return view_of(endpoint, endpoint_name) if endpoint is not None else None


def view_of(endpoint: dict[str, Any], endpoint_name: str) -> dict[str, Any]:
    """endpoint_view of a DescribeEndpoint response the caller already has."""
    return {
        "name": endpoint_name,
        "status": endpoint["EndpointStatus"],
        "config": endpoint["EndpointConfigName"],
        "failure_reason": endpoint.get("FailureReason"),
        "variants": [
            {"name": v["VariantName"], "weight": float(v.get("CurrentWeight", 0.0))}
            for v in endpoint.get("ProductionVariants", [])
        ],
    }


def find_champion(sagemaker: Any, endpoint_name: str) -> dict[str, Any] | None:
    endpoint = describe_endpoint(sagemaker, endpoint_name)
    if endpoint is None:
        return None
    config = sagemaker.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    variants = {v["VariantName"]: v for v in config["ProductionVariants"]}
    if CHAMPION not in variants:
        raise RuntimeError(f"endpoint {endpoint_name} has no '{CHAMPION}' variant (variants: {sorted(variants)})")
    model_name = variants[CHAMPION]["ModelName"]
    model = sagemaker.describe_model(ModelName=model_name)
    container = model["PrimaryContainer"]
    package_arn = container.get("Environment", {}).get(PACKAGE_ENV)
    package = sagemaker.describe_model_package(ModelPackageName=package_arn) if package_arn else {}
    metadata = package.get("CustomerMetadataProperties", {})
    return {
        "endpoint_config": endpoint["EndpointConfigName"],
        "model_name": model_name,
        "model_data_url": container["ModelDataUrl"],
        "model_package_arn": package_arn,
        "version": package.get("ModelPackageVersion"),
        "baseline_uri": metadata.get("baseline_uri"),
        "model_sha256": metadata.get("model_sha256"),  # refit_core.artifacts: checked before the model is loaded
    }


# --- the registry's record of what serves -------------------------------------------------------------------------
# CustomerMetadataProperties: at most 50 per package; keys of 1-128 and values of 1-256 characters, letters, spaces,
# digits and `_.:/=+-@` only (botocore's service model: CustomerMetadataKey / CustomerMetadataValue).
SERVING = "refit:serving"
SERVING_SINCE = "refit:serving_since"
SERVING_RUN = "refit:serving_run"
PREVIOUS_VERSION = "refit:previous_version"
SERVING_KEYS = (SERVING, SERVING_SINCE, SERVING_RUN)
METADATA_VALUE_MAX = 256


class RedeployRefused(ValueError):
    """A version that cannot be redeployed: not in the group, Rejected (without force), or serving already."""


def metadata_value(text: Any) -> str:
    """`text` as a CustomerMetadataProperties value SageMaker accepts: characters outside its pattern become a space,
    runs of spaces one, at most 256 characters (never empty)."""
    kept = "".join(c if c.isalnum() or c.isspace() or c in "_.:/=+-@" else " " for c in str(text))
    return re.sub(r"\s+", " ", kept).strip()[:METADATA_VALUE_MAX] or "-"


def describe_version(sagemaker: Any, package_arn: str, version: int, group: str) -> dict[str, Any]:
    """DescribeModelPackage of `version`, or RedeployRefused naming the group when it has no such version."""
    try:
        return sagemaker.describe_model_package(ModelPackageName=package_arn)
    except sagemaker.exceptions.ClientError as error:
        if error.response["Error"]["Code"] in ("ValidationException", "ResourceNotFound"):
            raise RedeployRefused(
                f"version {version} is not in model package group {group}; list them with `refit lineage MODEL`"
            ) from None
        raise


def container(package: dict[str, Any]) -> dict[str, Any]:
    """The package's first inference container (Image, ModelDataUrl)."""
    containers = package.get("InferenceSpecification", {}).get("Containers") or []
    if not containers or not containers[0].get("ModelDataUrl"):
        raise RedeployRefused(f"{package['ModelPackageArn']} has no inference container with a ModelDataUrl")
    return containers[0]


def check_redeploy(package: dict[str, Any], version: int, force: bool, champion: dict[str, Any] | None) -> None:
    """Raise RedeployRefused for a version that must not be deployed by hand: Rejected (unless `force`), or the one
    the endpoint serves already."""
    status = package.get("ModelApprovalStatus")
    if status == "Rejected" and not force:
        why = package.get("ApprovalDescription") or "no reason recorded"
        raise RedeployRefused(
            f"version {version} is Rejected in the registry ({why}); pass --force to deploy it anyway (recorded)"
        )
    if champion is not None and champion.get("model_package_arn") == package["ModelPackageArn"]:
        raise RedeployRefused(f"version {version} is already serving (endpoint config {champion['endpoint_config']})")
    container(package)


def find_serving_package(sagemaker: Any, group: str) -> dict[str, Any] | None:
    """The champion as the registry alone says it: the group's package marked `refit:serving` (newest first), with
    when and by which run it started serving, and the version it replaced. None when no package is marked."""
    for page in sagemaker.get_paginator("list_model_packages").paginate(
        ModelPackageGroupName=group, SortBy="CreationTime", SortOrder="Descending"
    ):
        for summary in page["ModelPackageSummaryList"]:
            package = sagemaker.describe_model_package(ModelPackageName=summary["ModelPackageArn"])
            metadata = package.get("CustomerMetadataProperties") or {}
            if metadata.get(SERVING) == "true":
                previous = metadata.get(PREVIOUS_VERSION)
                return {
                    "version": package.get("ModelPackageVersion"),
                    "model_package_arn": package["ModelPackageArn"],
                    "approval": package.get("ModelApprovalStatus"),
                    "since": metadata.get(SERVING_SINCE),
                    "run_id": metadata.get(SERVING_RUN),
                    "previous_version": int(previous) if previous and previous.isdigit() else None,
                    "metadata": metadata,
                }
    return None


def record_serving(
    sagemaker: Any,
    serving_arn: str,
    replaced_arn: str | None,
    run_id: str,
    now: str,
    *,
    previous_version: int | None = None,
    requested_by: str | None = None,
    reason: str | None = None,
    kind: str | None = None,
    forced: bool = False,
    replaced_reason: str | None = None,
) -> list[str]:
    """Mark the package that now serves (`refit:serving=true`, since, run, the version it replaced; for a manual
    redeploy who, why and whether a Rejected version was forced) and clear the mark on the package it replaced
    (`refit:served_until`, `refit:replaced_by_run`; a package rolled back by hand also gets who and why, one that lost
    an A/B test `refit:replaced_reason`). Returns what was changed, for the audit record."""
    added = {SERVING: "true", SERVING_SINCE: now, SERVING_RUN: run_id}
    if previous_version is not None:
        added[PREVIOUS_VERSION] = str(previous_version)
    if requested_by:
        added.update({"refit:deployed_by": requested_by, "refit:deploy_kind": kind or "promote"})
        added["refit:deploy_reason"] = reason or "-"
    if forced:
        added["refit:forced"] = "true"
    changes = []
    if replaced_arn and replaced_arn != serving_arn:
        cleared = {"refit:served_until": now, "refit:replaced_by_run": run_id}
        if kind == "rollback":
            cleared.update({"refit:rolled_back_by": requested_by or "-", "refit:rolled_back_reason": reason or "-"})
            cleared["refit:rolled_back_run"] = run_id
        if replaced_reason:
            cleared["refit:replaced_reason"] = replaced_reason
        sagemaker.update_model_package(
            ModelPackageArn=replaced_arn,
            CustomerMetadataProperties={k: metadata_value(v) for k, v in cleared.items()},
            CustomerMetadataPropertiesToRemove=list(SERVING_KEYS),
        )
        changes.append(f"{replaced_arn} no longer serving" + (" (rolled back by hand)" if kind == "rollback" else ""))
    sagemaker.update_model_package(
        ModelPackageArn=serving_arn,
        CustomerMetadataProperties={k: metadata_value(v) for k, v in added.items()},
        CustomerMetadataPropertiesToRemove=["refit:served_until", "refit:replaced_by_run", "refit:replaced_reason"],
    )
    changes.append(f"{serving_arn} marked serving")
    return changes
