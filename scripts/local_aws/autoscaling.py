"""Application Auto Scaling for SageMaker variants as AWS behaves (moto 5.2.5 stores targets and policies only).

- RegisterScalableTarget (namespace `sagemaker`): the resource `endpoint/<endpoint>/variant/<variant>` must exist; a new
  target needs MinCapacity and MaxCapacity, MinCapacity <= MaxCapacity. moto registers any name, without bounds.
- DeregisterScalableTarget deletes the target's scaling policies too; moto leaves them behind.
- UpdateEndpoint fails while a variant it removes, or moves to another instance type, is a registered scalable target
  (SageMaker developer guide, "Update endpoints that use auto scaling"); changing only a variant's model is allowed.
  moto has no UpdateEndpoint; the bridge's (bridges.Bridges.update_endpoint) calls `refuse_update`.
- DeleteEndpoint deregisters the endpoint's scalable targets (AWS does so when the caller may deregister them).
- UpdateEndpointWeightsAndCapacities without a DesiredInstanceCount keeps the variant's count (what Application Auto
  Scaling set); moto sets it to null.
- UpdateEndpoint with RetainAllVariantProperties keeps, for variants of the same name, the current instance count and
  weight unless ExcludeRetainedVariantProperties names them (moto has no UpdateEndpoint; `retain` is applied by the
  bridge's). Retaining DataCaptureConfig is not modelled and is refused rather than ignored.
"""

from __future__ import annotations

from typing import Any
from unittest import mock

from moto.applicationautoscaling.exceptions import AWSValidationException
from moto.applicationautoscaling.models import ApplicationAutoscalingBackend, applicationautoscaling_backends
from moto.sagemaker.exceptions import ValidationError as SageMakerValidationError
from moto.sagemaker.models import sagemaker_backends

DIMENSION = "sagemaker:variant:DesiredInstanceCount"
MOTO_REGISTER = ApplicationAutoscalingBackend.register_scalable_target
MOTO_DEREGISTER = ApplicationAutoscalingBackend.deregister_scalable_target


def _variant_of(resource_id: str) -> tuple[str, str] | None:
    parts = resource_id.split("/")
    if len(parts) == 4 and parts[0] == "endpoint" and parts[2] == "variant":
        return parts[1], parts[3]
    return None


def register_scalable_target(
    backend: ApplicationAutoscalingBackend,
    namespace: str,
    r_id: str,
    dimension: str,
    min_capacity: int | None,
    max_capacity: int | None,
    role_arn: str,
    suspended_state: str,
) -> Any:
    if namespace == "sagemaker":
        parsed = _variant_of(r_id)
        if parsed is None:
            raise AWSValidationException(
                f"Unsupported resource ID {r_id!r}: a SageMaker variant is endpoint/<endpoint-name>/variant/<name>"
            )
        endpoint = sagemaker_backends[backend.account_id][backend.region_name].endpoints.get(parsed[0])
        if endpoint is None:
            raise AWSValidationException(f"Endpoint {parsed[0]} does not exist (resource {r_id})")
        if parsed[1] not in {v["VariantName"] for v in endpoint.production_variants}:
            raise AWSValidationException(f"Variant {parsed[1]} does not exist on endpoint {parsed[0]}")
    exists = r_id in backend.targets.get(dimension, {})
    if not exists and (min_capacity is None or max_capacity is None):
        raise AWSValidationException("MinCapacity and MaxCapacity are required to register a new scalable target")
    low = min_capacity if min_capacity is not None else backend.targets[dimension][r_id].min_capacity
    high = max_capacity if max_capacity is not None else backend.targets[dimension][r_id].max_capacity
    if low > high:
        raise AWSValidationException(f"MinCapacity ({low}) cannot be greater than MaxCapacity ({high})")
    return MOTO_REGISTER(backend, namespace, r_id, dimension, min_capacity, max_capacity, role_arn, suspended_state)


def deregister_scalable_target(
    backend: ApplicationAutoscalingBackend, namespace: str, r_id: str, dimension: str
) -> None:
    MOTO_DEREGISTER(backend, namespace, r_id, dimension)
    for key, policy in list(backend.policies.items()):
        if (policy.service_namespace, policy.resource_id, policy.scalable_dimension) == (namespace, r_id, dimension):
            policy.delete_alarms(backend.account_id, backend.region_name)
            del backend.policies[key]


def registered_variants(account: str, region: str, endpoint_name: str) -> set[str]:
    backend = applicationautoscaling_backends[account][region]
    prefix = f"endpoint/{endpoint_name}/variant/"
    return {r_id.removeprefix(prefix) for r_id in backend.targets.get(DIMENSION, {}) if r_id.startswith(prefix)}


