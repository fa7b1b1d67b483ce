"""Which model is serving now: read from the endpoint itself, the only source of truth for 'champion'."""

from __future__ import annotations

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
    }