def refuse_update(
    account: str, region: str, endpoint_name: str, current: list[dict[str, Any]], replacement: list[dict[str, Any]]
) -> str | None:
    """Why UpdateEndpoint from `current` to `replacement` (ProductionVariants of two endpoint configs) fails, or None."""
    kept = {v["VariantName"]: v.get("InstanceType") for v in replacement}
    types = {v["VariantName"]: v.get("InstanceType") for v in current}
    blocked = sorted(
        name
        for name in registered_variants(account, region, endpoint_name)
        if name in types and (name not in kept or kept[name] != types[name])
    )
    if not blocked:
        return None
    return (
        f"The variant(s) {blocked} of endpoint {endpoint_name} are registered for automatic scaling and the update "
        "removes them or changes their instance type: deregister the scalable target(s) before updating the endpoint"
    )


def deregister_endpoint(account: str, region: str, endpoint_name: str) -> None:
    backend = applicationautoscaling_backends[account][region]
    for variant in registered_variants(account, region, endpoint_name):
        deregister_scalable_target(backend, "sagemaker", f"endpoint/{endpoint_name}/variant/{variant}", DIMENSION)


def retained_properties(retain_all: Any, excluded: list[dict[str, str]] | None) -> frozenset[str]:
    """The variant properties an UpdateEndpoint retains from the endpoint (UpdateEndpoint's two parameters). AWS's
    VariantProperty documents `DataCaptureConfig` as "(Not currently supported.)": Data Capture always comes from the
    new endpoint config, and a request naming it is refused here, as refit must not rely on what AWS may refuse."""
    named = {item["VariantPropertyType"] for item in excluded or []}
    if "DataCaptureConfig" in named:
        raise SageMakerValidationError(
            message="ExcludeRetainedVariantProperties: VariantPropertyType DataCaptureConfig is not currently "
            "supported (AWS's VariantProperty); Data Capture comes from the new endpoint config"
        )
    if str(retain_all).lower() != "true":
        return frozenset()
    return frozenset({"DesiredInstanceCount", "DesiredWeight"} - named)


def retain(old: list[dict[str, Any]], new: list[dict[str, Any]], retained: frozenset[str]) -> None:
    """Variants of `new` (DescribeEndpoint's ProductionVariants after an update) keep the retained properties of the
    variant of the same name in `old`."""
    before = {v["VariantName"]: v for v in old}
    fields = {
        "DesiredInstanceCount": ("CurrentInstanceCount", "DesiredInstanceCount"),
        "DesiredWeight": ("CurrentWeight", "DesiredWeight"),
    }
    for variant in new:
        previous = before.get(variant["VariantName"])
        if previous is None:
            continue
        for prop in retained:
            for key in fields[prop]:
                if key in previous:
                    variant[key] = previous[key]


def patches(account: str, region: str) -> list[Any]:
    backend_class = sagemaker_backends[account][region].__class__
    moto_delete_endpoint = backend_class.delete_endpoint
    moto_update_weights = backend_class.update_endpoint_weights_and_capacities

    def update_weights(backend: Any, endpoint_name: str, desired_weights_and_capacities: list[dict[str, Any]]) -> str:
        endpoint = backend.endpoints.get(endpoint_name)
        counts = {
            v["VariantName"]: (v.get("CurrentInstanceCount"), v.get("DesiredInstanceCount"))
            for v in (endpoint.production_variants if endpoint is not None else [])
        }
        arn = moto_update_weights(backend, endpoint_name, desired_weights_and_capacities)
        unchanged = {d["VariantName"] for d in desired_weights_and_capacities if d.get("DesiredInstanceCount") is None}
        for variant in backend.endpoints[endpoint_name].production_variants:
            if variant["VariantName"] in unchanged:
                variant["CurrentInstanceCount"], variant["DesiredInstanceCount"] = counts[variant["VariantName"]]
        return arn

    def delete_endpoint(backend: Any, endpoint_name: str) -> None:
        moto_delete_endpoint(backend, endpoint_name)
        deregister_endpoint(backend.account_id, backend.region_name, endpoint_name)

    return [
        mock.patch.object(ApplicationAutoscalingBackend, "register_scalable_target", register_scalable_target),
        mock.patch.object(ApplicationAutoscalingBackend, "deregister_scalable_target", deregister_scalable_target),
        mock.patch.object(backend_class, "delete_endpoint", delete_endpoint),
        mock.patch.object(backend_class, "update_endpoint_weights_and_capacities", update_weights),
    ]
